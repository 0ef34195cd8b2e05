import os

import pytest
import torch

# CI has no GPU: run the Triton kernels through the interpreter on CPU tensors. This must be
# set before triton.jit decorates anything, hence here, before any test module imports hgan.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))



@pytest.fixture(scope="session")
def tiny_pendulum_h5(tmp_path_factory):
    """Path of a small generated pendulum train.h5: 24 trajectories x 40 frames, 32x32, seed 0."""
    from hgan.data import generate_dataset
    out = generate_dataset("pendulum", tmp_path_factory.mktemp("tiny_pendulum"), train=24,
                           test=0, frames=40, seed=0, resolution=32, progress=False)
    return out["train"]


@pytest.fixture
def one_thread():
    # The test shapes are tiny: on a shared 2-core machine, intra-op threads only add
    # contention (measured: a B=5, 64-frame float64 rollout took 30 s with 2 threads under
    # load, 0.3 s with one). Modules opt in with pytestmark = usefixtures("one_thread").
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
