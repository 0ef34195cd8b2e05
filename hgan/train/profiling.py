"""Step profiling for TensorBoard (torch-tb-profiler) and Chrome/Perfetto trace viewers.

`stage(name)` marks a region of a training step (one of STAGES) so that the profiler
attributes time to it; it costs nothing when no profiler is running. `step_profiler(run_dir,
enabled)` records a few steps after a warm-up and writes, under <run_dir>/profile/:

- `<host>_<pid>.<ms>.pt.trace.json`: what `tensorboard --logdir <run_dir>/profile` shows
  with the torch-tb-profiler plugin;
- `trace.json`: the same Chrome trace under a fixed name (a hard link), for chrome://tracing or
  ui.perfetto.dev (the plugin is unmaintained since PyTorch 2.0, a trace viewer is not);
- `stages.json`: each stage's share of the recorded steps (see `stage_shares`).
"""
import importlib.util
import json
import os
import shutil
import socket
import sys
import time

import torch
from tqdm import tqdm

STAGES = ("data", "motion", "generator", "D_I", "D_V", "backward", "optimizer")


def stage(name: str):
    return torch.profiler.record_function(name)


class _NoProfiler:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def step(self):
        pass


def _self_device_time(evt) -> float:
    # self_device_time_total exists in every torch this project admits (>= 2.11); reading
    # the old self_cuda_time_total warns (FutureWarning) once per event.
    return float(getattr(evt, "self_device_time_total", 0.0) or 0.0)


def _on_device(evt) -> bool:
    """True for a device-side event (a CUDA gpu_user_annotation, a kernel)."""
    kind = getattr(evt, "device_type", None)
    return kind is not None and kind != torch.autograd.DeviceType.CPU


def stage_shares_from_events(events, stages=STAGES) -> dict:
    """stage_shares over a profiler's raw events (`prof.events()`)."""
    cpu, dev, step_us, n_steps = {}, {}, 0.0, 0
    windows = []           # (start, end, stage) of every host stage range
    for evt in events:
        if _on_device(evt):
            # With CUDA activity every record_function range also comes back as a
            # gpu_user_annotation (pytorch/pytorch#144613): it is not a host range.
            continue
        start, end = evt.time_range.start, evt.time_range.end
        if evt.name.startswith("ProfilerStep"):
            step_us += end - start
            n_steps += 1
        elif evt.name in stages:
            cpu[evt.name] = cpu.get(evt.name, 0.0) + (end - start)
            dev.setdefault(evt.name, 0.0)
            windows.append((start, end, evt.name))
    windows.sort()
    for evt in events:
        t = 0.0 if _on_device(evt) else _self_device_time(evt)
        if t <= 0:
            continue
        # The innermost stage range open when the op started, whichever thread ran it: on
        # CUDA the autograd engine launches the backward's kernels from its own thread,
        # outside the "backward" range's thread but inside its time window.
        start = evt.time_range.start
        inner = None
        for w_start, w_end, name in windows:
            if w_start > start:
                break
            if start < w_end:
                inner = name
        if inner is not None:
            dev[inner] += t
    return {
        "steps": n_steps,
        "step_us": step_us,
        "stage_cpu_us": cpu,
        "stage_device_us": dev,
        "share": {k: (v / step_us if step_us > 0 else 0.0) for k, v in cpu.items()},
    }


def stage_shares(prof, stages=STAGES) -> dict:
    """Time per stage and per step (microseconds, summed over the recorded steps).

    CPU time is the inclusive wall time of each `stage` range on the host. Device time is
    the kernel time launched while the range was open, by any host thread (0 without
    CUDA): an op's kernels count for the innermost stage range whose time window holds the
    op's start. Windows rather than op parents, because on CUDA the autograd engine runs
    the backward on its own thread, whose ops no range of the training thread encloses.
    Shares divide by the summed ProfilerStep ranges, so they say where a step's host time
    goes; host time inside `data` is the time the step waits for its batch."""
    return stage_shares_from_events(prof.events(), stages)


def _write_profile(prof, trace_dir: str, device_timing: bool):
    os.makedirs(trace_dir, exist_ok=True)
    # Same naming as torch.profiler.tensorboard_trace_handler, which the plugin globs.
    name = f"{socket.gethostname()}_{os.getpid()}.{int(time.time() * 1000)}.pt.trace.json"
    path = os.path.join(trace_dir, name)
    prof.export_chrome_trace(path)
    fixed = os.path.join(trace_dir, "trace.json")
    if os.path.lexists(fixed):
        os.remove(fixed)
    try:
        os.link(path, fixed)  # one file under both names: a trace of 3 steps is ~16 MB on a CPU
    except OSError:           # a file system without hard links
        shutil.copyfile(path, fixed)
    shares = stage_shares(prof)
    if not device_timing:
        del shares["stage_device_us"]   # no device activity was traced: zeros would mislead
    with open(os.path.join(trace_dir, "stages.json"), "w") as f:
        json.dump(shares, f, indent=2, sort_keys=True)


class _StepProfiler:
    """torch.profiler.profile on the wait/warmup/active schedule that counts its steps: a run
    that ends before the schedule does would otherwise leave a profile of fewer steps (the
    last of them empty) or nothing, without a word. It then writes nothing and says so."""

    def __init__(self, trace_dir, wait, warmup, active):
        self.trace_dir, self.steps = trace_dir, 0
        self.schedule = (wait, warmup, active)
        self.needed = wait + warmup + active
        activities = [torch.profiler.ProfilerActivity.CPU]
        self.device_timing = torch.cuda.is_available()
        if self.device_timing:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=self._ready, record_shapes=True, with_stack=False,
            # One cycle (repeat=1), so nothing accumulates; without it torch 2.11 warns at
            # every profile that events are cleared between cycles.
            acc_events=True)

    def _ready(self, prof):
        if self.steps >= self.needed:
            _write_profile(prof, self.trace_dir, self.device_timing)
            wait, warmup, active = self.schedule
            # TensorBoard shows the trace only with its profiler plugin, an extra of its own
            plugin = "" if importlib.util.find_spec("torch_tb_profiler") else \
                " (with the profiler plugin: pip install -e \".[profile]\")"
            tqdm.write(f"[hgan] --profile: {active} steps recorded (after {wait} skipped and "
                       f"{warmup} warm-up) in {self.trace_dir}: tensorboard --logdir "
                       f"{self.trace_dir}{plugin}, or trace.json in ui.perfetto.dev",
                       file=sys.stderr)

    def __enter__(self):
        self._prof.__enter__()
        return self

    def __exit__(self, exc_type, *exc):
        self._prof.__exit__(exc_type, *exc)
        if exc_type is None and self.steps < self.needed:
            wait, warmup, active = self.schedule
            made = f"{self.steps} step" + ("" if self.steps == 1 else "s")
            print(f"[hgan] --profile: the run made {made}, a profile needs "
                  f"{self.needed} ({wait} skipped + {warmup} warm-up + {active} recorded); "
                  "nothing was recorded", file=sys.stderr, flush=True)
        return False

    def step(self):
        self.steps += 1
        self._prof.step()


def step_profiler(run_dir: str, enabled: bool, *, wait: int = 1, warmup: int = 2, active: int = 3):
    """A context whose `.step()` is called once per training iteration.

    The first `wait + warmup` steps are skipped (compilation, allocator and cuDNN
    autotuning would dominate them), the next `active` steps are recorded once. A run of
    fewer than wait + warmup + active steps records nothing and prints one line saying so.
    stages.json has `stage_device_us` only when CUDA activity was traced."""
    if not enabled:
        return _NoProfiler()
    if min(wait, warmup) < 0 or active < 1:
        raise ValueError(f"profiler schedule needs wait, warmup >= 0 and active >= 1, got "
                         f"wait={wait} warmup={warmup} active={active}")
    return _StepProfiler(os.path.join(run_dir, "profile"), wait, warmup, active)


def load_trace(path: str) -> dict:
    """Parse a Chrome trace written above; raises ValueError naming the file if it is not."""
    try:
        with open(path) as f:
            trace = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a Chrome trace JSON: {err}") from err
    if "traceEvents" not in trace:
        raise ValueError(f"{path} has no traceEvents; not a Chrome trace")
    return trace


__all__ = ["STAGES", "stage", "step_profiler", "stage_shares", "stage_shares_from_events",
           "load_trace"]
