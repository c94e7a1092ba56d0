"""``python -m pipeline.train`` / ``torchrun ... -m pipeline.train``: see loop.py."""
import sys

from pipeline.train.loop import main

sys.exit(main())
