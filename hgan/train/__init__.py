"""Training: typed run config, the GAN step, checkpoints, and the `train` loop."""
from hgan.train.checkpoint import load_checkpoint, save_checkpoint
from hgan.train.config import RunConfig, build_parser, config_from_args


def train(cfg, resume="", callback=None, given=None):
    """Train `cfg`, or resume the checkpoint (or run directory) `resume`. A resumed run takes
    the checkpoint's config with cfg's resumable fields, or, when `given` ({field: value}, as
    flags on the command line) is passed, with exactly those: given={"out": DIR, "iters": N}
    continues it in a new run directory (hgan.train.run.resume_config)."""
    from hgan.train.run import train as _train  # imports the model stack only when training
    return _train(cfg, resume=resume, callback=callback, given=given)


__all__ = ["RunConfig", "build_parser", "config_from_args", "load_checkpoint", "save_checkpoint",
           "train"]
