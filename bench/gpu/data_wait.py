"""Where the captured step's "data wait" goes: the loader's own cost, or a full launch queue.

    PYTHONPATH=. python3 bench/gpu/data_wait.py [--steps 200] [--resolution 32]

The train-step table counts as data wait the host's time inside `next()` over a run of
unsynchronised steps. When the device is the bottleneck the host runs ahead until CUDA's
launch queue is full, and then blocks in whichever launch comes next, often the loader's
first: that time is the GPU's work, not the data's. This script times the same captured
step (batch 16, 16 frames, the trainer's defaults: fused Adam, the auto loader) four ways:

- run: unsynchronised steps, as the table times them (step wall time, time in next());
- drained: a synchronisation before each step, so that the queue is empty, then the host's
  time in next() (the loader's own launch cost), in the step's launches (two graph replays
  and bookkeeping), and the device's tail after them;
- loader alone: next() then a synchronisation, no step (the loader's host and device time);
- fed against fixed: runs of steps fed by the stream against runs that reuse one batch (no
  loader at all): what the data costs a step, wherever the host blocks (_trainstep.data_cost).

If the host's own time per step (next() + the step's launches, drained) is well under the
run's step time, the run is device-bound and its time in next() is back-pressure; the
loader's share of a step is then its drained next() over the run's step time. Results go to
$OUT/data_wait.json and bench/results/<device>.json (section trainstep, data_wait_<res>px).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _results import record  # noqa: E402
from _trainstep import (DEVICE, TABLE, TrainStep, data_cost, drained_steps,  # noqa: E402
                        frames_file, run_of_steps, sync)


def _ms(values):
    return float(np.median(values) * 1e3)


def measure(step, n):
    for _ in range(step.warmup_steps + 5):
        step()
    rounds = [run_of_steps(step, n) for _ in range(3)]
    wall, wait = min(rounds)   # the fastest round: least disturbed by anything else
    drained = drained_steps(step, n)
    alone = []
    for _ in range(n):
        t0 = time.perf_counter()
        next(step.batches)
        sync()
        alone.append(time.perf_counter() - t0)
    fed_s, fixed_s = data_cost(step, n, 3)
    run_step_ms = wall / n * 1e3
    host_ms = _ms(drained["next"]) + _ms(drained["launch"])
    out = {
        "steps": n,
        "run_step_ms": run_step_ms,
        "run_next_ms": wait / n * 1e3,
        "run_data_wait_share": wait / wall,
        "drained_next_ms": _ms(drained["next"]),
        "drained_launch_ms": _ms(drained["launch"]),
        "drained_tail_ms": _ms(drained["tail"]),
        "drained_serial_step_ms": _ms(drained["serial"]),
        "loader_alone_ms": _ms(alone),
        "host_ms_per_step": host_ms,
        "host_share_of_run_step": host_ms / run_step_ms,
        "loader_share_of_run_step": _ms(drained["next"]) / run_step_ms,
        "fed_step_ms": fed_s * 1e3,
        "fixed_batch_step_ms": fixed_s * 1e3,
        "data_cost_share": 1 - fixed_s / fed_s,
    }
    out["verdict"] = (
        "device-bound: the host needs {:.0%} of a step; time in next() is back-pressure, "
        "the loader's own cost is {:.1%} of a step".format(
            out["host_share_of_run_step"], out["loader_share_of_run_step"])
        if out["host_share_of_run_step"] < 0.8 else
        "host-bound: the host needs {:.0%} of a step, the loader {:.1%}".format(
            out["host_share_of_run_step"], out["loader_share_of_run_step"]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--loaders", nargs="+", default=["auto", "torch"])
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "hgan-trainstep-data"))
    args = ap.parse_args(argv)
    if DEVICE != "cuda":
        print("data_wait.py measures a captured step: no CUDA device here")
        return 2
    path = frames_file(args.data, args.resolution)
    results = {}
    for loader in args.loaders:
        step = TrainStep(path, args.resolution,
                         {**TABLE["capture"], "fused_adam": True, "loader": loader})
        try:
            results[loader] = measure(step, args.steps)
        finally:
            step.close()
        print(loader, json.dumps(results[loader], indent=1), flush=True)
        record("trainstep", f"data_wait_{args.resolution}px_{loader}",
               {**results[loader], "batch": 16, "frames": 16}, device=DEVICE)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "data_wait.json"), "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
