"""``python -m shards`` and the ``shards`` command (pyproject's console script): see shards.cli."""
import os
import sys


def main(argv: list[str] | None = None) -> int:
    # shards multiplies no matrices, but numpy's OpenBLAS starts a thread per core at import that
    # spins ~0.1 s: 0.1 CPU-s of every command here, a tenth of a 100 MB build.  A user's own
    # setting wins; a spawned build worker inherits it.  Set before anything imports numpy.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from shards.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
