"""Quiet output at the project's entry points: our log lines, not third-party noise a user cannot act on.

    quiet.entry_point(rank)     # first thing in pipeline.train's main (and tools.demo)

Called by entry points only, never at import time of the library, so a user
who imports ``pipeline`` keeps their own logging and warning settings.  What
it silences, and why:

- transformers' "LOAD REPORT ... classifier MISSING" table and progress
  bars: ``pipeline.train.models`` prints one line of its own instead ("classifier
  head initialised for 4 labels (...)");
- botocore's and s3fs' INFO lines such as "Found credentials in environment
  variables" (only our ``pipeline`` loggers log at INFO).
"""
from __future__ import annotations

import logging
import sys
import warnings

# (message regex, category) of third-party warnings filtered at the entry points (none needed today)
WARNINGS: tuple[tuple[str, type[Warning]], ...] = ()
NOISY_LOGGERS = ("botocore", "boto3", "s3fs", "aiobotocore", "urllib3", "fsspec")


def entry_point(rank: int = 0) -> None:
    """Log our lines (rank 0 at INFO, other ranks warnings only) to stdout; silence the rest."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries: warnings and errors only
    for name in ("pipeline", "shards"):
        logging.getLogger(name).setLevel(logging.INFO if rank == 0 else logging.WARNING)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    quiet_transformers()


def quiet_transformers() -> None:
    """No progress bars and no load-report table (``pipeline.train.models`` says what was initialised)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
