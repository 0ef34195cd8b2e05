"""Generation of `<out>/<system>/{train,test}.h5`: simulate, render and write in chunks.

Peak memory is bounded by the chunk (trajectories simulated together) and the render block
(frames rendered together), never by N: each chunk is written and dropped before the next.
"""
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from hgan.data.h5io import H5Writer, compress_frames, missing_folders
from hgan.data.interrupt import StopSignals, discard
from hgan.data.render import render
from hgan.data.simulate import DT, SUBSTEPS, simulate_chunks, went_singular
from hgan.data.systems import get_system

log = logging.getLogger(__name__)

CHUNK_TRAJ = 256  # trajectories simulated per vectorised batch
# three_body's adaptive integrator makes as many passes as its busiest trajectory takes steps,
# whatever the batch width, so wider batches share them (measured at 2,048 trajectories: 256,
# 512, 1024 and 2048 per batch simulate 51,000 / 54,000 / 54,000 / 56,000 frames/s; before
# trajectories ran ahead of each other at frames, 1024 was 2.5x faster than 256). Its
# states are 12 floats wide, so 1024 still fits in ~50 MB.
CHUNK_TRAJ_ADAPTIVE = 1024
RENDER_BYTES = 16 << 20  # uint8 frames of one render-and-compress task
THREADS = 2  # render + deflate run in numpy/zlib with the GIL released


def _trajectories(n):
    return f"{n} trajector{'y' if n == 1 else 'ies'}"


def render_states(system, states, params, color_index, offset, resolution):
    """uint8 frames [n, T, R, R, 3] of float64 states [n, T, 2*dof]."""
    pos = system.positions(states, params, offset)
    return render(pos, system.particle_radius(params), color_index, system.num_colors,
                  system.full_canvas, resolution)


def _check(name, value, minimum):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def generate_split(system, path, split, n, *, frames, seed, resolution=32, chunk=CHUNK_TRAJ,
                   progress=True, stop_event=None):
    """Write n trajectories of `split` to path; returns the file attributes written.

    Whatever ends it early (an error, Ctrl-C, SIGTERM) removes `<path>.partial` before the
    exception leaves; SIGINT and SIGTERM arrive as GenerationInterrupted (see StopSignals),
    and so does `stop_event` once set (a threading.Event: the stop of a caller that runs this
    off the main thread, which signals do not reach), at the next chunk or block."""
    system = get_system(system) if isinstance(system, str) else system
    if not 0 <= seed < 2 ** 64:  # h5py has no attribute type for a larger one
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    block = max(1, min(chunk, RENDER_BYTES // (frames * resolution * resolution * 3)))
    rejected = inaccurate = nonfinite = 0
    writer = None

    def work(sim, sl):
        pr = {k: v[sl] for k, v in sim["params"].items()}
        return compress_frames(render_states(system, sim["states"][sl], pr,
                                             sim["color_index"][sl], sim["offset"][sl],
                                             resolution))

    with StopSignals(stop_event) as stop:
        bar = tqdm(total=n * frames, unit="frame", unit_scale=True, disable=not progress,
                   desc=f"{system.name}/{split}")
        pool = ThreadPoolExecutor(THREADS)
        made = missing_folders(path)
        try:
            writer = H5Writer(path, system, n, frames, resolution,
                              dict(split=split, seed=seed, dt=DT, substeps=SUBSTEPS))
            index_chunks = (np.arange(b, min(n, b + chunk)) for b in range(0, n, chunk))
            for start, sim in zip(range(0, n, chunk),
                                  simulate_chunks(system, seed, split, index_chunks, frames)):
                idx = np.arange(start, min(n, start + chunk))
                rejected += sim["rejected"]
                inaccurate += sim["inaccurate"]
                nonfinite += sim["nonfinite"]
                stop.check()
                slices = [slice(b, min(len(idx), b + block)) for b in range(0, len(idx), block)]
                jobs = [pool.submit(work, sim, sl) for sl in slices]
                for sl, job in zip(slices, jobs):  # written in order: the file is deterministic
                    writer.write(start + sl.start, frames=stop.result(job),
                                 states=sim["states"][sl], color_index=sim["color_index"][sl],
                                 offset=sim["offset"][sl],
                                 params={k: v[sl] for k, v in sim["params"].items()})
                    bar.update((sl.stop - sl.start) * frames)
                bar.set_postfix(rejected=rejected)
                stop.check()
            writer.close(rejected=rejected, inaccurate=inaccurate)
        except BaseException:
            discard(writer, os.fspath(path), made)
            raise
        finally:
            pool.shutdown(cancel_futures=True)
            bar.close()
    stats = dict(rejected=rejected, inaccurate=inaccurate, nonfinite=nonfinite)
    log.info("%s", _summary(system, path, n, stats))
    if progress or nonfinite:   # a singular point is said even without a progress bar
        tqdm.write(_summary(system, path, n, stats), file=sys.stderr if nonfinite else None)
    return stats


def _summary(system, path, n, stats):
    """The line a generated split ends with. Draws that went NaN or infinite are re-drawn like
    those that leave the canvas (and counted with them in the file's `rejected`), but they
    mean a singular point of the system's H that the data then avoids: said apart."""
    singular = (f"; {stats['nonfinite']} of them {went_singular(system)} instead: a singular "
                f"point of the system's H, which the accepted trajectories avoid (docs/data.md)"
                if stats["nonfinite"] else "")
    return (f"{path}: {_trajectories(n)}, {stats['rejected']} rejected (left the canvas"
            f"{singular}), {stats['inaccurate']} re-drawn for accuracy")


def generate_dataset(system, out_dir, *, train=1000, test=200, frames=256, seed=0,
                     resolution=32, progress=True, chunk=None):
    """Generate `<out_dir>/<system>/{train,test}.h5` (test first); a split with 0
    trajectories is skipped. Returns {split: path}. The same arguments give byte-identical
    arrays, whatever `chunk` (trajectories simulated together; default per system)."""
    sys_obj = get_system(system)
    if chunk is None:
        chunk = CHUNK_TRAJ_ADAPTIVE if sys_obj.physics.adaptive else CHUNK_TRAJ
    _check("train", train, 0)
    _check("test", test, 0)
    _check("frames", frames, 1)
    _check("seed", seed, 0)
    _check("resolution", resolution, 2)
    _check("chunk", chunk, 1)
    out = {}
    # The test split first: train.h5 is what training looks for, so a generation stopped
    # part-way (Ctrl-C, SIGTERM) never leaves a train split without its test split.
    for split, n in (("test", test), ("train", train)):
        if n == 0:
            continue
        path = os.path.join(os.fspath(out_dir), sys_obj.name, split + ".h5")
        generate_split(sys_obj, path, split, n, frames=frames, seed=seed, resolution=resolution,
                       chunk=chunk, progress=progress)
        out[split] = path
    return {split: out[split] for split in ("train", "test") if split in out}
