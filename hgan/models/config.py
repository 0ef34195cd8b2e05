"""Typed model configuration and the resolution plan shared by G_I, D_I and D_V."""
from dataclasses import asdict, dataclass, fields

from hgan.kernels import PRECISIONS, SCHEMES   # see hgan.kernels.leapfrog.common

MODELS = ("hgan", "hnn_gan", "mocogan")
HAMILTONIANS = ("general", "separable")
ACTIVATIONS = ("softplus", "tanh", "relu")
INTEGRATORS = ("auto", "reference", "analytic", "fused")


@dataclass
class ModelConfig:
    """Defaults follow the official HGAN code and MoCoGAN (see the README's model section)."""

    model: str = "hgan"
    resolution: int = 32
    channels: int = 3
    k: int = 10                  # configuration-space dimension: q, p in R^k
    motion_dim: int = 20         # motion noise eps_m ~ N(0, I_motion_dim)
    content_dim: int = 50        # content noise z_c ~ N(0, I_content_dim), fixed per video
    hidden: int = 100            # width of the config map, the Hamiltonian MLP and the GRU
    depth: int = 2               # hidden layers of the Hamiltonian MLP
    hamiltonian: str = "general"
    activation: str = "softplus"
    dt: float = 0.05
    ngf: int = 32
    ndf: int = 32
    clip_frames: int = 16        # clip length seen by the video discriminator
    integrator: str = "auto"
    scheme: str = "order2"       # "official": the official code's step, first order for general H
    fused_precision: str = "ieee"  # dot products of the fused kernels (PRECISIONS)
    channels_last: bool = False

    def __post_init__(self):
        def one_of(name, value, allowed):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")

        one_of("model", self.model, MODELS)
        one_of("hamiltonian", self.hamiltonian, HAMILTONIANS)
        one_of("activation", self.activation, ACTIVATIONS)
        one_of("integrator", self.integrator, INTEGRATORS)
        one_of("scheme", self.scheme, SCHEMES)
        one_of("fused_precision", self.fused_precision, PRECISIONS)
        if self.fused_precision != "ieee" and self.integrator in ("reference", "analytic"):
            raise ValueError(f"fused_precision {self.fused_precision!r} sets the fused kernels' "
                             f"dot products; integrator {self.integrator!r} computes in float32")
        resolution_plan(self.resolution)
        for name in ("channels", "k", "motion_dim", "content_dim", "hidden", "depth", "ngf",
                     "ndf", "clip_frames"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        # hnn_gan feeds the noise straight in as (q0, p0), so its size must be 2k.
        if self.model == "hnn_gan" and self.motion_dim != 2 * self.k:
            raise ValueError(f"hnn_gan uses eps_m as (q0, p0): motion_dim ({self.motion_dim}) "
                             f"must equal 2*k ({2 * self.k})")

    @property
    def latent_dim(self) -> int:
        """Size of each frame's latent (z_c, y_j)."""
        y_dim = self.motion_dim if self.model == "mocogan" else 2 * self.k
        return self.content_dim + y_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        # Configs written before the scheme field existed were trained with the official step.
        return cls(**{"scheme": "official", **d})


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
