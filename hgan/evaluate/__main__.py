"""Entry point: ``python -m hgan.evaluate`` (see hgan.evaluate.cli)."""
import sys

from hgan.evaluate.cli import main

if __name__ == "__main__":
    main()
    sys.exit(0)
