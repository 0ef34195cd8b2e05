import os

import torch

# CI has no GPU: run the Triton kernels through the interpreter on CPU tensors. This must be
# set before triton.jit decorates anything, hence here, before any test module imports hgan.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pendulum_h5(tmp_path_factory):
    """Path of a small generated pendulum train.h5: 24 trajectories x 40 frames, 32x32, seed 0."""
    from hgan.data import generate_dataset
    out = generate_dataset("pendulum", tmp_path_factory.mktemp("tiny_pendulum"), train=24,
                           test=0, frames=40, seed=0, resolution=32, progress=False)
    return out["train"]
