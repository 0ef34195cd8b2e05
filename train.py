"""Train HGAN or a baseline: `python train.py --system three_body --amp` (see --help)."""
import sys

from hgan.train.cli import entry

if __name__ == "__main__":
    sys.exit(entry())
