"""Typed run configuration and the command line of train.py."""
import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields

from hgan.models.config import (ACTIVATIONS, HAMILTONIANS, INTEGRATORS, MODELS, PRECISIONS,
                                SCHEMES, ModelConfig)


@dataclass
class RunConfig:
    system: str = "pendulum"
    data: str = "data"                # dataset root: <data>/<system>/train.h5
    iters: int = 100_000
    batch_size: int = 16              # global batch (split across DDP ranks)
    frames: int = 16                  # frames per generated/real training video
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    cyc_lambda: float = 0.01
    r1_gamma: float = 0.0
    amp: bool = False
    amp_dtype: str = "auto"           # auto: bf16 where fast (CUDA with bf16, CPU with AVX512-BF16/AMX)
    compile: bool = False
    cuda_graph: bool = True           # capture the step into CUDA graphs where it can (hgan.train.capture)
    device: str = "auto"
    seed: int = 0
    out: str = ""
    log_every: int = 50
    sample_every: int = 250
    ckpt_every: int = 250
    keep_every: int = 0               # also keep checkpoints/iter_XXXXXXX.pt every N (0: never)
    n_samples: int = 8
    profile: bool = False
    loader: str = "auto"
    num_workers: int = 2
    progress: bool = True
    gen_train: int = 256              # dataset size generated when --data lacks the system
    gen_test: int = 64
    gen_frames: int = 64
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        for name in ("iters", "batch_size", "frames", "log_every", "sample_every", "ckpt_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.gen_frames < self.frames:
            raise ValueError(f"--gen-frames ({self.gen_frames}) must be >= --frames ({self.frames})")

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


def _systems():
    try:
        from hgan.data import SYSTEMS
        return tuple(SYSTEMS)
    except ImportError:
        return None


def _loader_kinds():
    try:
        from hgan.data.loader import KINDS
        return tuple(KINDS)
    except ImportError:
        return ("auto", "dali", "torch")


def build_parser() -> argparse.ArgumentParser:
    d, m = RunConfig(), ModelConfig()
    p = argparse.ArgumentParser(description="Train HGAN (or a baseline) on a Toy Physics system.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--system", default=d.system, choices=_systems(),
                   help="Toy Physics system to learn")
    p.add_argument("--model", default=m.model, choices=MODELS,
                   help="hgan (config map + HNN + L_cyc), hnn_gan (no map), mocogan (GRU)")
    p.add_argument("--data", default=d.data, help="dataset root; generated there when missing")
    p.add_argument("--iters", type=int, default=d.iters,
                   help="total training iterations (one D and one G update each)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch")
    p.add_argument("--frames", type=int, default=d.frames,
                   help="frames per training video")
    p.add_argument("--clip-frames", type=int, default=m.clip_frames,
                   help="clip length for the video discriminator (capped at --frames)")
    p.add_argument("--resolution", type=int, default=m.resolution,
                   help="frame size: 32, 64 or 96 (4*2^n or 6*2^n)")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="Adam learning rate of every network (betas 0.5, 0.999)")
    p.add_argument("--cyc-lambda", type=float, default=d.cyc_lambda,
                   help="weight lambda of the cyclic-coordinate loss (hgan)")
    p.add_argument("--r1-gamma", type=float, default=d.r1_gamma,
                   help="R1 gradient penalty weight on real data (0: off; the official code uses 10)")
    p.add_argument("--hamiltonian", default=m.hamiltonian, choices=HAMILTONIANS,
                   help="general H(q,p) or separable K(p)+V(q) (symplectic, reversible)")
    p.add_argument("--activation", default=m.activation, choices=ACTIVATIONS,
                   help="activation of the Hamiltonian MLP")
    p.add_argument("--integrator", default=m.integrator, choices=INTEGRATORS,
                   help="leapfrog backend (auto: fused on CUDA, analytic on CPU)")
    p.add_argument("--scheme", default=m.scheme, choices=SCHEMES,
                   help="leapfrog step: order2 (second order for any H) or official (the "
                        "official HGAN code's step, first order unless --hamiltonian separable)")
    p.add_argument("--fused-precision", default=m.fused_precision, choices=PRECISIONS,
                   help="dot products inside the fused integrator kernels: ieee (fp32 "
                        "FMA), or tensor-core tf32x3 / tf32 (see the README's integrator "
                        "section)")
    p.add_argument("--dt", type=float, default=m.dt,
                   help="leapfrog step (the data's frame interval)")
    p.add_argument("--ngf", type=int, default=m.ngf,
                   help="G_I width")
    p.add_argument("--ndf", type=int, default=m.ndf,
                   help="D_I / D_V width")
    p.add_argument("--amp", action="store_true", help="autocast: bf16 on CPU; bf16 or fp16 on CUDA")
    p.add_argument("--amp-dtype", default=d.amp_dtype, choices=("auto", "bf16", "fp16"),
                   help="auto: bf16 (CPU, and CUDA devices that support it), else fp16 + GradScaler on CUDA")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile G_I, D_I, D_V and the motion module's configuration map "
                        "(hgan) or GRU (mocogan); the leapfrog integrator stays eager")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="run the eager training step on CUDA instead of replaying it as CUDA "
                        "graphs (configurations that cannot be captured run eagerly anyway)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory format for G_I and D_I")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of weights, noise and data order")
    p.add_argument("--out", default=d.out, help="run directory (default runs/<system>-<model>-<time>)")
    p.add_argument("--resume", default="", help="checkpoint file or run directory to continue")
    p.add_argument("--log-every", type=int, default=d.log_every,
                   help="TensorBoard scalars and progress-bar losses every N iterations")
    p.add_argument("--sample-every", type=int, default=d.sample_every,
                   help="sample GIF/PNG and TensorBoard images every N iterations")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every,
                   help="overwrite checkpoints/last.pt every N iterations")
    p.add_argument("--keep-every", type=int, default=d.keep_every,
                   help="also keep checkpoints/iter_N.pt every N iterations (0: never)")
    p.add_argument("--profile", action="store_true", help="trace a few steps into <out>/profile")
    p.add_argument("--loader", default=d.loader, choices=_loader_kinds(),
                   help="batch loader (auto on CUDA: gpu-resident when the frames fit a "
                        "quarter of the GPU, else DALI when installed, else torch)")
    p.add_argument("--num-workers", type=int, default=d.num_workers,
                   help="torch DataLoader workers")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars")
    p.add_argument("--gen-train", type=int, default=d.gen_train,
                   help="train trajectories generated when the dataset is missing")
    p.add_argument("--gen-test", type=int, default=d.gen_test,
                   help="test trajectories generated when the dataset is missing")
    p.add_argument("--gen-frames", type=int, default=d.gen_frames,
                   help="frames per generated trajectory")
    return p


def config_from_args(argv=None):
    """(RunConfig, resume path). A resumed run takes its config from the checkpoint (see loop)."""
    a = build_parser().parse_args(argv)
    model = ModelConfig(model=a.model, resolution=a.resolution, hamiltonian=a.hamiltonian,
                        activation=a.activation, dt=a.dt, ngf=a.ngf, ndf=a.ndf,
                        clip_frames=min(a.clip_frames, a.frames), integrator=a.integrator,
                        scheme=a.scheme, fused_precision=a.fused_precision,
                        channels_last=a.channels_last)
    out = a.out or os.path.join("runs", f"{a.system}-{a.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = RunConfig(system=a.system, data=a.data, iters=a.iters, batch_size=a.batch_size,
                    frames=a.frames, lr=a.lr, cyc_lambda=a.cyc_lambda, r1_gamma=a.r1_gamma,
                    amp=a.amp, amp_dtype=a.amp_dtype, compile=a.compile,
                    cuda_graph=not a.no_cuda_graph, device=a.device, seed=a.seed, out=out,
                    log_every=a.log_every, sample_every=a.sample_every, ckpt_every=a.ckpt_every,
                    keep_every=a.keep_every, profile=a.profile, loader=a.loader,
                    num_workers=a.num_workers, progress=not a.no_progress, gen_train=a.gen_train,
                    gen_test=a.gen_test, gen_frames=a.gen_frames, model=model)
    return cfg, a.resume
