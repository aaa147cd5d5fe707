"""``python -m stpredict``: the command line (see :mod:`stpredict.cli`)."""

from stpredict.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
