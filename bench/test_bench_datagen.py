"""Toy Physics generation throughput (frames/s into compressed HDF5) and peak memory.

Run: pytest bench/test_bench_datagen.py --benchmark-only. Figures go to
bench/results/<device>.json under "datagen" (device="cpu": generation is CPU-only).
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from _results import record
from hgan.data import generate_dataset, get_system
from hgan.data.generate import CHUNK_TRAJ, CHUNK_TRAJ_ADAPTIVE, render_states
from hgan.data.h5io import compress_frames
from hgan.data.simulate import simulate_chunks

FRAMES = 512
# Whole chunks (generate.CHUNK_TRAJ = 256, CHUNK_TRAJ_ADAPTIVE = 1024): the throughput of a
# large generation. three_body gets two, so that re-draws merge into the next chunk's batch
# as they do at scale (simulate_chunks).
SIZES = {"pendulum": 256, "three_body": 2048}


def _load():
    return os.getloadavg()[0]


@pytest.mark.parametrize("system", list(SIZES))
def test_bench_generate(benchmark, system, tmp_path):
    n = SIZES[system]
    load = _load()
    benchmark.pedantic(generate_dataset, args=(system, tmp_path),
                       kwargs=dict(train=n, test=0, frames=FRAMES, seed=0, progress=False),
                       rounds=2, iterations=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    # Stage split on the same work: where the time goes.
    s = get_system(system)
    t0 = time.perf_counter()
    chunk = CHUNK_TRAJ_ADAPTIVE if s.physics.adaptive else CHUNK_TRAJ
    sims = list(simulate_chunks(s, 0, "train",
                                [np.arange(b, min(n, b + chunk)) for b in range(0, n, chunk)],
                                FRAMES))
    sim = {k: np.concatenate([x[k] for x in sims]) for k in ("states", "color_index", "offset")}
    sim["params"] = {k: np.concatenate([x["params"][k] for x in sims]) for k in sims[0]["params"]}
    sim["rejected"] = sum(x["rejected"] for x in sims)
    t1 = time.perf_counter()
    imgs = render_states(s, sim["states"], sim["params"], sim["color_index"], sim["offset"], 32)
    t2 = time.perf_counter()
    compress_frames(imgs)
    t3 = time.perf_counter()
    frames = n * FRAMES
    record("datagen", f"generate_{system}_32px", {
        "trajectories": n, "frames_per_traj": FRAMES, "median_s": median,
        "frames_per_s": frames / median, "target_frames_per_s": 20000,
        "ratio_to_target": frames / median / 20000,
        "stage_frames_per_s": {"simulate": frames / (t1 - t0), "render": frames / (t2 - t1),
                               "deflate": frames / (t3 - t2)},
        "rejected_per_accepted": sim["rejected"] / n,
        "load_average_1min": load, "cpu_count": os.cpu_count()}, device="cpu")


# Peak RSS from the child's own VmHWM: ru_maxrss survives fork + exec on Linux, so it would
# report the benchmark process's size whenever that is larger than the child's.
_CHILD = """
import sys
from hgan.data import generate_dataset
generate_dataset(sys.argv[3], sys.argv[1], train=int(sys.argv[2]), test=0, frames=128,
                 seed=0, progress=False)
with open("/proc/self/status") as f:
    print(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
"""


def _peak_mb(tmp, n, system):
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp), str(n), system], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024  # VmHWM is in KiB


# Two sizes, each a whole number of chunks: a flat peak means memory does not grow with N.
MEMORY_SIZES = {"pendulum": (256, 1024), "three_body": (1024, 2048)}


@pytest.mark.parametrize("system", list(MEMORY_SIZES))
def test_bench_peak_memory(benchmark, tmp_path, system):
    sizes = MEMORY_SIZES[system]
    peaks = benchmark.pedantic(
        lambda: [_peak_mb(tmp_path / str(n), n, system) for n in sizes], rounds=1, iterations=1)
    record("datagen", f"peak_memory_{system}_128frames", {
        "trajectories": list(sizes), "peak_rss_mb": peaks, "ratio_large_to_small":
        peaks[1] / peaks[0], "load_average_1min": _load()}, device="cpu")


# The render stage alone, float64 (the suite's frames, the default) against float32 (about
# one value in 10^5 off by one level): what exact frames cost.
RENDER_SYSTEMS = {"pendulum_colors": 64, "two_body_colors": 64, "three_body": 32}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("system", list(RENDER_SYSTEMS))
def test_bench_render(benchmark, system, dtype):
    from hgan.data.render import render
    s = get_system(system)
    sim = next(simulate_chunks(s, 0, "train", [np.arange(RENDER_SYSTEMS[system])], FRAMES))
    pos = s.positions(sim["states"], sim["params"], sim["offset"])
    args = (pos, s.particle_radius(sim["params"]), sim["color_index"], s.num_colors,
            s.full_canvas, 32)
    load = _load()
    benchmark.pedantic(render, args=args, kwargs=dict(dtype=np.dtype(dtype).type), rounds=3,
                       iterations=1, warmup_rounds=1)
    frames = len(pos) * FRAMES
    record("datagen", f"render_{system}_32px_{dtype}", {
        "frames": frames, "median_s": benchmark.stats.stats.median,
        "frames_per_s": frames / benchmark.stats.stats.median, "load_average_1min": load,
        "cpu_count": os.cpu_count()}, device="cpu")
