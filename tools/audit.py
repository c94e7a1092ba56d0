"""Check a training run's sample audit: every sample trained exactly once per epoch.

    python -m tools.audit runs/demo          # same as: shards audit runs/demo

The run must have been trained with ``pipeline.train --audit``; see
``shards/audit.py`` for what is checked.  Exit status 0 = pass, 1 = fail,
2 = logs unreadable.
"""
from __future__ import annotations

import sys

from shards.audit import main as audit_main


def main(argv=None) -> int:
    return audit_main(argv)


if __name__ == "__main__":
    sys.exit(main())
