"""Host time of the training loop around the step (hgan.train.run.run), step and batch stubbed.

What every iteration costs in Python besides the step's own launches (progress, stop flag,
profiler hook, bookkeeping): with a captured step the device runs ~3 ms per iteration
(docs/training-speed.md), so this figure says how far the loop is from being the limit, and
how many packed runs (hgan.train.pack) one process's GIL can drive: a round of R runs costs
R x (this + the batch's and the replays' launches) of host time. Device-independent: it is
recorded under the host CPU's results file, section "loop".

Run: pytest bench/test_bench_loop.py --benchmark-only
"""

import pytest
import torch

import hgan.train.run as hrun
from _results import record
from hgan.data import generate_dataset
from hgan.models import ModelConfig
from hgan.train import RunConfig
from hgan.train.loop import Trainer

ITERS = 5000


class _Stream:
    """An endless stream of one tiny tensor: the loop without the data's own cost."""
    kind, position = "stub", 0

    def __iter__(self):
        x = torch.zeros(1)
        while True:
            self.position += 1
            yield x

    def close(self):
        pass


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    generate_dataset("pendulum", root / "pendulum", train=4, test=0, frames=20, seed=0,
                     resolution=32, progress=False)
    return str(root)


@pytest.mark.parametrize("progress", [False, True], ids=["no-bar", "bar"])
def test_bench_loop_overhead(benchmark, data_root, tmp_path, monkeypatch, progress):
    stats = {k: torch.zeros(()) for k in ("loss/D_I", "loss/D_V", "loss/G", "loss/L_cyc")}
    monkeypatch.setattr(Trainer, "step", lambda self, real, want_stats=False: stats)
    monkeypatch.setattr(Trainer, "flush_checks", lambda self: None)
    monkeypatch.setattr(Trainer, "save", lambda self, name="last.pt": "")
    monkeypatch.setattr(hrun, "_write_samples", lambda *a, **k: "")
    runs = iter(range(1000))

    def setup():
        cfg = RunConfig(model=ModelConfig(ngf=8, ndf=8, clip_frames=4, integrator="reference"),
                        system="pendulum", data=data_root, iters=ITERS, batch_size=4, frames=8,
                        device="cpu", out=str(tmp_path / f"r{next(runs)}"), log_every=100,
                        sample_every=10**9, ckpt_every=10**9, n_samples=2, num_workers=0,
                        progress=progress, loader="torch")
        s = hrun.prepare(cfg)
        s.stream.close()
        s.stream = _Stream()
        return (s,), {}

    benchmark.pedantic(hrun.run, setup=setup, rounds=3, iterations=1)
    us = benchmark.stats.stats.median / ITERS * 1e6
    record("loop", f"loop_overhead_progress_{'on' if progress else 'off'}", {
        "iterations": ITERS, "median_us_per_iteration": us,
        "what": "hgan.train.run.run per iteration with Trainer.step and the batch stubbed "
                "(log every 100; no samples or checkpoints)"}, device="cpu")
    assert us > 0
