"""Entry point: ``python -m hgan.experiments`` (see hgan.experiments.cli)."""
import sys

from hgan.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
