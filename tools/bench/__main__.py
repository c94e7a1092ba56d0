"""``python -m tools.bench``: see main.py."""
import sys

from tools.bench.main import main

sys.exit(main())
