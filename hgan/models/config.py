"""Typed model configuration and the resolution plan shared by G_I, D_I and D_V."""
from dataclasses import MISSING, asdict, dataclass, field, fields

from hgan.kernels import PRECISION_CHOICES, SCHEMES   # see hgan.kernels.leapfrog.common
from hgan.model_kinds import KINDS, model_kind, model_names

HAMILTONIANS = ("general", "separable")
ACTIVATIONS = ("softplus", "tanh", "relu")
INTEGRATORS = ("auto", "reference", "analytic", "fused")
GRU_INPUTS = ("feedback", "noise")
GRU_BACKENDS = ("auto", "cells", "autograd")


def option(default=MISSING, help="", *, choices=None, resumable=False, cli=True,
           default_factory=MISSING):
    """A config field that is also a train.py flag (`--field-name`): one line per option.

    choices, help: a value, or a callable returning one (evaluated when the parser is built).
    resumable: the flag may change when a run is resumed (hgan.train.config.resumable_fields).
    cli=False: no flag."""
    return field(default=default, default_factory=default_factory,
                 metadata={"help": help, "choices": choices, "resumable": resumable, "cli": cli})


def _model_help() -> str:
    return ", ".join(f"{k.name} ({k.help})" for k in KINDS.values())


@dataclass
class ModelConfig:
    """Defaults follow the paper, the official HGAN code and the MoCoGAN code the paper used,
    except where docs/training.md#the-models---model says otherwise, and why."""

    model: str = option("hgan", _model_help, choices=model_names)
    resolution: int = option(32, "frame size, 4*2^n or 6*2^n with n >= 2: 16, 24, 32, 48, "
                                 "64, 96, ...")
    channels: int = option(3, cli=False)
    k: int = option(10, "configuration-space dimension: q, p in R^k")
    motion_dim: int = option(20, "motion noise eps_m ~ N(0, I_motion_dim) (hnn_gan: 2k)")
    content_dim: int = option(50, "content noise z_c ~ N(0, I_content_dim), fixed per video")
    hidden: int = option(100, "width of the configuration map, the Hamiltonian MLP and the GRU")
    depth: int = option(2, "hidden layers of the Hamiltonian MLP")
    hamiltonian: str = option("general", "general H(q,p) or separable K(p)+V(q) (symplectic, "
                                         "reversible)", choices=HAMILTONIANS)
    activation: str = option("softplus", "activation of the Hamiltonian MLP", choices=ACTIVATIONS)
    dt: float = option(0.05, "leapfrog step (the data's frame interval)")
    ngf: int = option(32, "G_I width")
    ndf: int = option(32, "D_I / D_V width")
    clip_frames: int = option(16, "clip length for the video discriminator (capped at --frames)")
    rollout_frames: int = option(30, "frames the motion model rolls out for each generated "
                                     "training video, of which a random --frames window is "
                                     "rendered, as the loader takes a window of a longer real "
                                     "trajectory (the official code generates 30); 0 or at "
                                     "most --frames: exactly --frames, no window")
    gru_input: str = option("feedback", "mocogan's GRU: feedback (one noise vector, each "
                                        "output fed back in, outputs batch-normalised: the "
                                        "MoCoGAN code the paper used) or noise (fresh noise "
                                        "every frame, nearer the MoCoGAN paper's form)",
                            choices=GRU_INPUTS)
    gru_backend: str = option("auto", "how mocogan's GRU rollout runs, the same values each "
                                      "way: auto (hgan.kernels.gru's two Triton kernels on "
                                      "CUDA in fp32, else the frame-by-frame loops), cells (the "
                                      "loops) or autograd (GRUCell frame by frame)",
                              choices=GRU_BACKENDS)
    integrator: str = option("auto", "leapfrog backend (auto: fused on CUDA, analytic on CPU)",
                             choices=INTEGRATORS)
    scheme: str = option("order2", "leapfrog step: order2 (second order for any H) or official "
                                   "(the official HGAN code's step, first order unless "
                                   "--hamiltonian separable)", choices=SCHEMES)
    fused_precision: str = option("auto", "dot products inside the fused integrator kernels' "
                                          "large-batch layouts: auto (the dispatch table's: "
                                          "ieee today), ieee (fp32 FMA), or tensor-core "
                                          "tf32x3 / bf16x3 / tf32 (see docs/integrator.md)",
                                  choices=PRECISION_CHOICES)
    channels_last: bool = option(False, "channels-last memory format for G_I, D_I and D_V")

    def __post_init__(self):
        def one_of(name, value, allowed):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")

        kind = model_kind(self.model)
        one_of("hamiltonian", self.hamiltonian, HAMILTONIANS)
        one_of("activation", self.activation, ACTIVATIONS)
        one_of("integrator", self.integrator, INTEGRATORS)
        one_of("scheme", self.scheme, SCHEMES)
        one_of("fused_precision", self.fused_precision, PRECISION_CHOICES)
        one_of("gru_input", self.gru_input, GRU_INPUTS)
        one_of("gru_backend", self.gru_backend, GRU_BACKENDS)
        if self.fused_precision not in ("auto", "ieee") \
                and self.integrator in ("reference", "analytic"):
            raise ValueError(f"fused_precision {self.fused_precision!r} sets the fused kernels' "
                             f"dot products; integrator {self.integrator!r} computes in float32")
        resolution_plan(self.resolution)
        for name in ("channels", "k", "motion_dim", "content_dim", "hidden", "depth", "ngf",
                     "ndf", "clip_frames"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if int(self.rollout_frames) < 0:
            raise ValueError(f"rollout_frames must be >= 0, got {self.rollout_frames}")
        # Without a configuration map the noise goes straight in as (q0, p0): its size is 2k.
        if kind.hamiltonian and not kind.config_map and self.motion_dim != 2 * self.k:
            raise ValueError(f"{self.model} uses eps_m as (q0, p0): motion_dim "
                             f"({self.motion_dim}) must equal 2*k ({2 * self.k})")

    @property
    def latent_dim(self) -> int:
        """Size of each frame's latent (z_c, y_j)."""
        y_dim = 2 * self.k if model_kind(self.model).hamiltonian else self.motion_dim
        return self.content_dim + y_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        # Configs written before a field existed were trained without it: the official step,
        # generated videos of exactly --frames, and a GRU fed fresh noise every frame.
        return cls(**{"scheme": "official", "rollout_frames": 0, "gru_input": "noise", **d})


def batch_refusal(cfg: ModelConfig, videos: int) -> str | None:
    """Why `videos` generated videos per training batch (per rank under DDP) cannot train
    `cfg`; None when they can: the motion module's own `batch_refusal(cfg, videos)`, where it
    has one (mocogan's feedback GRU normalises each frame's motion codes over the batch)."""
    refusal = getattr(model_kind(cfg.model).motion_class(), "batch_refusal", None)
    return refusal(cfg, int(videos)) if refusal else None



def resolution_plan(resolution: int):
    """(base, n): resolution = base * 2**n with base 4 or 6 and n >= 2 stride-2 layers.

    DCGAN doubles the size per transposed convolution from a 4x4 seed; 96 is not a power
    of two, so (as the official code does at 96) its seed is 6x6: 6 -> 12 -> 24 -> 48 -> 96.
    """
    r, n = int(resolution), 0
    while r > 6 and r % 2 == 0:
        r //= 2
        n += 1
    if r not in (4, 6) or n < 2:
        raise ValueError(f"unsupported resolution {resolution}: use 4*2^n or 6*2^n with n >= 2 "
                         "(e.g. 32, 64, 96)")
    return r, n
