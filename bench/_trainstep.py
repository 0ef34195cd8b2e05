"""What the train-step benchmarks share: the variants, the data file, the step, the timers.

Used by bench/test_bench_trainstep.py (pytest-benchmark, per-step medians) and by
bench/trainstep_table.py (the GPU table: throughput over a run of steps, device-busy share).
"""
import os
import time

import h5py
import numpy as np
import torch

from hgan.data import generate_dataset
from hgan.data.loader import build_loader
from hgan.models import ModelConfig
from hgan.train import capture as hcapture
from hgan.train.config import RunConfig
from hgan.train.loop import Trainer
from hgan.train.profiling import STAGES, stage

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH, FRAMES = 16, 16

EAGER = dict(amp=False, channels_last=False, compile=False, integrator="reference",
             loader="torch", cuda_graph=False, fused_adam=False)
# The GPU table (bench/trainstep_table.py): each row changes one thing from the row it names.
TABLE = {
    "baseline": EAGER,                                         # eager fp32, reference integrator
    "fused": {**EAGER, "integrator": "auto"},                  # + fused integrator (auto on CUDA)
}
TABLE["capture"] = {**TABLE["fused"], "cuda_graph": True, "loader": "auto"}  # + CUDA graphs
TABLE["capture_torch_loader"] = {**TABLE["capture"], "loader": "torch"}
TABLE["capture_bf16"] = {**TABLE["capture"], "amp": True}
TABLE["capture_channels_last"] = {**TABLE["capture"], "channels_last": True}
TABLE["capture_compile"] = {**TABLE["capture"], "compile": True}
TABLE["capture_fused_adam"] = {**TABLE["capture"], "fused_adam": True}
# The grid's long pole: mocogan, captured as the trainer runs it (fused Adam). Not an option
# of the captured step (no verdict): its row says what a mocogan step costs beside hgan's.
TABLE["capture_mocogan"] = {**TABLE["capture_fused_adam"], "model": "mocogan"}
# ... with its GRU rollout's loops frame by frame (hgan.models.gru_unroll's "cells") instead
# of in two Triton kernels, and through autograd's GRUCell loop: what each step gains.
TABLE["capture_mocogan_cells"] = {**TABLE["capture_mocogan"], "gru_unroll": "cells"}
TABLE["capture_mocogan_autograd"] = {**TABLE["capture_mocogan"], "gru_unroll": "autograd"}
# ... under bf16 autocast (train.py --amp; the GRU itself stays fp32): for the grid's --amp
TABLE["capture_mocogan_bf16"] = {**TABLE["capture_mocogan"], "amp": True}


def frames_file(root, resolution):
    """A valid Toy Physics file (the loaders validate it) whose frames are noise, so
    decompression costs what real data would; 64 trajectories give 4 batches per epoch."""
    path = os.path.join(os.fspath(root), f"data{resolution}", "pendulum", "train.h5")
    if os.path.exists(path):                 # made by an earlier stage of the GPU table
        with h5py.File(path, "r") as f:
            if f.attrs.get("bench_noise", False):
                return path
    path = generate_dataset("pendulum", os.path.join(os.fspath(root), f"data{resolution}"),
                            train=64, test=0, frames=32, seed=0, resolution=resolution,
                            progress=False)["train"]
    with h5py.File(path, "a") as f:
        f["frames"][...] = np.random.default_rng(0).integers(0, 256, f["frames"].shape,
                                                             dtype=np.uint8)
        f.attrs["bench_noise"] = True
    return path


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class TrainStep:
    """The trainer's own step (hgan.train.loop.Trainer.step) fed by a batch stream."""

    def __init__(self, path, resolution, opts):
        self.opts = opts
        cfg = RunConfig(batch_size=BATCH, frames=FRAMES, amp=opts["amp"], compile=opts["compile"],
                        loader=opts["loader"], progress=False,
                        cuda_graph=opts.get("cuda_graph", False),
                        # The issues' workload: videos of FRAMES rolled out FRAMES frames.
                        # Training's default rolls out 30 and renders 16 (--rollout-frames):
                        # the same rendering, about twice the integrator's time.
                        model=ModelConfig(model=opts.get("model", "hgan"),
                                          resolution=resolution, clip_frames=FRAMES,
                                          rollout_frames=FRAMES,
                                          integrator=opts["integrator"],
                                          gru_backend=opts.get("gru_unroll", "auto"),
                                          channels_last=opts["channels_last"]))
        if opts["compile"]:
            # Compiled as in a training process of its own: Dynamo caches compiled code per
            # code object, shared by every variant's modules, and a variant compiled after
            # others at new shapes got dynamic-shape graphs (whose backward Inductor failed
            # to compile at 64 px on a CPU, torch 2.13, after five earlier compiled variants).
            torch._dynamo.reset()
        fused_adam = hcapture.ADAM_FUSED
        hcapture.ADAM_FUSED = bool(opts.get("fused_adam", False))
        try:
            self.trainer = Trainer(cfg, device=DEVICE)
        finally:
            hcapture.ADAM_FUSED = fused_adam
        self.stream = build_loader(path, batch_size=BATCH, frames=FRAMES, device=DEVICE,
                                   kind=opts["loader"], num_workers=2,
                                   channels_last=opts["channels_last"])
        self.batches = iter(self.stream)
        self.data_wait = []
        self.stats = None
        # Set: every step trains on this batch instead of the stream's next one (see
        # data_cost), so that a run of steps pays nothing for its data.
        self.fixed_batch = None

    @property
    def warmup_steps(self):
        """Steps before the timed ones: compilation, autotuning, and the capture."""
        n = 2 if DEVICE == "cuda" else 1
        return n + (hcapture.WARMUP_STEPS + 1 if self.trainer.captured else 0)

    def run(self):
        """One step, not synchronised (the GPU may still be running it)."""
        t0 = time.perf_counter()
        with stage("data"):
            real = next(self.batches) if self.fixed_batch is None else self.fixed_batch
        self.data_wait.append(time.perf_counter() - t0)
        self.stats = self.trainer.step(real)
        self.trainer.iteration += 1

    def __call__(self):
        """One synchronised step; returns a finite number when the losses are finite."""
        self.run()
        sync()
        return sum(float(self.stats[k]) for k in ("loss/G", "loss/D_I", "loss/D_V"))

    def close(self):
        self.batches.close()   # the loader's workers end now, from the thread that made them
        self.stream.close()


def run_of_steps(step, n):
    """(seconds for n steps with one sync at the end, seconds blocked on data in them)."""
    step.data_wait.clear()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step.run()
    sync()
    return time.perf_counter() - t0, sum(step.data_wait)


def drained_steps(step, n):
    """n steps, each after a synchronisation (CUDA's launch queue drained): per step the host
    seconds in next() (the loader's own cost), in the step's launches, the device's tail
    after them, and the whole step, as lists {"next", "launch", "tail", "serial"}."""
    out = {"next": [], "launch": [], "tail": [], "serial": []}
    sync()
    for _ in range(n):   # each step's closing sync drains the queue for the next one
        t0 = time.perf_counter()
        real = next(step.batches)
        t1 = time.perf_counter()
        step.stats = step.trainer.step(real)
        step.trainer.iteration += 1
        t2 = time.perf_counter()
        sync()
        t3 = time.perf_counter()
        for key, value in (("next", t1 - t0), ("launch", t2 - t1), ("tail", t3 - t2),
                           ("serial", t3 - t0)):
            out[key].append(value)
    return out


def loader_cost(step, n):
    """Median host seconds of one next() with CUDA's launch queue drained before it: the
    loader's own cost per step. Time in next() over unsynchronised steps (run_of_steps)
    overstates it once the device is the bottleneck: the host runs ahead until the launch
    queue is full and then blocks in whichever launch comes next, often the loader's first
    (bench/gpu/data_wait.py splits a step's host time this way). Each next() is followed by
    a step, so the loader runs as it does in training."""
    return float(np.median(drained_steps(step, n)["next"]))


def data_cost(step, n, rounds):
    """What the data costs a step, free of where the host happens to block: the median wall
    time of `rounds` runs of n steps fed by the stream, against the same with one batch
    reused (no loader at all). Returns (fed, fixed) median seconds per step."""
    fed = sorted(run_of_steps(step, n)[0] for _ in range(rounds))[rounds // 2]
    step.fixed_batch = next(step.batches).clone(memory_format=torch.preserve_format)
    try:
        fixed = sorted(run_of_steps(step, n)[0] for _ in range(rounds))[rounds // 2]
    finally:
        step.fixed_batch = None
    return fed / n, fixed / n


def _union_us(intervals):
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def device_busy_share(step, n):
    """Share of wall time over n unsynchronised steps in which the GPU runs a kernel or a
    copy: the union of the device activity intervals the profiler reports, divided by the
    steps' wall time (one sync at the end). Only CUDA activity is recorded, so the profiler
    adds no host work to the steps. None without CUDA; "share" None, with a note, when the
    profiler reported no device activity."""
    if DEVICE != "cuda":
        return None
    sync()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            step.run()
        sync()
        wall_us = (time.perf_counter() - t0) * 1e6
    # Not the device copies of record_function ranges (gpu_user_annotation): they span
    # whole stages, idle time included.
    ranges = set(STAGES) | {"replay"}
    work = [e for e in prof.events()
            if e.device_type != torch.autograd.DeviceType.CPU
            and not getattr(e, "is_user_annotation", False)
            and e.name not in ranges and not e.name.startswith("ProfilerStep")]
    spans = [(e.time_range.start, e.time_range.end) for e in work]
    if not spans:  # e.g. a CUPTI that does not trace kernels launched by graph replays
        return {"share": None, "wall_us": wall_us, "steps": n,
                "note": "the profiler reported no device activity"}
    return {"busy_us": _union_us(spans), "wall_us": wall_us, "steps": n,
            "share": _union_us(spans) / wall_us, **kernel_table(work, n)}


TOP_KERNELS = 15


def kernel_table(work, steps):
    """Per step: how many kernels and copies the device ran ("kernels_per_step") and the
    TOP_KERNELS names with the most device time ("top_kernels": [name, us per step, launches
    per step]), so that a step's cost can be read as many small kernels or a few long ones."""
    total, count = {}, {}
    for e in work:
        total[e.name] = total.get(e.name, 0.0) + (e.time_range.end - e.time_range.start)
        count[e.name] = count.get(e.name, 0) + 1
    top = sorted(total, key=total.get, reverse=True)[:TOP_KERNELS]
    return {"kernels_per_step": len(work) / steps,
            "top_kernels": [[name[:120], total[name] / steps, count[name] / steps]
                            for name in top]}
