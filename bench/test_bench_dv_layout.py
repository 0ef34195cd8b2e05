"""D_V in both memory layouts: NCDHW (contiguous) vs channels_last_3d, forward + backward.

Conv3d / BatchNorm3d can insert layout conversions that make channels_last_3d slower
(pitfalls.md). For batch 16 clips of 16 frames at 32 and 64 px, with and without autocast, this
times D_V's forward + backward in each layout and counts, from the profiler, the copy and
layout-conversion ops of one step (aten::copy_ / contiguous / to calls, and on CUDA the kernels
whose names say nchw<->nhwc). Results: bench/results/<device>.json, section "dv_layout", with
the channels_last_3d / NCDHW time ratio. Run: pytest bench/test_bench_dv_layout.py
--benchmark-only
"""
import os

import pytest
import torch

from _results import record
from hgan.models import ModelConfig, build_models
from hgan.train.loop import cpu_has_fast_bf16

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH, FRAMES = 16, 16
ROUNDS = int(os.environ.get("HGAN_BENCH_ROUNDS", 20 if DEVICE == "cuda" else 5))
_medians = {}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _conversions(step):
    """Copy / layout-conversion ops (CPU) and conversion kernels (CUDA) of one step."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if DEVICE == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        step()
    ops, kernels = 0, 0
    for e in prof.key_averages():
        name = e.key.lower()
        if e.key in ("aten::copy_", "aten::contiguous", "aten::to", "aten::_to_copy"):
            ops += e.count
        if "nchw" in name or "nhwc" in name or "convert" in name or "transpose" in name:
            if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
                kernels += e.count
    return ops, kernels


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last_3d"])
def test_bench_dv_layout(benchmark, layout, resolution, amp):
    if amp and DEVICE == "cpu" and not cpu_has_fast_bf16():
        pytest.skip("bf16 autocast is emulated on this CPU (~20x slower): no layout signal")
    torch.manual_seed(0)
    cfg = ModelConfig(resolution=resolution, clip_frames=FRAMES,
                      channels_last=layout == "channels_last_3d")
    d_v = build_models(cfg).video_disc.to(DEVICE)
    if layout == "channels_last_3d":
        d_v.to(memory_format=torch.channels_last_3d)
    clip = torch.randn(BATCH, FRAMES, 3, resolution, resolution, device=DEVICE)
    if layout == "channels_last_3d":
        # What the trainer feeds: the [N, C, T, H, W] view of the clip is channels_last_3d.
        clip = clip.transpose(1, 2).contiguous(memory_format=torch.channels_last_3d)
        clip = clip.transpose(1, 2)
    clip.requires_grad_(True)

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            out = d_v(clip)
        torch.autograd.grad(out.float().square().sum(), [clip, *d_v.parameters()])
        _sync()

    step()
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    ops, kernels = _conversions(step)
    key = (resolution, amp)
    _medians.setdefault(key, {})[layout] = median
    payload = {"median_s": median, "rounds": ROUNDS, "batch": BATCH, "frames": FRAMES,
               "copy_ops_per_step": ops, "conversion_kernels_per_step": kernels}
    if len(_medians[key]) == 2:
        payload["channels_last_3d_over_ncdhw_time"] = (_medians[key]["channels_last_3d"]
                                                       / _medians[key]["ncdhw"])
    record("dv_layout", f"{layout}/{resolution}px/{'bf16' if amp else 'fp32'}", payload,
           DEVICE)
