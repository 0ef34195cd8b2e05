"""CPU checks of code paths that only run on a CUDA machine (audited before the first GPU run).

On CPU each test emulates the CUDA side: the profiler's CUDA duplicates of record_function
ranges, a huge batch (shapes only, meta tensors) for the fused kernels' int32 offsets, a
checkpoint whose noise generator state came from a CUDA generator, and the DALI stream's
spawned workers (what it uses once CUDA is initialised). The tests marked `needs_cuda` run
the real CUDA paths on a GPU machine (bench/gpu/run.sh check) and are skipped elsewhere.
"""
from types import SimpleNamespace

import pytest
import torch

from hgan.train.profiling import stage_shares

CPU, CUDA = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA


def _evt(name, start, end, device_us=0.0, device_type=CPU):
    return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end),
                           device_type=device_type, self_device_time_total=device_us)


class _FakeProf:
    def __init__(self, events):
        self._events = events

    def events(self):
        return self._events


def test_stage_shares_skips_cuda_user_annotation_duplicates():
    # With ProfilerActivity.CUDA every record_function range comes back twice: the host range
    # (device_type CPU) and a gpu_user_annotation (device_type CUDA, its GPU span). Counting
    # the second would double the steps and add each range's GPU span to its kernels' time.
    events = []
    for step in range(3):
        t = step * 10_000
        events += [_evt(f"ProfilerStep#{step}", t, t + 10_000),
                   _evt(f"ProfilerStep#{step}", t, t + 12_000, 12_000.0, CUDA),
                   _evt("motion", t, t + 1_000), _evt("motion", t, t + 1_500, 1_500.0, CUDA),
                   _evt("aten::mm", t + 100, t + 200, 300.0),
                   _evt("D_I", t + 2_000, t + 4_000),
                   _evt("D_I", t + 2_000, t + 4_400, 2_400.0, CUDA),
                   _evt("aten::conv2d", t + 2_100, t + 2_300, 600.0),
                   _evt("ampere_sgemm", t + 150, t + 250, 300.0, CUDA)]
    s = stage_shares(_FakeProf(events))
    assert s["steps"] == 3 and s["step_us"] == 30_000
    assert s["stage_cpu_us"] == {"motion": 3_000, "D_I": 6_000}
    assert s["stage_device_us"] == {"motion": 900.0, "D_I": 1_800.0}
    assert s["share"] == {"motion": 0.1, "D_I": 0.2}


def test_stage_shares_cpu_only_events_unchanged():
    # CPU builds: every event is host-side and no op has device time.
    events = [_evt("ProfilerStep#1", 0, 500), _evt("data", 0, 125), _evt("aten::add", 10, 20),
              _evt("ProfilerStep#2", 500, 1_000), _evt("data", 500, 625)]
    s = stage_shares(_FakeProf(events))
    assert s["steps"] == 2 and s["share"] == {"data": 0.25}
    assert s["stage_device_us"] == {"data": 0.0}


def test_fused_refuses_shapes_past_int32_offsets():
    pytest.importorskip("triton")
    from hgan.kernels.leapfrog import fused
    from hgan.kernels.leapfrog.check import random_mlp
    w, b = random_mlp(16, (16, 16))
    w, b = [x.to("meta") for x in w], [x.to("meta") for x in b]
    q0 = torch.empty(2 ** 23, 16, device="meta")          # 2^23 * 16 frames * 16 = 2^31
    with pytest.raises(ValueError, match="int32"):
        fused.leapfrog_fwd(q0, q0, w, b, 0.05, 16, "softplus")


def test_resume_from_other_device_kind_reseeds_the_noise_generator():
    # A CUDA generator's state is 16 bytes; restoring it into a CPU generator (or the reverse,
    # a CPU run resumed with --device cuda) would raise "RNG state is wrong size".
    from hgan.models import ModelConfig
    from hgan.train.config import RunConfig
    from hgan.train.loop import Trainer

    cfg = RunConfig(batch_size=2, frames=4, device="cpu", progress=False,
                    model=ModelConfig(resolution=16, ngf=4, ndf=4, k=2, motion_dim=4,
                                      content_dim=4, hidden=8, clip_frames=4))
    trainer = Trainer(cfg, device="cpu")
    state = trainer.state_dict()
    state["iteration"] = 5
    state["noise_rng"] = torch.zeros(16, dtype=torch.uint8)
    other = Trainer(cfg, device="cpu")
    other.load_state_dict(state)
    want = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 0 + 7919 * 5).get_state()
    assert other.iteration == 5 and torch.equal(other.noise.get_state(), want)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _tiny_model_config(**kw):
    from hgan.models import ModelConfig
    # hidden 16: the smallest width inside the fused contract, so "auto" runs fused on CUDA.
    return ModelConfig(**{**dict(resolution=16, ngf=4, ndf=4, k=2, motion_dim=4, content_dim=4,
                                 hidden=16, clip_frames=4, rollout_frames=8), **kw})


def _take(path, n, **kw):
    from hgan.data.loader import build_loader
    stream = build_loader(path, batch_size=3, frames=4, seed=5, **kw)
    out = [b.clone(memory_format=torch.preserve_format) for _, b in zip(range(n), stream)]
    stream.close()
    assert len(out) == n, f"{kw.get('kind')} stream ended after {len(out)} of {n} batches"
    return stream, out


def test_dali_stream_with_spawned_workers_matches_torch(noisy_generated_h5, monkeypatch):
    # Once CUDA is initialised (always, on a GPU: the trainer builds its models first) the
    # DALI stream starts its reader workers with "spawn", which pickles the sample source.
    pytest.importorskip("nvidia.dali")
    from hgan.data import dali
    path = noisy_generated_h5(6, 20, 8)[0]
    _, ref = _take(path, 3, kind="torch", num_workers=0)
    monkeypatch.setattr(dali.torch.cuda, "is_initialized", lambda: True)
    started, real = [], dali.pipeline_def

    def pipeline_def(*args, **kwargs):
        started.append(kwargs.get("py_start_method"))
        return real(*args, **kwargs)
    monkeypatch.setattr(dali, "pipeline_def", pipeline_def)
    _, got = _take(path, 3, kind="dali", num_workers=2)    # 3 batches, or it fails
    assert started and set(started) == {"spawn"}, started
    assert all(torch.equal(x, y) for x, y in zip(ref, got))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                                                     needs_cuda])])
@pytest.mark.parametrize("kind", ["torch", "gpu-resident", "dali"])
def test_held_batches_are_not_overwritten_by_later_ones(noisy_generated_h5, device, kind):
    # A caller may keep a batch while it asks for the next ones (the step's kernels still
    # read it, or it is kept for a figure): DALI's iterator reuses its output buffers
    # ring-wise, so each stream must hand out storage of its own. 8 held batches outlast a
    # ring of prefetch depth 2.
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
    from hgan.data.loader import build_loader
    path = noisy_generated_h5(6, 20, 8)[0]
    _, ref = _take(path, 8, kind="torch", num_workers=0)
    stream = build_loader(path, batch_size=3, frames=4, seed=5, kind=kind, num_workers=2,
                          device=device)
    held = [b for _, b in zip(range(8), stream)]       # no copies taken
    stream.close()
    assert len(held) == 8
    for g, (x, y) in enumerate(zip(ref, held)):
        assert torch.equal(x, y.cpu()), f"batch {g} changed after later batches were read"


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("kind,channels_last", [("torch", False), ("torch", True),
                                                ("gpu-resident", False), ("dali", False),
                                                ("dali", True)])
def test_cuda_streams_equal_the_cpu_stream(noisy_generated_h5, kind, channels_last):
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
    path = noisy_generated_h5(6, 20, 8)[0]
    _, ref = _take(path, 4, kind="torch", num_workers=0)
    stream, got = _take(path, 4, kind=kind, num_workers=2, device="cuda",
                        channels_last=channels_last)
    assert stream.kind == kind
    for x, y in zip(ref, got):
        assert y.is_cuda and y.dtype == torch.float32
        assert torch.equal(x, y.cpu())
        if channels_last:  # D_V's [N, C, T, H, W] view of a clip is channels_last_3d
            assert y.transpose(1, 2).is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("amp,amp_dtype", [(False, "auto"), (True, "bf16"), (True, "fp16")])
def test_cuda_trainer_steps(amp, amp_dtype):
    from hgan.train.config import RunConfig
    from hgan.train.loop import Trainer
    if amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg = RunConfig(batch_size=4, frames=4, amp=amp, amp_dtype=amp_dtype, r1_gamma=10.0,
                    device="cuda", progress=False, model=_tiny_model_config(channels_last=True))
    trainer = Trainer(cfg)
    assert trainer.device == torch.device("cuda", 0)
    assert trainer.scaler.is_enabled() == (amp_dtype == "fp16")
    gen = torch.Generator().manual_seed(0)
    skipped = 0
    for i in range(5):
        real = (torch.rand(4, 4, 3, 16, 16, generator=gen) * 2 - 1).cuda()
        scale = trainer.scaler.get_scale() if trainer.scaler.is_enabled() else 1.0
        stats = trainer.step(real, want_stats=True)
        assert all(torch.isfinite(v).all() for k, v in stats.items() if k.startswith("loss/"))
        if not all(torch.isfinite(v).all() for v in stats.values()):
            # fp16: gradients that overflow at the GradScaler's first scales (an H200: 2^16 and
            # 2^15 at this size) read as non-finite norms; the scaler skips those steps and
            # halves its scale, and nothing else may be non-finite
            assert amp_dtype == "fp16" and trainer.scaler.get_scale() == scale / 2, stats
            skipped += 1
    assert skipped <= 3
    assert all(torch.isfinite(v).all() for v in stats.values()), stats
    assert stats["loss/R1"] > 0 and stats["loss/L_cyc"] >= 0
    mot = trainer.G.motion(3, 4)
    assert mot["dHdq"].is_cuda and mot["y"].dtype == torch.float32


@pytest.mark.cuda
@needs_cuda
def test_stage_shares_counts_steps_once_with_cuda_activity():
    from hgan.train.profiling import stage
    x = torch.randn(256, 256, device="cuda")
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts,
                                schedule=torch.profiler.schedule(wait=0, warmup=1, active=2),
                                acc_events=True) as prof:
        for _ in range(3):
            with stage("motion"):
                y = x @ x
            with stage("D_I"):
                y = y.relu().sum()
            torch.cuda.synchronize()
            prof.step()
    s = stage_shares(prof)
    assert s["steps"] == 2
    assert set(s["stage_cpu_us"]) == {"motion", "D_I"}
    assert 0 < sum(s["share"].values()) <= 1.0
