"""`train.py` / `hgan-train`: the command line of training (flags: hgan.train.config)."""
import sys

from hgan.train.config import config_from_args


def main(argv=None) -> int:
    from hgan.train import train
    from hgan.train.loop import NonFiniteLoss
    cfg, resume = config_from_args(argv)
    try:
        train(cfg, resume=resume)
    except NonFiniteLoss as e:
        print(f"[hgan] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
