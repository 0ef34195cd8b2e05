"""MoCoGAN's GRU rollout, forward + backward: autograd's GRUCell loop against
hgan.models.gru_unroll's node, its per-frame loops ("cells") and its Triton kernels
("kernels", CUDA only: on CPU they would run through the interpreter, no performance path).

Shape: the trainer's, batch 16, 30 frames (the default rollout), motion 20, hidden 100,
feedback input. Every timed call synchronises the device. Medians and each backend's speed-up
over autograd's loop go to bench/results/<device>.json, section "gru". Run:
pytest bench/test_bench_gru.py --benchmark-only
"""
import pytest
import torch
from torch import nn

from _results import record
from hgan.models.gru_unroll import gru_unroll, reference_unroll

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH, FRAMES, MOTION, HIDDEN = 16, 30, 20, 100
BACKENDS = ["autograd", "cells", "kernels"]
_medians = {}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_gru(benchmark, backend):
    if backend == "kernels" and DEVICE != "cuda":
        pytest.skip("the GRU kernels on CPU run through the Triton interpreter: no performance "
                    "path")
    torch.manual_seed(0)
    cell, out = nn.GRUCell(MOTION, HIDDEN).to(DEVICE), nn.Linear(HIDDEN, MOTION).to(DEVICE)
    params = [*cell.parameters(), *out.parameters()]
    x0 = torch.randn(BATCH, MOTION, device=DEVICE)

    def step():
        if backend == "autograd":
            y = reference_unroll(x0, cell, out, FRAMES, True)
        else:
            y = gru_unroll(x0, cell, out, FRAMES, True, backend=backend)
        torch.autograd.grad(y.square().sum(), params)
        _sync()

    step()   # compilation and first-call costs stay out of the timing
    rounds = 50 if DEVICE == "cuda" else 20
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2)
    median = benchmark.stats.stats.median
    _medians[backend] = median
    record("gru", f"{backend}/B{BATCH}/T{FRAMES}/fwdbwd",
           {"median_s": median, "rounds": rounds, "batch": BATCH, "frames": FRAMES,
            "hidden": HIDDEN, "motion": MOTION,
            "cpu_threads": torch.get_num_threads() if DEVICE == "cpu" else None}, DEVICE)
    if backend != "autograd" and "autograd" in _medians:
        record("gru", f"speedup/B{BATCH}/T{FRAMES}/fwdbwd",
               {f"{backend}_over_autograd": _medians["autograd"] / median}, DEVICE,
               partial=True)
