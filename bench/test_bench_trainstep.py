"""Videos/s of a full HGAN training step, baseline vs optimised, at batch 16 x 16 frames.

baseline : eager fp32, reference (autograd, create_graph) integrator, torch DataLoader.
optimised: --amp (bf16 autocast on CUDA; fp32 on a CPU without native bf16)
           + channels-last + torch.compile of G_I, D_I, D_V + integrator "auto" (fused on
           CUDA, analytic on CPU) + DALI when it is installed and CUDA is present (else the
           torch loader); eager step.
captured : fused integrator + the step replayed as CUDA graphs (hgan.train.capture) + the
           auto loader (gpu-resident for these sets); CUDA only.

One step is the trainer's own `Trainer.step` (D update, then G update with the cyclic loss),
whose stages are wrapped in `stage(...)`. Beside the median step time the
bench records each stage's share of a step from the profiler and the share of the step
spent blocked on the next batch (`data`). Run: pytest bench/test_bench_trainstep.py
--benchmark-only. CPU figures are what this machine can show; GPU targets are measured on a
GPU only. The full GPU table (each optimisation's effect, device-busy share) is
bench/trainstep_table.py, run by bench/gpu/trainstep.sh.
"""
import os

import numpy as np
import pytest
import torch

from _results import record
from _trainstep import BATCH, DEVICE, EAGER, FRAMES, TABLE, TrainStep, frames_file, sync
from hgan.data import dali
from hgan.data.loader import build_loader
from hgan.train.loop import cpu_has_fast_bf16
from hgan.train.profiling import stage_shares

VARIANTS = {
    "baseline": EAGER,
    # bf16 autocast only where it is native: without AVX512-BF16/AMX it is ~20x slower.
    "optimised": {**EAGER, "amp": DEVICE == "cuda" or cpu_has_fast_bf16(),
                  "channels_last": True, "compile": True, "integrator": "auto",
                  "loader": "dali" if dali.available() and DEVICE == "cuda" else "torch"},
    "captured": TABLE["capture"],
}
# One optimisation at a time on top of the baseline, to see which one pays on a device.
for _name, _change in (("only_integrator", dict(integrator="auto")),
                       ("only_channels_last", dict(channels_last=True)),
                       ("only_compile", dict(compile=True))):
    VARIANTS[_name] = {**VARIANTS["baseline"], **_change}
# A CPU step takes seconds to tens of seconds: fewer rounds there (HGAN_BENCH_ROUNDS overrides).
ROUNDS = int(os.environ.get("HGAN_BENCH_ROUNDS", 5 if DEVICE == "cuda" else 2))
_medians = {}  # (variant, resolution) -> median step seconds, this session's


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
    if opts["cuda_graph"] and DEVICE != "cuda":
        pytest.skip("CUDA graphs need CUDA")
    step = TrainStep(frames_file(tmp_path, resolution), resolution, opts)
    try:
        # Compilation, allocator, autotuning and the capture happen in the warm-up steps.
        for _ in range(step.warmup_steps):
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
        "captured": step.trainer.captured,
        "autocast_dtype": str(step.trainer.amp_dtype),
        "rounds": ROUNDS,
        "median_step_s": median,
        "videos_per_s": BATCH / median,
        "data_wait_median_s": wait,
        "data_wait_share": wait / median,
        "stage_share": shares["share"],
        "stage_cpu_us_per_step": {k: v / shares["steps"]
                                  for k, v in shares["stage_cpu_us"].items()},
    }
    if DEVICE == "cuda":   # the profiler records device time of CUDA only (zeros on a CPU)
        payload["stage_device_us_per_step"] = {k: v / shares["steps"]
                                               for k, v in shares["stage_device_us"].items()}
    record("trainstep", f"{variant}_{resolution}px", payload, device=DEVICE)
    _medians[(variant, resolution)] = median
    record_speedup(resolution)


def record_speedup(resolution):
    """Speedups from the medians of this session only: a ratio pairs steps measured under the
    same conditions (a stored baseline can be another commit's, on a busier machine). A run
    of some variants (-k) leaves the stored speedup entry alone unless it timed a pair."""
    base = _medians.get(("baseline", resolution))
    payload = {}
    for variant in ("optimised", "captured"):
        run = _medians.get((variant, resolution))
        if base and run:
            payload.update({f"{variant}_over_baseline": base / run,
                            "baseline_median_step_s": base, f"{variant}_median_step_s": run})
    if payload:
        record("trainstep", f"speedup_{resolution}px", payload, device=DEVICE, partial=True)


@pytest.mark.parametrize("kind", ["torch", "dali", "gpu-resident"])
@pytest.mark.parametrize("resolution", [32, 64])
def test_loader_throughput(benchmark, tmp_path, resolution, kind):
    """Batches/s of each stream alone: the ceiling on how fast data can feed a step."""
    if kind == "dali" and not dali.available():
        pytest.skip("DALI not installed")
    stream = build_loader(frames_file(tmp_path, resolution), batch_size=BATCH, frames=FRAMES,
                          device=DEVICE, kind=kind, num_workers=2)
    batches = iter(stream)

    def next_batch():
        x = next(batches)
        sync()
        return x

    try:
        for _ in range(3):
            next_batch()
        benchmark.pedantic(next_batch, rounds=20, iterations=1, warmup_rounds=0)
    finally:
        stream.close()
    median = benchmark.stats.stats.median
    record("trainstep", f"loader_{kind}_{resolution}px",
           {"median_batch_s": median, "videos_per_s": BATCH / median, "batch": BATCH,
            "frames": FRAMES}, device=DEVICE)
