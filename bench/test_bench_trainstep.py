"""Videos/s of a full HGAN training step, baseline vs optimised, at batch 16 x 16 frames.

baseline : eager fp32, reference (autograd, create_graph) integrator, torch DataLoader.
optimised: bf16 autocast + channels-last (G_I, D_I; channels_last_3d D_V) + torch.compile
           of G_I, D_I, D_V + integrator "auto" (fused on CUDA, analytic on CPU) + DALI when
           it is installed and CUDA is present (else the torch loader).

One step = D update (real and fake through D_I and D_V) then G update (fake through both,
plus the cyclic loss), each stage wrapped in `stage(...)`. Beside the median step time the
bench records each stage's share of a step from the profiler and the share of the step
spent blocked on the next batch (`data`). Run: pytest bench/test_bench_trainstep.py
--benchmark-only. CPU figures are what this machine can show; GPU targets are measured on a
GPU only.
"""
import os
import time

import h5py
import numpy as np
import pytest
import torch

from _results import record
from hgan.data import dali
from hgan.data.loader import build_loader
from hgan.kernels import cyclic_loss
from hgan.models import ModelConfig, build_models
from hgan.train.losses import d_loss, g_loss
from hgan.train.profiling import stage, stage_shares

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH, FRAMES = 16, 16
VARIANTS = {
    "baseline": dict(amp=False, channels_last=False, compile=False, integrator="reference",
                     loader="torch"),
    "optimised": dict(amp=True, channels_last=True, compile=True, integrator="auto",
                      loader="dali" if dali.available() and DEVICE == "cuda" else "torch"),
}
# A CPU step takes seconds to tens of seconds: fewer rounds there (HGAN_BENCH_ROUNDS overrides).
ROUNDS = int(os.environ.get("HGAN_BENCH_ROUNDS", 5 if DEVICE == "cuda" else 2))
_medians = {}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _frames_file(tmp_dir, resolution):
    # Timing does not depend on pixel values; 64 trajectories give 4 batches per epoch.
    path = str(tmp_dir / f"frames{resolution}.h5")
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (64, 32, resolution, resolution, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("frames", data=data, chunks=(1, 32, resolution, resolution, 3))
    return path


class TrainStep:
    """One HGAN training step built from the models (the trainer's step, minus logging)."""

    def __init__(self, path, resolution, opts):
        self.opts = opts
        cfg = ModelConfig(resolution=resolution, clip_frames=FRAMES,
                          integrator=opts["integrator"], channels_last=opts["channels_last"])
        torch.manual_seed(0)
        self.models = build_models(cfg, DEVICE)
        g, d_i, d_v = self.models.generator, self.models.image_disc, self.models.video_disc
        if opts["channels_last"]:
            d_v.to(memory_format=torch.channels_last_3d)
        self.g_i, self.d_i, self.d_v = g.image_generator, d_i, d_v
        if opts["compile"]:
            # Motion (integrator, possibly with double backward) stays eager.
            g.image_generator = torch.compile(g.image_generator)
            self.d_i, self.d_v = torch.compile(d_i), torch.compile(d_v)
        self.g = g
        self.opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(list(d_i.parameters()) + list(d_v.parameters()),
                                      lr=2e-4, betas=(0.5, 0.999))
        self.stream = build_loader(path, batch_size=BATCH, frames=FRAMES, device=DEVICE,
                                   kind=opts["loader"], num_workers=2)
        self.batches = iter(self.stream)
        self.data_wait = []

    def _layout(self, video):
        if not self.opts["channels_last"]:
            return video
        # [B, T, C, H, W] stored as B, T, H, W, C: D_V's transpose(1, 2) then sees a
        # channels_last_3d clip and per-frame images are channels_last.
        return video.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)

    def _frames(self, video, idx):
        img = video[torch.arange(video.shape[0], device=video.device), idx]
        if self.opts["channels_last"]:
            img = img.contiguous(memory_format=torch.channels_last)
        return img

    def __call__(self):
        amp = torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=self.opts["amp"])
        t0 = time.perf_counter()
        with stage("data"):
            real = next(self.batches)
        self.data_wait.append(time.perf_counter() - t0)
        real = self._layout(real)
        idx = torch.randint(FRAMES, (BATCH,), device=DEVICE)
        with amp:
            with stage("motion"):
                mot = self.g.motion(BATCH, FRAMES)
            with stage("generator"):
                fake = self.g.render(self.g.content(BATCH), mot["y"])
            with stage("D_I"):
                li = self.d_i(torch.cat([self._frames(real, idx),
                                         self._frames(fake.detach(), idx)]))
            with stage("D_V"):
                lv = self.d_v(torch.cat([real, fake.detach()]))
            loss_d = d_loss(li[:BATCH], li[BATCH:]) + d_loss(lv[:BATCH], lv[BATCH:])
        with stage("backward"):
            loss_d.backward()
        with stage("optimizer"):
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)
        with amp:
            with stage("D_I"):
                gi = self.d_i(self._frames(fake, idx))
            with stage("D_V"):
                gv = self.d_v(fake)
            loss_g = g_loss(gi) + g_loss(gv) + cyclic_loss(mot["dHdq"].float())
        with stage("backward"):
            loss_g.backward()
        with stage("optimizer"):
            self.opt_g.step()
            self.opt_g.zero_grad(set_to_none=True)
        _sync()
        return float(loss_d.detach()) + float(loss_g.detach())

    def close(self):
        self.stream.close()


def _profile(step, n=3):
    acts = [torch.profiler.ProfilerActivity.CPU]
    if DEVICE == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts,
                                schedule=torch.profiler.schedule(wait=0, warmup=1, active=n),
                                acc_events=True) as prof:
        for _ in range(n + 1):
            step()
            prof.step()
    return stage_shares(prof)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("resolution", [32, 64])
def test_trainstep(benchmark, tmp_path, resolution, variant):
    opts = VARIANTS[variant]
    step = TrainStep(_frames_file(tmp_path, resolution), resolution, opts)
    try:
        # Compilation, allocator and autotuning happen in the warm-up steps.
        for _ in range(2 if DEVICE == "cuda" else 1):
            assert np.isfinite(step())
        step.data_wait.clear()
        benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=0)
        median = benchmark.stats.stats.median
        wait = float(np.median(step.data_wait))
        shares = _profile(step, n=3 if DEVICE == "cuda" else 1)
    finally:
        step.close()
    payload = {
        "batch": BATCH, "frames": FRAMES, "resolution": resolution, **opts,
        "loader_used": step.stream.kind,
        "rounds": ROUNDS,
        "median_step_s": median,
        "videos_per_s": BATCH / median,
        "data_wait_median_s": wait,
        "data_wait_share": wait / median,
        "stage_share": shares["share"],
        "stage_cpu_us_per_step": {k: v / shares["steps"] for k, v in shares["stage_cpu_us"].items()},
        "stage_device_us_per_step": {k: v / shares["steps"]
                                     for k, v in shares["stage_device_us"].items()},
    }
    record("trainstep", f"{variant}_{resolution}px", payload, device=DEVICE)
    _medians[(variant, resolution)] = median
    if len(_medians.keys() & {("baseline", resolution), ("optimised", resolution)}) == 2:
        record("trainstep", f"speedup_{resolution}px",
               {"optimised_over_baseline": _medians[("baseline", resolution)]
                / _medians[("optimised", resolution)]}, device=DEVICE)
