"""Train HGAN or a baseline: `python train.py --system three_body --amp` (see --help)."""
import sys

from hgan.train import config_from_args, train
from hgan.train.loop import NonFiniteLoss


def main(argv=None):
    cfg, resume = config_from_args(argv)
    try:
        train(cfg, resume=resume)
    except NonFiniteLoss as e:
        print(f"[hgan] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
