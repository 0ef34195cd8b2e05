"""Training: typed run config, the GAN step, checkpoints, and the `train` loop."""
from hgan.train.checkpoint import load_checkpoint, save_checkpoint
from hgan.train.config import RunConfig, build_parser, config_from_args


def train(cfg, resume="", callback=None):
    from hgan.train.run import train as _train  # imports the model stack only when training
    return _train(cfg, resume=resume, callback=callback)


__all__ = ["RunConfig", "build_parser", "config_from_args", "load_checkpoint", "save_checkpoint",
           "train"]
