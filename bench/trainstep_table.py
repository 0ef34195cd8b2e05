"""The train-step table on a GPU: each optimisation's measured effect, in one process per stage.

    python bench/trainstep_table.py --data DIR --prep
    python bench/trainstep_table.py --data DIR --resolution 32 --variants capture capture_bf16 \
        --busy capture
    python bench/trainstep_table.py --summary [bench/results/<device>.json]

Variants are `_trainstep.TABLE` (batch 16, 16 frames). Per variant: warm-up steps (compilation,
the capture), then ROUNDS runs of N unsynchronised steps with one sync at the end (what a
training run sees), N chosen so that a run lasts about RUN_S. Recorded under the
"trainstep_table" section of bench/results/<device>.json as soon as a variant is measured:
median videos/s and step time, the share of the steps' wall time blocked on the next batch
and the loader's own share of a step (its next() with the launch queue drained: loader_cost),
what the data costs a step (fed by the stream against one batch reused: data_cost),
the rounds' spread (a change within it, or within 2%, is not kept on: `verdicts`), and for
--busy variants the profiler's device-busy share. A variant that fails is recorded
with its error and the next one runs. bench/gpu/trainstep.sh runs the stages.

`--pack N ...` measures N captured steps in threads of one process, each on its own CUDA
stream (hgan.train.pack's arrangement, for the Table-1 grid): the videos/s of all N together
against one run's, i.e. how far their kernels overlap on the GPU ("capture_pack<N>").
"""
import argparse
import json
import os
import sys
import time
import traceback
from contextlib import nullcontext

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import RESULTS_DIR, environment, record  # noqa: E402
from hgan.train.capture import CAPTURE_FAILED  # noqa: E402
from _trainstep import (BATCH, DEVICE, FRAMES, TABLE, TrainStep, device_busy_share,  # noqa: E402
                        data_cost, frames_file, loader_cost, run_of_steps, sync)

SECTION = "trainstep_table"
ROUNDS = 3
RUN_S = 0.5
BUSY_STEPS = 50
LOADER_STEPS = 50


def measure(data, resolution, variant, busy):
    opts = TABLE[variant]
    step = TrainStep(frames_file(data, resolution), resolution, opts)
    try:
        t0 = time.perf_counter()
        for _ in range(step.warmup_steps):
            if not np.isfinite(step()):
                raise RuntimeError("non-finite losses in the warm-up steps")
        warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        per_step = (time.perf_counter() - t0) / 3
        n = int(min(max(RUN_S / per_step, 5), 400))
        runs = [run_of_steps(step, n) for _ in range(ROUNDS)]
        wall = sorted(runs)[len(runs) // 2]
        walls = [r[0] for r in runs]
        loader_s = loader_cost(step, LOADER_STEPS)
        fed_s, fixed_s = data_cost(step, n, ROUNDS)
        sync()
        finite = np.isfinite(step())
        payload = {
            "batch": BATCH, "frames": FRAMES, "resolution": resolution, **opts,
            "captured": step.trainer.captured,
            "loader_used": step.stream.kind,
            "autocast_dtype": str(step.trainer.amp_dtype),
            "steps_per_run": n, "runs": ROUNDS, "warmup_s": warmup_s,
            "median_step_s": wall[0] / n,
            "videos_per_s": BATCH * n / wall[0],
            "data_wait_share": wall[1] / wall[0],
            # the loader's own host time, the launch queue drained (see loader_cost)
            "loader_s": loader_s,
            "loader_share": loader_s / (wall[0] / n),
            # the step fed by the stream against one batch reused: what data costs a step
            # (the two measured back to back, after the rounds above)
            "data_cost_share": 1 - fixed_s / fed_s,
            "fixed_batch_step_s": fixed_s, "fed_step_s": fed_s,
            # the rounds' own spread: a difference between variants under it is noise
            "round_spread": (max(walls) - min(walls)) / wall[0],
            "losses_finite_after": bool(finite),
        }
        if busy:
            try:  # the profiler failing costs the busy share, not the variant's figures
                payload["device_busy"] = device_busy_share(step, BUSY_STEPS)
            except Exception as err:  # noqa: BLE001
                payload["device_busy"] = {"share": None, "note": f"profiler failed: {err!r}"[:200]}
        return payload
    finally:
        step.close()


PACK_STEPS = 60      # steps per run and round of a pack measurement
PACK_TIMEOUT_S = 240


def measure_pack(data, resolution, n_runs):
    """n_runs captured steps, each in a thread with a stream of its own, set up and warmed up
    one at a time (hgan.train.capture.CAPTURE_LOCK, as a pack does), then ROUNDS rounds in
    which every run takes PACK_STEPS steps at once: videos/s of all runs together."""
    import threading

    import torch

    from hgan.train.capture import CAPTURE_LOCK
    gate = threading.Barrier(n_runs + 1, timeout=PACK_TIMEOUT_S)
    steps, errors = [None] * n_runs, []

    def one(i):
        try:
            stream = torch.cuda.Stream() if DEVICE == "cuda" else None
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                with CAPTURE_LOCK:
                    step = steps[i] = TrainStep(frames_file(data, resolution), resolution,
                                                TABLE["capture"])
                    for _ in range(step.warmup_steps):
                        step()
                for _ in range(ROUNDS):
                    gate.wait()                    # every run starts the round together
                    for _ in range(PACK_STEPS):
                        step.run()
                    if stream is not None:
                        stream.synchronize()
                    gate.wait()                    # ... and the round ends with the last one
        except BaseException as err:               # the main thread reports it
            errors.append(err)
            gate.abort()
        finally:  # here: loader workers die with the thread that started them (workers.py)
            if steps[i] is not None:
                steps[i].close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n_runs)]
    for t in threads:
        t.start()
    rounds = []
    try:
        for _ in range(ROUNDS):
            gate.wait()
            t0 = time.perf_counter()
            gate.wait()
            rounds.append(time.perf_counter() - t0)
    except threading.BrokenBarrierError:
        raise errors[0] if errors else RuntimeError(
            f"the runs did not reach the round's start or end within {PACK_TIMEOUT_S} s") from None
    finally:
        gate.abort()  # threads still waiting leave; a finished measurement is not affected
        for t in threads:
            t.join(timeout=PACK_TIMEOUT_S)
    wall = sorted(rounds)[len(rounds) // 2]
    return {"batch": BATCH, "frames": FRAMES, "resolution": resolution, "runs_in_process": n_runs,
            "captured": all(s.trainer.captured for s in steps), "steps_per_run": PACK_STEPS,
            "rounds": ROUNDS, "median_round_s": wall,
            "videos_per_s": n_runs * BATCH * PACK_STEPS / wall,
            "videos_per_s_per_run": BATCH * PACK_STEPS / wall,
            "cuda_device_max_connections": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS")}


def summary(path):
    """The table as Markdown, from the results file."""
    with open(path) as f:
        data = json.load(f)
    rows = data.get("results", {}).get(SECTION, {})
    if not rows:
        return f"no train-step table in {path} (section {SECTION!r}): nothing measured yet"
    # the rows' own provenance: the file's top level is only its last writer's
    def seen(key):
        vals = sorted({str(r.get(key, data.get(key))) for r in rows.values()})
        return ", ".join(vals)
    lines = [f"device {data.get('device')}, torch {seen('torch')}, commit {seen('commit')}", "",
             "| variant | px | videos/s | step ms | x baseline | data wait | device busy |",
             "|---|---|---|---|---|---|---|"]
    for res in (32, 64):
        base_row = rows.get(f"baseline_{res}px", {})
        base = base_row.get("videos_per_s")
        for variant in TABLE:
            r = rows.get(f"{variant}_{res}px")
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {variant} | {res} | failed: {r['error'][:80]} | | | | |")
                continue
            busy = _busy_cell(r)
            wait = f"{r['data_wait_share']:.1%}"
            if "loader_share" in r:
                wait += f" (loader {r['loader_share']:.1%}"
                if "data_cost_share" in r:
                    wait += f", cost {r['data_cost_share']:.1%}"
                wait += ")"
            lines.append("| {} | {} | {:.0f} | {:.2f} | {} | {} | {} |".format(
                variant, res, r["videos_per_s"], 1e3 * r["median_step_s"],
                _ratio_cell(r, base_row) if base else "", wait, busy))
    return "\n".join(lines + [""] + verdicts(rows) + pack_lines(rows) + kernel_lines(rows))


def kernel_lines(rows):
    """Markdown lines: for each profiled row, the kernels with the most device time per step."""
    lines = []
    for name, r in rows.items():
        busy = r.get("device_busy") or {}
        if not busy.get("top_kernels"):
            continue
        lines += ["", f"{name}: {busy['kernels_per_step']:.0f} kernels and copies per step; "
                  "the most device time:", "", "| kernel | us per step | launches per step |",
                  "|---|---|---|"]
        lines += [f"| `{k}` | {us:.1f} | {per:.1f} |" for k, us, per in busy["top_kernels"]]
    return lines


def _ratio_cell(r, base_row):
    """videos/s over the baseline's; the baseline's commit beside it when the two rows were
    measured at different commits (a later run can re-measure one variant alone)."""
    cell = f"{r['videos_per_s'] / base_row['videos_per_s']:.1f}"
    if r.get("commit") != base_row.get("commit"):
        cell += f" (baseline at {base_row.get('commit')})"
    return cell


def _busy_cell(r):
    """The device-busy share, its note when the profiler gave none, or blank (not profiled)."""
    busy = r.get("device_busy")
    if not busy:
        return ""
    return f"{busy['share']:.0%}" if busy.get("share") is not None else busy.get("note", "")


def pack_lines(rows):
    """Markdown lines: videos/s of N captured runs in one process against one run alone."""
    lines = []
    for res in (32, 64):
        one = rows.get(f"capture_{res}px", {}).get("videos_per_s")
        packs = sorted(((r["runs_in_process"], r.get("cuda_device_max_connections") or ""), r)
                       for name, r in rows.items()
                       if name.startswith("capture_pack") and name.endswith(f"_{res}px")
                       and "videos_per_s" in r)
        failed = sorted(name for name, r in rows.items() if name.startswith("capture_pack")
                        and name.endswith(f"_{res}px") and "error" in r)
        for name in failed:
            lines = lines or ["", "| runs in one process (hgan.train.pack) | px | videos/s, "
                                  "all runs | per run | x one run alone |", "|---|---|---|---|---|"]
            n = name[len("capture_pack"):-len(f"_{res}px")].replace(
                "_conn", ", CUDA_DEVICE_MAX_CONNECTIONS=")
            lines.append(f"| {n} | {res} | failed: {rows[name]['error'][:80]} | | |")
        for (n, conn), r in packs:
            if not lines:
                lines = ["", "| runs in one process (hgan.train.pack) | px | videos/s, all runs "
                             "| per run | x one run alone |", "|---|---|---|---|---|"]
            label = f"{n}, CUDA_DEVICE_MAX_CONNECTIONS={conn}" if conn else n
            lines.append("| {} | {} | {:.0f} | {:.0f} | {} |".format(
                label, res, r["videos_per_s"], r["videos_per_s_per_run"],
                f"{r['videos_per_s'] / one:.2f}" if one else ""))
    return lines


# A change's gain counts only above the larger of the two rows' round spreads and this floor
# (three rounds understate the run-to-run spread; a same-version rerun is the real yardstick).
NOISE_FLOOR = 0.02
# The targets for the captured step at 32 px.
TARGET_VIDEOS_PER_S, TARGET_DATA_WAIT, TARGET_BUSY = 3200, 0.05, 0.80
OPTIONAL = ("capture_bf16", "capture_channels_last", "capture_compile", "capture_fused_adam")


def verdicts(rows):
    """Markdown lines: each optional change's effect on the captured step at every measured
    resolution and whether it stays on (faster at all of them, by more than the noise: the
    larger round spread of the two rows, at least NOISE_FLOOR), then the 32 px targets."""
    lines = ["| on top of the captured step | 32 px | 64 px | keep on |", "|---|---|---|---|"]
    for variant in OPTIONAL:
        gains, noise, failed = {}, {}, set()
        for res in (32, 64):
            r, c = rows.get(f"{variant}_{res}px", {}), rows.get(f"capture_{res}px", {})
            if "error" in r:
                failed.add(res)      # a change that breaks the step at one size is not kept
            elif "videos_per_s" in r and "videos_per_s" in c:
                gains[res] = r["videos_per_s"] / c["videos_per_s"] - 1
                noise[res] = max(NOISE_FLOOR, r.get("round_spread", 0), c.get("round_spread", 0))
        if not gains and not failed:
            continue
        cells = ["failed" if res in failed else
                 (f"{gains[res]:+.1%}" + (f" (noise ±{noise[res]:.1%})"
                                          if abs(gains[res]) <= noise[res] else ""))
                 if res in gains else "" for res in (32, 64)]
        keep = "yes" if not failed and all(g > noise[res] for res, g in gains.items()) else "no"
        lines.append(f"| {variant[len('capture_'):]} | {cells[0]} | {cells[1]} | {keep} |")
    twins = (("cells", "its rollout's loops frame by frame (gru_unroll's cells)"),
             ("autograd", "autograd's GRUCell loop"))
    for res in (32, 64):
        m = rows.get(f"capture_mocogan_{res}px", {})
        for twin, what in twins:
            a = rows.get(f"capture_mocogan_{twin}_{res}px", {})
            if "videos_per_s" not in m or "videos_per_s" not in a:
                continue
            gain = m["videos_per_s"] / a["videos_per_s"] - 1
            noise = max(NOISE_FLOOR, m.get("round_spread", 0), a.get("round_spread", 0))
            lines += ["", f"mocogan, {res} px: its GRU as trained (capture_mocogan, commit "
                      f"{str(m.get('commit'))[:7]}) {gain:+.1%} videos/s over {what}"
                      + (f" (within the noise, ±{noise:.1%})" if abs(gain) <= noise else "")]
    c = rows.get("capture_32px", {})
    if "videos_per_s" in c:
        busy = (c.get("device_busy") or {}).get("share")
        checks = [f"{c['videos_per_s']:.0f} videos/s (target >= {TARGET_VIDEOS_PER_S}): "
                  f"{'met' if c['videos_per_s'] >= TARGET_VIDEOS_PER_S else 'not met'}"]
        if "data_cost_share" in c:  # judged by what the data costs a step (data_cost)
            checks.append(
                f"data wait {c['data_cost_share']:.1%}, the step fed by the loader against one "
                f"batch reused (target < {TARGET_DATA_WAIT:.0%}): "
                f"{'met' if c['data_cost_share'] < TARGET_DATA_WAIT else 'not met'} (the loader's "
                f"own next() {c['loader_share']:.1%}; time in next() over unsynchronised steps "
                f"{c['data_wait_share']:.1%}, launch back-pressure included)")
        elif "loader_share" in c:  # judged by the loader's own cost
            checks.append(
                f"data wait {c['loader_share']:.1%}, the loader's own cost (target < "
                f"{TARGET_DATA_WAIT:.0%}): {'met' if c['loader_share'] < TARGET_DATA_WAIT else 'not met'}"
                f" (time in next() over unsynchronised steps {c['data_wait_share']:.1%}, "
                f"launch back-pressure included)")
        else:
            checks.append(f"data wait {c['data_wait_share']:.1%} (target < {TARGET_DATA_WAIT:.0%}): "
                          f"{'met' if c['data_wait_share'] < TARGET_DATA_WAIT else 'not met'}")
        if busy is not None:
            checks.append(f"device busy {busy:.0%} (target >= {TARGET_BUSY:.0%}): "
                          f"{'met' if busy >= TARGET_BUSY else 'not met'}")
        elif c.get("device_busy"):
            checks.append(f"device busy not measured ({_busy_cell(c)})")
        lines += ["", "captured step, 32 px: " + "; ".join(checks)]
    return lines


def _conn_suffix(connections):
    return "" if connections is None else f"_conn{connections}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="/tmp/hgan-trainstep-data", help="bench data folder")
    p.add_argument("--prep", action="store_true",
                   help="make the 32 and 64 px data files and compile the fused kernels")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--variants", nargs="*", default=[], choices=list(TABLE))
    p.add_argument("--busy", nargs="*", default=[], help="variants whose device-busy share "
                                                         "is profiled")
    p.add_argument("--pack", nargs="*", type=int, default=[],
                   help="numbers of captured runs to measure together in one process")
    p.add_argument("--connections", type=int, default=None, metavar="N",
                   help="CUDA_DEVICE_MAX_CONNECTIONS for this process (set before CUDA starts; "
                        "the driver's default is 8 hardware queues, which 15 runs' streams "
                        "share): the pack rows are named ..._conn<N>")
    p.add_argument("--summary", nargs="?", const="", metavar="RESULTS_JSON",
                   help="print the table as Markdown, from this machine's results file or the "
                        "one named (e.g. bench/results/NVIDIA-H200.json, read on any machine)")
    p.add_argument("--cpu", action="store_true",
                   help="run without CUDA anyway: checks the script (tiny shapes in tests); "
                        "its figures say nothing about the GPU table")
    a = p.parse_args(argv)
    if a.summary is not None:
        path = a.summary or os.path.join(RESULTS_DIR, environment(DEVICE)["device"] + ".json")
        if not os.path.exists(path):
            print(f"no results yet: {path} does not exist")
            return 1
        print(summary(path))
        return 0
    if not (a.prep or a.variants or a.pack):
        p.error("nothing to do: give --prep, --variants, --pack or --summary")
    if a.connections is not None:
        if not 1 <= a.connections <= 32:
            p.error(f"--connections {a.connections}: CUDA takes 1 to 32")
        # read when the CUDA context is created, which nothing in this process has done yet
        os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = str(a.connections)
    if DEVICE != "cuda" and not a.cpu:
        # A CPU step takes about a second: each variant's runs of steps would take minutes and
        # measure nothing this table is for.
        p.error("the train-step table times CUDA steps and this machine has no CUDA device; "
                "on a CPU, time the step with `pytest bench/test_bench_trainstep.py "
                "--benchmark-only` (--cpu runs the table anyway, to check the script)")
    if a.prep:
        for res in (32, 64):
            print(f"data {frames_file(a.data, res)}", flush=True)
        step = TrainStep(frames_file(a.data, 32), 32, TABLE["fused"])
        t0 = time.perf_counter()
        for _ in range(2):
            step()
        step.close()
        print(f"fused kernels compiled and cached: {time.perf_counter() - t0:.1f} s", flush=True)
        return 0
    status = 0
    jobs = [(f"{v}_{a.resolution}px", v, None) for v in a.variants] + \
           [(f"capture_pack{n}{_conn_suffix(a.connections)}_{a.resolution}px", None, n)
            for n in a.pack]
    spoiled = None   # the variant whose capture failed: on torch < 2.13 later captures fail too
    for name, variant, n_runs in jobs:
        t0 = time.perf_counter()
        if spoiled is not None:
            record(SECTION, name, {"error": f"not measured: the capture of {spoiled} failed "
                                            f"earlier in this process"}, device=DEVICE)
            print(f"{name}: not measured (the capture of {spoiled} failed earlier in this "
                  f"process)", flush=True)
            status = 1
            continue
        # Replaced when the variant finishes; stays if the stage's time limit kills it.
        record(SECTION, name, {"error": "did not finish within its stage's time limit"},
               device=DEVICE)
        try:
            payload = (measure(a.data, a.resolution, variant, variant in a.busy) if n_runs is None
                       else measure_pack(a.data, a.resolution, n_runs))
        except Exception as err:   # recorded, and the stage goes on with the next variant
            traceback.print_exc()
            payload = {"error": f"{type(err).__name__}: {err}"}
            status = 1
            if CAPTURE_FAILED.is_set():
                spoiled = name
        record(SECTION, name, payload, device=DEVICE)
        shown = {k: payload[k] for k in ("videos_per_s", "median_step_s", "data_wait_share",
                                          "loader_used", "captured", "videos_per_s_per_run",
                                          "error") if k in payload}
        if payload.get("device_busy"):
            shown["device_busy"] = payload["device_busy"]["share"]
        print(f"{name}: {shown} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
