"""Step profiling for TensorBoard (torch-tb-profiler) and Chrome/Perfetto trace viewers.

`stage(name)` marks a region of a training step (data, motion, generator, D_I, D_V,
backward, optimizer) so that the profiler attributes time to it; it costs nothing when no
profiler is running. `step_profiler(run_dir, enabled)` records a few steps after a warm-up.
"""
import os

import torch


def stage(name: str):
    return torch.profiler.record_function(name)


class _NoProfiler:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def step(self):
        pass


def step_profiler(run_dir: str, enabled: bool, *, wait: int = 1, warmup: int = 2, active: int = 3):
    """A context whose `.step()` is called once per training iteration."""
    if not enabled:
        return _NoProfiler()
    trace_dir = os.path.join(run_dir, "profile")
    os.makedirs(trace_dir, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(trace_dir),
        record_shapes=True,
        with_stack=False,
    )


__all__ = ["stage", "step_profiler"]
