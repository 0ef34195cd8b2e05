"""Sample videos from a checkpoint.

    python -m hgan.sample --checkpoint runs/X/checkpoints/last.pt --n 16 --frames 64 \
        [--dt -0.05] --out samples.gif

writes samples.gif (the n videos tiled, animated) and samples.png (one row per video). A
negative --dt runs the learned dynamics backwards in time, other values change the time
scale, and --frames may exceed the training length (hgan and hnn_gan only for --dt).
"""
import argparse
import os
import sys

import torch

from hgan.models import ModelConfig, build_models
from hgan.train.checkpoint import load_checkpoint
from hgan.train.media import save_gif, save_png_strip


def load_generator(ckpt_path, device="cpu"):
    """(generator in eval mode on `device`, the run's config dict) from a training checkpoint."""
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    return generator_from_checkpoint(ckpt, device), ckpt["config"]


def generator_from_checkpoint(ckpt: dict, device="cpu"):
    """The generator of a loaded checkpoint dict, in eval mode on `device`."""
    mcfg = ModelConfig.from_dict(ckpt["config"]["model"])
    generator = build_models(mcfg, "cpu").generator
    generator.load_state_dict(ckpt["generator"])
    return generator.to(device).eval()


def generate(ckpt_path, n=16, frames=64, dt=None, seed=0, device="cpu"):
    generator, config = load_generator(ckpt_path, device)
    rng = torch.Generator(torch.device(device)).manual_seed(seed)
    return generator.sample(n, frames, dt=dt, generator=rng), config


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    p.add_argument("--n", type=int, default=16, help="number of videos")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--dt", type=float, default=None, help="time step (default: the training dt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--out", default="samples.gif", help="GIF path; the PNG strip goes beside it")
    a = p.parse_args(argv)
    if a.n < 1 or a.frames < 1:
        p.error(f"--n and --frames must be >= 1 (got {a.n}, {a.frames})")
    try:
        videos, config = generate(a.checkpoint, a.n, a.frames, a.dt, a.seed, a.device)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"hgan.sample: error: {e}", file=sys.stderr)
        return 2
    stem, ext = os.path.splitext(a.out)
    gif = save_gif(videos, a.out if ext.lower() == ".gif" else stem + ".gif", fps=a.fps)
    png = save_png_strip(videos, stem + ".png")
    print(f"{config['model']['model']} on {config.get('system', '?')}: {a.n} videos x {a.frames} "
          f"frames -> {gif}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
