"""Typed run configuration and the command line of train.py."""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields

from hgan.cli_args import OneLineParser, prog as cli_prog
from hgan.model_kinds import KINDS, unused_option
from hgan.models.config import ModelConfig, option


def _systems():
    try:
        from hgan.data import SYSTEMS
        return tuple(SYSTEMS)
    except ImportError:
        return None


def _loader_kinds():
    from hgan.data.loader import KINDS
    return tuple(KINDS)


@dataclass
class RunConfig:
    system: str = option("pendulum", "Toy Physics system to learn", choices=_systems)
    data: str = option("data", "dataset root (<data>/<system>/train.h5); generated there when "
                       "missing. On resume: where the run's dataset is now (checked to be it)",
                       resumable=True)
    iters: int = option(100_000, "total training iterations (one D and one G update each)",
                        resumable=True)
    batch_size: int = option(16, "global batch (split across DDP ranks)")
    frames: int = option(16, "frames per training video")
    lr: float = option(2e-4, "Adam learning rate of every network")
    beta1: float = option(0.5, "Adam beta1")
    beta2: float = option(0.999, "Adam beta2")
    adam_eps: float = option(1e-8, "Adam epsilon, the floor of its update's denominator")
    cyc_lambda: float = option(0.01, "weight lambda of the cyclic-coordinate loss (hgan; "
                                       "refused with a model without one)")
    r1_gamma: float = option(0.0, "R1 penalty weight on the gradient of D's logit at real "
                                  "data (0: off; the official code's 10 acts on D's sigmoid "
                                  "output: docs/training.md)")
    amp: bool = option(False, "autocast: bf16 on CUDA (fp16 + GradScaler where bf16 is "
                              "missing) and on CPUs with native bf16 whose bf16 "
                              "convolutions check right at the run's shapes; else fp32")
    amp_dtype: str = option("auto", "autocast dtype (auto: bf16 where supported, else fp16 "
                                    "on CUDA)", choices=("auto", "bf16", "fp16"))
    compile: bool = option(False, "torch.compile G_I, D_I, D_V and the motion module's "
                                  "configuration map (hgan) or GRU (mocogan); the leapfrog "
                                  "integrator stays eager")
    cuda_graph: bool = option(True, "on CUDA, replay the training step as two CUDA graphs "
                                    "(hgan.train.capture); --no-cuda-graph runs it eagerly. "
                                    "Configurations that cannot be captured run eagerly anyway, "
                                    "with a one-line reason", resumable=True)
    device: str = option("auto", "auto (CUDA if present), cpu, cuda, cuda:N", resumable=True)
    seed: int = option(0, "seed of weights, noise and data order")
    out: str = option("", "run directory (default runs/<system>-<model>-<time>)")
    log_every: int = option(50, "TensorBoard scalars and progress-bar losses every N iterations",
                            resumable=True)
    sample_every: int = option(250, "sample GIF/PNG and TensorBoard images every N iterations",
                               resumable=True)
    ckpt_every: int = option(250, "overwrite checkpoints/last.pt every N iterations",
                             resumable=True)
    keep_every: int = option(0, "also keep checkpoints/iter_N.pt every N iterations (0: never)",
                             resumable=True)
    n_samples: int = option(8, "videos in each sample GIF/PNG", resumable=True)
    profile: bool = option(False, "trace a few steps into <out>/profile", resumable=True)
    loader: str = option("auto", "batch loader (auto on CUDA: gpu-resident when the frames fit "
                                 "a quarter of the GPU's memory, else DALI when installed, else "
                                 "torch; torch on CPU, where gpu-resident holds every frame in "
                                 "host memory)",
                         choices=_loader_kinds, resumable=True)
    num_workers: int = option(2, "loader worker processes", resumable=True)
    progress: bool = option(True, "progress bars (--no-progress, for logs: a line of losses "
                                  "every --log-every iterations instead)", resumable=True)
    gen_train: int = option(256, "train trajectories generated when the dataset is missing")
    gen_test: int = option(64, "test trajectories generated when the dataset is missing")
    gen_frames: int = option(64, "frames per generated trajectory")
    model: ModelConfig = option(default_factory=ModelConfig, cli=False)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        for name, least in (("iters", 1), ("batch_size", 1), ("frames", 2), ("log_every", 1),
                            ("sample_every", 1), ("ckpt_every", 1), ("keep_every", 0),
                            ("n_samples", 1), ("num_workers", 0), ("gen_train", 1),
                            ("gen_test", 0)):
            if int(getattr(self, name)) < least:
                # frames: a one-frame video has no motion to learn, and D_V no time to judge
                raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, "
                                 f"got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not self.adam_eps > 0:
            raise ValueError(f"--adam-eps must be > 0, got {self.adam_eps}")
        # numpy's seed range (the Trainer seeds numpy with it); beyond it numpy's own message,
        # naming no flag, came after a missing dataset had been generated
        if not 0 <= int(self.seed) < 2**32:
            raise ValueError(f"--seed must be an integer from 0 to 2**32 - 1, got {self.seed}")
        # Checked here, not at the first rollout, which would fail after the data is loaded.
        if not (math.isfinite(self.model.dt) and self.model.dt > 0):
            raise ValueError(f"--dt must be a finite number > 0, got {self.model.dt}")
        # --gen-frames >= --frames matters only when a dataset is generated: see
        # hgan.train.loop.ensure_dataset, which checks an existing file's frames instead.

    @property
    def data_path(self) -> str:
        return os.path.join(self.data, self.system, "train.h5")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data_path"] = self.data_path
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def resumable_fields() -> tuple:
    """RunConfig fields a resumed run may take from the command line; the rest must match the
    checkpoint's (hgan.train.run.resume_config)."""
    return tuple(f.name for f in fields(RunConfig) if f.metadata.get("resumable"))


def _add_options(parser, cls, defaults):
    """defaults=None: no defaults, so the parsed namespace holds only the flags given."""
    for f in fields(cls):
        if not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = argparse.SUPPRESS if defaults is None else getattr(defaults, f.name)
        help_ = f.metadata.get("help", "")
        help_ = help_() if callable(help_) else help_
        if f.type is bool:
            parser.add_argument(flag, default=default, help=help_,
                                action=argparse.BooleanOptionalAction)
            continue
        choices = f.metadata.get("choices")
        parser.add_argument(flag, type=f.type, default=default, help=help_,
                            choices=choices() if callable(choices) else choices)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    # An empty default (--out, --resume) has its meaning in the help text already.
    def _get_help_string(self, action):
        if action.default in ("", None):
            return action.help
        return super()._get_help_string(action)


def prog() -> str:
    """The command's name in its usage and error lines: `hgan-train` when installed as that
    script, `train.py` otherwise (python train.py, torchrun train.py, in-process calls)."""
    if (sys.argv[0] or "").endswith(os.path.join("hgan", "train", "cli.py")):
        return "python -m hgan.train.cli"
    return cli_prog("hgan-train", "train.py")


def reports_bad_input() -> bool:
    """Under torchrun every rank meets the same bad input (the same flags, the same files on a
    node): only each node's first rank reports it, so that it is one line, not one per rank."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


class _TrainParser(OneLineParser):
    def error(self, message):
        if not reports_bad_input():
            self.exit(2)
        super().error(message)


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """train.py's flags: one per RunConfig and ModelConfig field, help from the field.

    defaults=False: a parser whose namespace holds only the flags given (see parse_command_line)."""
    p = _TrainParser(prog=prog(), description="Train HGAN (or a baseline) on a Toy Physics system.",
                     formatter_class=_HelpFormatter)
    _add_options(p, RunConfig, RunConfig(model=ModelConfig()) if defaults else None)
    _add_options(p, ModelConfig, ModelConfig() if defaults else None)
    p.add_argument("--resume", default="" if defaults else argparse.SUPPRESS,
                   help="checkpoint file or run directory to continue")
    return p


def config_from_args(argv=None):
    """(RunConfig, resume path); see parse_command_line."""
    cfg, resume, _ = parse_command_line(argv)
    return cfg, resume


def parse_command_line(argv=None):
    """(RunConfig, resume path, {field: value} of the flags given on the command line).

    A resumed run takes its config from the checkpoint and only the given flags from the
    command line (hgan.train.run.resume_config), hence the third item. An invalid value ends
    in argparse's one-line error and exit code 2."""
    parser = build_parser()
    a = vars(parser.parse_args(argv))
    # The same arguments again without defaults: what remains was given explicitly.
    given = vars(build_parser(defaults=False).parse_args(argv))
    given.pop("resume", None)
    resume = a.pop("resume")
    model_names = {f.name for f in fields(ModelConfig)}
    mk = {k: v for k, v in a.items() if k in model_names}
    rk = {k: v for k, v in a.items() if k not in model_names}
    if rk["frames"] >= 1:  # else RunConfig names --frames below, not clip_frames
        mk["clip_frames"] = min(mk["clip_frames"], rk["frames"])  # D_V clips fit in a video
    kind = KINDS.get(mk["model"])   # an unknown name: argparse's choices refused it already
    # A resumed run's model is its checkpoint's, which hgan.train.run.resume_config checks.
    if kind and not resume:
        try:
            check_flags_apply(mk["model"], given)
        except ValueError as e:
            parser.error(str(e))
    if kind and kind.hamiltonian and not kind.config_map and "motion_dim" not in given:
        mk["motion_dim"] = 2 * mk["k"]  # without a configuration map eps_m is (q0, p0)
    rk["out"] = rk["out"] or os.path.join(
        "runs", f"{rk['system']}-{mk['model']}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        cfg = RunConfig(model=ModelConfig(**mk), **rk)
    except ValueError as e:
        parser.error(_as_flag(str(e), model_names))
    return cfg, resume, given


def check_flags_apply(model: str, given: dict):
    """ValueError for the first flag of `given` ({field: value}, the flags on the command line)
    that changes nothing for --model `model` (hgan.model_kinds.unused_option): accepted, it
    would let a run pass for one that differs from another. Packed runs and the experiment
    grid give each model its own flags (hgan.experiments.grid.model_args)."""
    for name in given:
        why = unused_option(model, name)
        if why:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to --model {model}: "
                             f"{why}")


def _as_flag(message, names):
    """ModelConfig names its fields ("k must be ..."); on the command line they are flags."""
    head, sep, rest = message.partition(" ")
    return f"--{head.replace('_', '-')}{sep}{rest}" if head in names else message
