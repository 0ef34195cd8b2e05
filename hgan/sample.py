"""Sample videos from a checkpoint.

    python -m hgan.sample --checkpoint runs/X/checkpoints/last.pt --n 16 --frames 64 \
        [--dt -0.05] --out samples.gif

writes samples.gif (the n videos tiled, animated) and samples.png (one row per video). A
negative --dt runs the learned dynamics backwards in time, other values change the time
scale, and --frames may exceed the training length (hgan and hnn_gan only for --dt).
"""
import argparse
import math
import os
import signal
import sys

import torch

from hgan import _startup
from hgan.cli_args import OneLineParser, int_at_least, prog
from hgan.data.interrupt import sigterm_interrupts
from hgan.data.simulate import REAL_TIME_FPS
from hgan.device import check_device
from hgan.model_kinds import hamiltonian_models
from hgan.models import ModelConfig, build_models
from hgan.train.checkpoint import CheckpointError, load_checkpoint, load_weights
from hgan.train.media import save_gif, save_png_strip


def load_generator(ckpt_path, device="cpu"):
    """(generator in eval mode on `device`, the run's config dict) from a training checkpoint."""
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("generator"), dict)
            and isinstance(ckpt.get("config"), dict) and isinstance(ckpt["config"].get("model"), dict)):
        # a bare state dict or tensor saved with torch.save: a KeyError or IndexError otherwise
        raise CheckpointError(f"{ckpt_path} is not a training checkpoint (no generator weights "
                              f"and model config)")
    return generator_from_checkpoint(ckpt, device), ckpt["config"]


def generator_from_checkpoint(ckpt: dict, device="cpu"):
    """The generator of a loaded checkpoint dict, in eval mode on `device`."""
    mcfg = ModelConfig.from_dict(ckpt["config"]["model"])
    generator = build_models(mcfg, "cpu").generator
    load_weights(generator, ckpt["generator"], "generator")
    return generator.to(device).eval()


def generate(ckpt_path, n=16, frames=64, dt=None, seed=0, device="cpu"):
    generator, config = load_generator(ckpt_path, device)
    rng = torch.Generator(torch.device(device)).manual_seed(seed)
    return generator.sample(n, frames, dt=dt, generator=rng), config


def _name():
    """`hgan-sample` when run as that console script, else `hgan.sample`."""
    return prog("hgan-sample", "hgan.sample")


class _Parser(OneLineParser):
    error_name, script = "hgan.sample", "hgan-sample"


_positive = int_at_least(1)
_MAX_FPS = 50


def _fps(text):
    # A GIF stores each frame's delay in hundredths of a second, and browsers play a delay
    # under 2/100 s at 10 frames per second: above 50, a GIF would play slower than asked.
    v = _positive(text)
    if v > _MAX_FPS:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {_MAX_FPS} (GIF frame "
                                         f"delays are in 1/100 s), got {v}")
    return v


def _finite(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _out(text):
    # A folder (one that exists, or a new one written with a trailing slash): the default
    # names inside it, not DIR.gif beside it.
    if os.path.isdir(text) or text.endswith(("/", os.sep)):
        return os.path.join(text, "samples.gif")
    stem, ext = os.path.splitext(os.path.basename(text))
    if not stem:
        raise argparse.ArgumentTypeError(f"expected a file name such as samples.gif, got {text!r}")
    if ext.lower() not in ("", ".gif", ".png"):
        # both are written, the GIF and the PNG strip beside it: another format would be a
        # file named as one thing holding another, or a silent change of name
        raise argparse.ArgumentTypeError(f"writes a GIF and a PNG strip beside it: expected a "
                                         f"name ending in .gif or .png, got {text!r}")
    return text


def _seed(text):
    # torch.Generator.manual_seed takes a 64-bit seed (a negative one wraps); outside that
    # range it raised "Overflow when unpacking long long", naming no flag.
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not -2**63 <= v < 2**64:
        raise argparse.ArgumentTypeError(f"expected a 64-bit integer (-2**63 to 2**64 - 1), got {v}")
    return v


def _time_step(text):
    v = _finite(text)
    if v == 0:
        raise argparse.ArgumentTypeError("a time step of 0 does not move: every frame would "
                                         "be the first (negative runs backwards)")
    return v


def _device(text):
    # check_device accepts (and its error offers) auto: the device it resolves to, since
    # torch.device("auto") is no device (that ended in torch's list of device types)
    try:
        dev = check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text if text != "auto" else dev.type


def build_parser():
    p = _Parser(prog=prog("hgan-sample", "python -m hgan.sample"), description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    p.add_argument("--n", type=_positive, default=16,
                   help="number of videos (default: %(default)s)")
    p.add_argument("--frames", type=_positive, default=64,
                   help="frames per video, may exceed the training length (default: %(default)s)")
    p.add_argument("--dt", type=_time_step, default=None,
                   help=f"time step; negative runs backwards; "
                        f"{' and '.join(hamiltonian_models())} only (default: the training dt)")
    p.add_argument("--seed", type=_seed, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--device", type=_device, default="cpu",
                   help="auto (cuda when available), cpu, cuda or cuda:N; cpu draws the same "
                        "videos for a seed on every machine (default: %(default)s)")
    p.add_argument("--fps", type=_fps, default=REAL_TIME_FPS,
                   help=f"GIF frames per second, at most {_MAX_FPS}; the default plays in real "
                        f"time at the data's dt (default: %(default)s)")
    p.add_argument("--out", type=_out, default="samples.gif",
                   help="GIF path, or a folder for samples.gif in it (an existing one, or "
                        "DIR/ to create it); the PNG strip goes beside it (default: %(default)s)")
    return p


def main(argv=None):
    _startup.release(_name())
    p = build_parser()
    a = p.parse_args(argv)
    # SIGTERM ends sampling as Ctrl-C does: one line, and no half-written GIF or PNG left
    written = []
    try:
        with sigterm_interrupts():
            return _run(a, written)
    except KeyboardInterrupt as e:
        _remove(written)          # both or neither, and no truncated GIF
        signum = getattr(e, "signum", signal.SIGINT)
        by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        print(f"{_name()}: interrupted{by}; nothing was written", file=sys.stderr)
        return 128 + signum


def _remove(paths):
    for path in paths:
        if os.path.isfile(path):     # not a folder that stood in the file's way
            os.remove(path)


def _run(a, written):
    """Sample and write; every path is added to `written` before its file is opened."""
    try:
        videos, config = generate(a.checkpoint, a.n, a.frames, a.dt, a.seed, a.device)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"{_name()}: error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    stem, ext = os.path.splitext(a.out)
    gif = a.out if ext.lower() == ".gif" else stem + ".gif"
    png = stem + ".png"
    try:
        written.append(gif)
        save_gif(videos, gif, fps=a.fps)
        written.append(png)
        save_png_strip(videos, png)
    except OSError as e:
        _remove(written)     # both or neither: a lone GIF reads as a finished command's
        why = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)
        print(f"{_name()}: error: --out {a.out}: cannot write it ({why})", file=sys.stderr)
        return 2
    print(f"{config['model']['model']} on {config.get('system', '?')}: {a.n} "
          f"video{'' if a.n == 1 else 's'} x {a.frames} frame{'' if a.frames == 1 else 's'} "
          f"-> {gif}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
