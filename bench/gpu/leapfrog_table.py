"""The whole leapfrog table on one GPU, in one call of at most ~6 minutes, compilation included.

    HGAN_COMMIT=<short sha> PYTHONPATH=. python3 bench/gpu/leapfrog_table.py [--budget-s 330]

Shape: frames 16, k 10, widths 100/100, order2, forward+backward of sum(q)+sum(p)+sum(dHdq)
(the issue's and bench/test_bench_leapfrog.py's). In order of value, each stage skipped once
the budget is spent, every row written as soon as it is measured (and last, what the rows
say fused.py's dispatch table should be: `recommend`, and the entries to set there for it:
`fused_py`):

  1. matmul peaks (fp32, tf32, bf16) of this card, the yardsticks for achieved FLOP/s;
  2. correctness: every fused kernel variant vs the float64 reference (max relative error
     over trajectory, dHdq and every gradient) at B = 64 and B = 1031 (the latency layout at
     4 and 16 warps, the 32-row throughput backward, the merged throughput kernels and
     one-pass tf32 at B = 64 only); `recommend` picks no variant that missed 1e-4 here,
     and a variant the warm-up could not compile is skipped;
  3. B = 16, 64: eager reference, analytic, fused (the dispatch table's choice), and each
     layout forced, the latency layout also at 4 and 16 warps (the table's 8 against fewer
     instructions or more latency hiding); the same fused step replayed from a CUDA graph
     (launch cost removed);
  4. B = 65536: eager reference, the throughput layout (bf16x3, hidden-major tiles on wgmma),
     with its backward at 32-row blocks, and merged (THROUGHPUT_MERGED), fused tile layout
     in ieee, tf32x3, bf16x3 and tf32 (with errors), and the latency layout forced; then the
     throughput (plain and merged) and default layouts' forwards alone, so that the
     backward's share can be read off;
  5. B = 1024 (the merged kernels again: they must win at both to be picked);
  6. the latency/tile crossover: every layout at B = 256 .. 8192, which sets
     fused.LATENCY_MAX_ROWS;
  7. where an eager call's host time goes at B = 16 (host and device time per call,
     launches, the host ops by self time; a TensorBoard trace in $OUT/host_profile).

TFLOP/s are of the rollout's fp32 FLOPs (leapfrog_flops); a bf16x3 product runs three bf16
tensor-core products per fp32 one, so its tensor-core rate is three times the figure, against
the bf16 peak.

Before stage 1 every fused variant is compiled once in parallel processes (--warm-one, up to
16 at a time), filling Triton's on-disk cache: one width-128 backward is about a minute of
single-threaded ptxas, so compiled one after another inside the timed stages the variants
would spend most of the budget. Times are CUDA-event medians after warm-up, each with its
spread (its two halves' medians apart: `half_spread`); `recommend` changes the dispatch table
only for a gain beyond that and NOISE_FLOOR. Results go to $OUT/leapfrog_table.json (if OUT is
set) and to bench/results/<device>.json, section "leapfrog_table"; the table is printed last.
`--recommend $OUT/leapfrog_table.json` prints the dispatch table of a run cut short.

`--smoke` runs the same stages on CPU through the Triton interpreter at tiny shapes (no
timings worth reading, no results file): a test runs it, so the GPU call does not find the
script's own mistakes.
"""
import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import torch

# --smoke runs the kernels through the interpreter, which must be on before triton.jit
# decorates them (the imports below); without it every fused row fails for want of CUDA.
if "--smoke" in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _results import (RESULTS_DIR, environment, gpu_state, gpu_state_line,  # noqa: E402
                      record, write_json)
from hgan.kernels import leapfrog, leapfrog_flops  # noqa: E402
from hgan.kernels.leapfrog import fused  # noqa: E402
from hgan.kernels.leapfrog.check import compare_to_reference, random_mlp  # noqa: E402

FRAMES, K, WIDTHS = 16, 10, (100, 100)
DEV = "cuda"
# the batches of stages 2, 3, 4, 5 and 6
STAGES = {"errors": (64, 1031), "train": (16, 64), "big": (65536,), "mid": (1024,),
          "cross": (256, 512, 2048, 4096, 8192)}
MIN_REPS = 10
# Triton specialises the kernels on whether B is a multiple of 16: these two compile every
# kernel the stages below launch.
WARM_BATCHES = (64, 1031)


def smoke():
    """Tiny CPU shapes for --smoke (the kernels through TRITON_INTERPRET=1)."""
    global FRAMES, WIDTHS, DEV
    # widths pad to 64: the narrowest the throughput layout takes (fused._throughput_fits)
    FRAMES, WIDTHS, DEV = 2, (40, 64), "cpu"
    STAGES.update(errors=(3,), train=(2,), big=(5,), mid=(4,), cross=(6,))
# (name, backend, precision, forced layout: None = the dispatch table's choice)
VARIANTS = {
    "reference": ("reference", "ieee", None),
    "analytic": ("analytic", "ieee", None),
    "fused": ("fused", "ieee", None),
    "fused_latency": ("fused", "ieee", "latency"),
    # the latency layout at 4 and 16 warps beside the table's 8 (bench/ptxas_report.py --sass,
    # width 128, per thread and step, forward + backward: 4 warps 2444 + 2805 instructions with
    # 60 B of spills, 8 warps 2286 + 3006 with none, 16 warps 1576 + 2385 with 168 B; fewer
    # warps issue less in all, more of them hide more latency: the GPU decides)
    "fused_latency_w4": ("fused", "ieee", "latency@4"),
    "fused_latency_w16": ("fused", "ieee", "latency@16"),
    "fused_tile": ("fused", "ieee", "tile"),
    "fused_tile_tf32x3": ("fused", "tf32x3", "tile"),
    "fused_tile_tf32": ("fused", "tf32", "tile"),
    "fused_tile_bf16x3": ("fused", "bf16x3", "tile"),
    "fused_throughput": ("fused", "bf16x3", "throughput"),
    # the same with the backward at 32-row blocks (the table's takes 16): half as many
    # dependent products per row, each wgmma twice as wide, against 4x the spills (sm_90,
    # bench/ptxas_report.py --sass: 959 against 168 local loads and stores per thread and
    # step). Which costs more only a GPU says. (The 16-row forward it replaces lost: 21.1
    # against 18.0 ms at B = 65536, an H200 at commit fcd82da; the forward keeps 64.)
    "fused_throughput_bwd32": ("fused", "bf16x3", "throughput_bwd32"),
    # the same kernels with their weight products merged pairwise (fused.THROUGHPUT_MERGED;
    # the backward at 16-row blocks): per step 45 dependent wgmma groups instead of 114 in the
    # backward, 27 instead of 36 in the forward (sm_90 PTX, triton 3.6 as on the H200:
    # backward spills 368 against 516 B per thread, its step loop 3,965 instructions against
    # 5,356; forward 16 B of spills). Modelled from the H200's rows: 10-14 ms against 18.0 at
    # B = 65536 (throughput.py's docstring).
    "fused_throughput_merged": ("fused", "bf16x3", "throughput_merged"),
}
# Stage 2 checks these at every batch of STAGES["errors"], and the variants that `recommend`
# may also pick (the latency layout's other warps, the 32-row throughput backward) at its first
# only: the warm-up compiles them at that batch alone.
ERROR_VARIANTS = ("fused", "fused_latency", "fused_throughput", "fused_tile",
                  "fused_tile_tf32x3", "fused_tile_bf16x3")
# The tensor-core splits timed above the latency regime (issue: 3xTF32 or 3xBF16, whichever
# measures faster and meets 1e-4).
SPLITS = ("fused_throughput", "fused_tile_tf32x3", "fused_tile_bf16x3")
# Those that may become the default there, tf32x3 first (~22 bits per operand, ~1e-6 on an
# H200; the first listed wins a tie). bf16x3 keeps 16 bits (each product off by ~2^-16 of
# itself) and meets 1e-4 with the GPU's rounding of its split: 3.9e-5 at worst over 200
# random inputs across the contract and 4.4e-5 over 24 chosen as hard (k = 1, tanh), on the
# interpreter's emulation of the split (ops._bf16_rne); what wgmma's accumulation adds is
# stage 2's check on the GPU, which a split must pass at every batch to be picked.
DEFAULT_SPLITS = ("fused_tile_tf32x3", "fused_throughput", "fused_tile_bf16x3")
# (one-pass tf32 too: an explicit opt-in that `recommend` never picks, ~2e-3 from float64 on
# an H200; its one check keeps the warm-up within one round of 16 compiles)
ERROR_VARIANTS_FIRST = ("fused_latency_w4", "fused_latency_w16", "fused_throughput_bwd32",
                        "fused_throughput_merged", "fused_tile_tf32")


def error_batches(variant):
    """The batches at which stage 2 checks `variant` against float64."""
    return STAGES["errors"] if variant in ERROR_VARIANTS else STAGES["errors"][:1]


class Budget:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()


def forced(layout):
    """Context: make the dispatch table pick `layout` ("latency" | "latency@W" | "tile" |
    "throughput" | "throughput_bwd32" | "throughput_merged") whatever B is ("latency@W": the
    latency layout at W warps; "tile": the row-major tile layouts even for bf16x3;
    "throughput_bwd32": the throughput layout with its backward at 32-row blocks;
    "throughput_merged": with its merged kernels, the backward at 16-row blocks)."""
    class _Forced:
        def __enter__(self):
            self.saved = (fused.LATENCY_MAX_ROWS, fused.LATENCY_SCRATCH_BYTES,
                          fused.THROUGHPUT_PRECISIONS, fused.THROUGHPUT_BLOCK_B,
                          fused._latency_warps, fused.SPLIT_LATENCY_MAX_ROWS,
                          fused.THROUGHPUT_MERGED)
            if layout and layout.startswith("latency"):
                fused.LATENCY_MAX_ROWS, fused.LATENCY_SCRATCH_BYTES = 1 << 30, 1 << 40
                fused.SPLIT_LATENCY_MAX_ROWS = 1 << 30
                if "@" in layout:
                    warps = int(layout.split("@")[1])
                    fused._latency_warps = lambda h1, h2: warps
            elif layout == "tile":
                fused.LATENCY_MAX_ROWS, fused.THROUGHPUT_PRECISIONS = 0, ()
            elif layout in ("throughput", "throughput_bwd32", "throughput_merged"):
                fused.LATENCY_MAX_ROWS = 0
                if layout == "throughput_bwd32":
                    fused.THROUGHPUT_BLOCK_B = {**fused.THROUGHPUT_BLOCK_B, "bwd": 32}
                    fused.THROUGHPUT_MERGED = False
                elif layout == "throughput_merged":
                    fused.THROUGHPUT_BLOCK_B = {**fused.THROUGHPUT_BLOCK_B, "bwd": 16}
                    fused.THROUGHPUT_MERGED = True

        def __exit__(self, *exc):
            (fused.LATENCY_MAX_ROWS, fused.LATENCY_SCRATCH_BYTES, fused.THROUGHPUT_PRECISIONS,
             fused.THROUGHPUT_BLOCK_B, fused._latency_warps, fused.SPLIT_LATENCY_MAX_ROWS,
             fused.THROUGHPUT_MERGED) = self.saved
            return False
    return _Forced()


def inputs(batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w, b = random_mlp(K, WIDTHS, generator=gen)
    q0, p0 = torch.randn(batch, K, generator=gen), torch.randn(batch, K, generator=gen)
    return [t.to(DEV) for t in (q0, p0, *w, *b)]


def step_fn(variant, batch, forward_only=False):
    """One forward + backward of the benchmark rollout (the forward alone if `forward_only`,
    as a training step runs it: on inputs that need gradients, so that the latency layout
    saves its activations for the backward), as a closure over fresh inputs."""
    backend, precision, layout = VARIANTS[variant]
    leaves = [t.requires_grad_(True) for t in inputs(batch)]

    def step():
        with forced(layout):
            if forward_only:
                return leapfrog(leaves[0], leaves[1], leaves[2:5], leaves[5:], dt=0.05,
                                frames=FRAMES, backend=backend, precision=precision)
            q, p, d = leapfrog(leaves[0], leaves[1], leaves[2:5], leaves[5:], dt=0.05,
                               frames=FRAMES, backend=backend, precision=precision)
            return torch.autograd.grad(q.sum() + p.sum() + d.sum(), leaves, allow_unused=True)
    return step


def half_spread(times):
    """How far apart the medians of the first and the second half of one row's repetitions
    are, relative to the row's median: the same version timed twice, back to back (METHOD.md:
    a difference between versions smaller than that spread is noise). 0 for one repetition."""
    if len(times) < 2:
        return 0.0
    half = len(times) // 2
    return abs(statistics.median(times[:half]) - statistics.median(times[half:])) \
        / statistics.median(times)


def median_ms(fn, min_reps=None, max_s=2.0):
    """(median ms, repetitions, half_spread) of `fn` after one warm-up run."""
    min_reps = min_reps or MIN_REPS
    if DEV != "cuda":   # --smoke: one run on the host clock (it checks the script, not speed)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3, 1, 0.0
    fn()
    torch.cuda.synchronize()
    times, t_end = [], time.monotonic() + max_s
    while len(times) < min_reps or (time.monotonic() < t_end and len(times) < 200):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), len(times), half_spread(times)


def graph_ms(variant, batch):
    """The same step captured once in a CUDA graph and replayed (what a captured training step
    sees: no Python, no launch gaps)."""
    body = step_fn(variant, batch)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        body()
    return median_ms(g.replay)


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


# What the CUDA runtime and driver name a kernel launch in the profiler's host events
# (cuBLAS and torch's own kernels go through the runtime, Triton's launcher through the driver).
LAUNCH_EVENTS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


def host_profile(variant, batch, trace_dir=None, calls=5, top=15):
    """Where an eager call's host time goes (stage 7). An eager fused call at B = 16 took
    1.52 ms on an H200 against 0.46 ms replayed from a CUDA graph (commit fcd82da): about 1 ms
    of host work per call, of which a CPU profile with the launches stubbed accounts for half
    (a 2-core CPU, B = 1: 0.19 ms forward, 0.46 ms backward, ~0.15 ms of it the weight-gradient
    products computed there). Returns the host time per call, forward
    and whole (each from an idle device, so the host's enqueue alone; medians, no profiler),
    the device's kernel time per call, launches per call, and the host ops by self time
    (under the profiler, which inflates each); writes a TensorBoard trace to trace_dir."""
    step = step_fn(variant, batch)
    fwd = step_fn(variant, batch, forward_only=True)
    for _ in range(3):
        step()
        fwd()

    def host_us(fn, n=30):
        times = []
        for _ in range(n):
            _sync()
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        _sync()
        return statistics.median(times)

    res = {"variant": variant, "batch": batch, "host_us": host_us(step),
           "host_fwd_us": host_us(fwd)}
    acts = [torch.profiler.ProfilerActivity.CPU]
    if DEV == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    _sync()
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(calls):
            step()
        _sync()
    ops = prof.key_averages()
    device = [e for e in ops if e.device_type == torch.autograd.DeviceType.CUDA]
    res["device_us"] = sum(e.self_device_time_total for e in device) / calls
    res["launches"] = sum(e.count for e in ops if e.key in LAUNCH_EVENTS) / calls
    host = sorted((e for e in ops if e.device_type == torch.autograd.DeviceType.CPU
                   and e.key not in ("cudaDeviceSynchronize",)),
                  key=lambda e: e.self_cpu_time_total, reverse=True)
    res["profiled_host_us"] = sum(e.self_cpu_time_total for e in host) / calls
    res["top_host_ops"] = [{"op": e.key, "calls": e.count / calls,
                            "self_us": e.self_cpu_time_total / calls} for e in host[:top]]
    if trace_dir:
        os.makedirs(trace_dir, exist_ok=True)
        # the profiler plugin's naming (torch.profiler.tensorboard_trace_handler's)
        res["trace"] = f"leapfrog_{variant}_B{batch}.pt.trace.json"
        prof.export_chrome_trace(os.path.join(trace_dir, res["trace"]))
    return res


def matmul_peak(tf32, dtype=torch.float32):
    # restored even if the product fails: a TF32 setting left behind would time every fp32
    # row after it on TF32
    with fused._fp32_matmul("tf32" if tf32 else "ieee"):
        n = 8192 if DEV == "cuda" else 256
        a, b = (torch.randn(n, n, device=DEV).to(dtype) for _ in range(2))
        ms = median_ms(lambda: a @ b, min_reps=5, max_s=1.0)[0]
    return 2 * n ** 3 / (ms * 1e-3)


# What warm() compiles: "fused" runs the latency kernels at these batches up to LATENCY_MAX_ROWS
# (fused_latency's too: one job serves both), fused_tile the streamed ieee ones. At most 16
# jobs: one round of 16 processes.
WARM_JOBS = [(v, b) for v in ("fused", "fused_tile", "fused_tile_tf32x3",
                              "fused_tile_bf16x3", "fused_throughput") for b in WARM_BATCHES]
# timed at B = 65536 (and 1024) only, checked at B = 64
WARM_JOBS += [(v, WARM_BATCHES[0]) for v in ("fused_throughput_bwd32", "fused_throughput_merged",
                                             "fused_tile_tf32")]
WARM_JOBS += [(v, WARM_BATCHES[0]) for v in ("fused_latency_w4", "fused_latency_w16")]  # B 16, 64
# above LATENCY_MAX_ROWS "fused" runs other kernels: the latency ones there need their own job
WARM_JOBS += [("fused_latency", b) for b in WARM_BATCHES if b > fused.LATENCY_MAX_ROWS]


def warm(budget, smoke_run):
    """Run WARM_JOBS, each in its own process, up to 16 at a time, so that Triton compiles
    every fused kernel the stages launch (its cache is on disk and written atomically, so the
    processes share it). Returns (jobs, failures, slow): `slow`, the variants still compiling
    at the limit, which the stages then skip (compiled inside a timed stage they would spend
    its budget). Under --smoke one job only: it checks the mechanism."""
    todo = list(WARM_JOBS)
    if smoke_run:   # at the smoke shapes' batch: 64 rows through the interpreter take ~20 s
        todo = [(todo[0][0], STAGES["train"][0])]
    limit = max(30.0, min(300.0, budget.left() - 120))
    cmd = [sys.executable, os.path.abspath(__file__)] + (["--smoke"] if smoke_run else [])
    running, failures, slow, t_end = [], [], set(), time.monotonic() + limit
    pending = list(todo)
    while pending or running:
        while pending and len(running) < min(16, os.cpu_count() or 1):
            v, b = pending.pop(0)
            # a session of its own: a kill at the limit takes its ptxas children too, which
            # would otherwise compile on beside the timed stages
            # stderr to a file: a pipe read only at exit would block a child that wrote more
            # than its buffer (warnings, a long traceback) until the limit killed it
            err = tempfile.TemporaryFile("w+")
            running.append((v, b, err, subprocess.Popen(cmd + ["--warm-one", v, str(b)],
                                                        stdout=subprocess.DEVNULL, stderr=err,
                                                        text=True, start_new_session=True)))
        time.sleep(0.2)
        for job in list(running):
            v, b, err, proc = job
            if proc.poll() is None and time.monotonic() < t_end:
                continue
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                failures.append(f"{v}/B{b}: still compiling after {limit:.0f} s")
                slow.add(v)
            elif proc.returncode:
                err.seek(0)
                failures.append(f"{v}/B{b}: " + err.read().strip()[-200:])
            proc.wait()
            err.close()
            running.remove(job)
    return len(todo), failures, slow


def cross_complete(rows):
    """Whether the crossover was measured at every one of its batches: only then does it set
    LATENCY_MAX_ROWS."""
    return all(any(r.get("variant") == v and r.get("batch") == b and "ms" in r for r in rows)
               for b in STAGES["cross"] for v in ("fused_latency", "fused_tile"))


def worst_error(errs):
    """The largest of compare_to_reference's errors; NaN if any is (max() would pass it over
    unless it came first)."""
    vals = [float(e) for e in errs.values()]
    return float("nan") if any(math.isnan(e) for e in vals) else max(vals)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=330)
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, Triton interpreter, tiny shapes: checks the script, not speed")
    ap.add_argument("--warm-one", nargs=2, metavar=("VARIANT", "BATCH"),
                    help="run one forward+backward of VARIANT at BATCH and exit (warm-up job)")
    ap.add_argument("--no-warm", action="store_true", help="skip the parallel compile warm-up")
    ap.add_argument("--recommend", metavar="JSON",
                    help="print the dispatch table that a run's leapfrog_table.json says, and "
                         "exit (for a run cut short before its last line; no GPU needed)")
    a = ap.parse_args(argv)
    if a.recommend:
        try:
            with open(a.recommend) as f:
                saved = json.load(f)
            rec = recommend(saved["rows"], saved["errors"], cross_complete(saved["rows"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            ap.exit(2, f"{ap.prog}: error: {a.recommend}: not a leapfrog_table.json ({err!r})\n")
        print("dispatch table, as measured:", json.dumps(rec))
        print("kernels/leapfrog/fused.py, as measured:", json.dumps(fused_py(rec)))
        return rec
    if a.smoke:
        smoke()
    elif not torch.cuda.is_available():
        ap.exit(2, f"{ap.prog}: error: the leapfrog table times CUDA kernels and this machine "
                   f"has no CUDA device; --smoke checks the script on CPU\n")
    if a.warm_one:
        step_fn(a.warm_one[0], int(a.warm_one[1]))()
        return
    budget = Budget(a.budget_s)
    out = {"env": environment(DEV), "rows": [], "errors": {}, "peaks": {}}
    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    print(" ".join(f"{k} {v}" for k, v in out["env"].items())
          + ("  (set HGAN_COMMIT: this tree has no git)" if out["env"]["commit"] == "unknown"
             else ""), flush=True)

    def save():
        if out_dir:
            write_json(os.path.join(out_dir, "leapfrog_table.json"), out)
            # the device's results file (section leapfrog_table) comes back beside it, ready
            # for `python bench/_results.py merge`
            device_json = os.path.join(RESULTS_DIR, out["env"]["device"] + ".json")
            if DEV == "cuda" and os.path.exists(device_json):
                shutil.copy(device_json, out_dir)

    def keep(name, payload):
        """An entry of the device's results file beside the rows (a GPU run only)."""
        if DEV == "cuda":
            record("leapfrog_table", name, payload, "cuda")

    def row(variant, batch, ms, reps, spread, graph=False, forward_only=False):
        flops = leapfrog_flops(batch, FRAMES, K, WIDTHS, backward=not forward_only)
        tag = " (graph)" if graph else " (fwd)" if forward_only else ""
        r = {"variant": variant + tag, "batch": batch, "ms": ms, "reps": reps,
             "spread": spread, "tflops": flops / (ms * 1e-3) / 1e12}
        out["rows"].append(r)
        if DEV == "cuda":
            record("leapfrog_table", f"{r['variant']}/B{batch}", r, "cuda")
        print(f"  {r['variant']:<24} B={batch:<6} {ms:9.3f} ms  {r['tflops']:6.2f} TFLOP/s  "
              f"(halves {100 * spread:.1f}% apart)", flush=True)
        save()

    def timed(variant, batch, graph=False, forward_only=False):
        if budget.left() < 15:
            print(f"  skipped {variant} B={batch}: budget spent", flush=True)
            return
        if variant in slow:
            print(f"  skipped {variant} B={batch}: not compiled in the warm-up", flush=True)
            out["rows"].append({"variant": variant, "batch": batch,
                                "failed": "not compiled in the warm-up"})
            save()
            return
        if graph and DEV != "cuda":
            return
        try:
            ms, reps, spread = (graph_ms(variant, batch) if graph else
                                median_ms(step_fn(variant, batch, forward_only)))
            row(variant, batch, ms, reps, spread, graph, forward_only)
        except Exception as err:  # noqa: BLE001 - a failing variant is a result, not a stop
            out["rows"].append({"variant": variant, "batch": batch, "failed": repr(err)[:300]})
            print(f"  {variant} B={batch} failed: {err!r}"[:300], flush=True)
            save()

    slow = set()
    if not a.no_warm:
        t0 = time.monotonic()
        n, failures, slow = warm(budget, a.smoke)
        out["warm"] = {"kernels": n, "seconds": time.monotonic() - t0, "failures": failures}
        print(f"0. compiled {n} variant x batch jobs in parallel in "
              f"{out['warm']['seconds']:.0f} s; failures: {failures or 'none'}", flush=True)
        save()

    def card(when):
        """The card's clocks, power and temperature (a GPU run only): before the timed
        stages, after the heaviest (B = 65536) and at the end."""
        if DEV == "cuda":
            out.setdefault("gpu_state", {})[when] = state = gpu_state()
            print(f"  {gpu_state_line(state)} ({when})", flush=True)

    card("start")
    print("1. matmul peaks", flush=True)
    out["peaks"] = {"fp32": matmul_peak(False), "tf32": matmul_peak(True),
                    "bf16": matmul_peak(False, torch.bfloat16)}
    print("  " + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in out["peaks"].items()),
          flush=True)
    keep("matmul_peaks", {f"{k}_flops_per_s": v for k, v in out["peaks"].items()})
    save()

    print("2. errors vs float64 (max over outputs and gradients)", flush=True)
    for batch in STAGES["errors"]:
        for variant in ERROR_VARIANTS + (ERROR_VARIANTS_FIRST
                                         if batch == STAGES["errors"][0] else ()):
            if budget.left() < 60:
                break
            backend, precision, layout = VARIANTS[variant]
            q0, p0, *wb = inputs(batch, seed=batch)
            if variant in slow:   # compiled here, it would spend the budget of the stages
                worst = "not compiled in the warm-up"
            else:
                try:
                    with forced(layout):
                        errs = compare_to_reference(q0, p0, wb[:3], wb[3:], 0.05, FRAMES,
                                                    "softplus", backend, precision=precision)
                    worst = worst_error(errs)
                except Exception as err:  # noqa: BLE001
                    worst = repr(err)[:200]
            out["errors"][f"{variant}/B{batch}"] = worst
            keep(f"error {variant}/B{batch}", {"rel_err_vs_float64": worst})
            print(f"  {variant:<20} B={batch:<5} {worst}", flush=True)
            save()

    print("3. training batches", flush=True)
    for batch in STAGES["train"]:
        for variant in ("reference", "analytic", "fused", "fused_latency", "fused_tile",
                        "fused_latency_w4", "fused_latency_w16"):
            timed(variant, batch)
        timed("fused", batch, graph=True)
        timed("fused", batch, forward_only=True)     # the training step's "motion" share
    print("4. B = 65536", flush=True)
    # fused_latency at 65536 lifts the latency layout's 1 GB scratch cap (12.3 GB here): the
    # latency model says a row per SM at FMA rate may beat the tile layouts even there.
    for variant in ("reference", "fused_throughput", "fused", "fused_throughput_merged",
                    "fused_tile_tf32x3", "fused_tile_bf16x3", "fused_throughput_bwd32",
                    "fused_tile_tf32", "fused_latency"):
        for batch in STAGES["big"]:
            timed(variant, batch)
    # the forward alone: the backward's share (total - forward) against its model, spills
    # and all (bench/ptxas_report.py --sass; docs/measurements.md)
    for variant in ("fused_throughput", "fused_throughput_merged", "fused"):
        for batch in STAGES["big"]:
            timed(variant, batch, forward_only=True)
    card("after B = 65536")
    print("5. B = 1024", flush=True)
    for variant in ("reference", "analytic", "fused", "fused_latency", "fused_tile",
                    "fused_throughput", "fused_throughput_merged"):
        for batch in STAGES["mid"]:
            timed(variant, batch)
    print("6. latency / tile crossover", flush=True)
    for batch in STAGES["cross"]:
        for variant in ("fused_latency", "fused_throughput", "fused_tile", "fused_tile_tf32x3",
                        "fused_tile_bf16x3"):
            timed(variant, batch)
    print("7. host cost of an eager call", flush=True)
    if budget.left() >= 15:
        try:
            trace_dir = os.path.join(out_dir, "host_profile") if out_dir else None
            out["host"] = h = host_profile("fused", STAGES["train"][0], trace_dir)
            keep("host_profile", h)
            print(f"  fused B={h['batch']}: host {h['host_us']:.0f} us per call (forward "
                  f"{h['host_fwd_us']:.0f}), device {h['device_us']:.0f} us, "
                  f"{h['launches']:.0f} launches; top host ops (profiled): "
                  + ", ".join(f"{o['op']} {o['self_us']:.0f}" for o in h["top_host_ops"][:6]),
                  flush=True)
        except Exception as err:  # noqa: BLE001 - a diagnostic, not a stop
            out["host"] = {"failed": repr(err)[:300]}
            print(f"  host profile failed: {err!r}"[:300], flush=True)
        save()
    else:
        print("  skipped: budget spent", flush=True)

    card("end")
    out["cross_complete"] = cross_complete(out["rows"])
    print("\nvariant                   B        ms      x eager   TFLOP/s  halves  (peaks: "
          + ", ".join(f"{k} {v / 1e12:.0f}" for k, v in out["peaks"].items()) + ")")
    eager = {r["batch"]: r["ms"] for r in out["rows"]
             if r.get("variant") == "reference" and "ms" in r}
    for r in out["rows"]:
        if "ms" not in r:
            print(f"{r['variant']:<24} {r['batch']:<7} failed")
            continue
        # a forward alone has no eager twin in the table: no ratio
        base = None if r["variant"].endswith("(fwd)") else eager.get(r["batch"])
        ratio = f"{base / r['ms']:8.1f}x" if base else f"{'-':>9}"   # eager not timed there
        print(f"{r['variant']:<24} {r['batch']:<7} {r['ms']:8.3f}  {ratio}  "
              f"{r['tflops']:7.2f}  {100 * r.get('spread', 0.0):5.1f}%")
    print("errors:", json.dumps(out["errors"]))
    out["recommend"] = recommend(out["rows"], out["errors"], out["cross_complete"])
    out["fused_py"] = fused_py(out["recommend"])
    keep("dispatch_table_as_measured", dict(out["recommend"]))
    keep("fused_py_as_measured", dict(out["fused_py"]))
    print("dispatch table, as measured:" if DEV == "cuda" else
          "dispatch table (--smoke: interpreter timings, which say nothing of a GPU):",
          json.dumps(out["recommend"]))
    print("kernels/leapfrog/fused.py, as measured:", json.dumps(out["fused_py"]))
    save()


# A change of the dispatch table counts only when its gain is larger than the larger
# half_spread of the two rows compared and at least this (trainstep_table.py's floor: one
# run's halves understate the run-to-run spread). Within it the table keeps what it has.
NOISE_FLOOR = 0.02


def recommend(rows, errors, cross_complete=True):
    """What the measured rows say the dispatch table (kernels/leapfrog/fused.py) should be:
    {"latency_max_rows": the largest batch up to which the latency layout kept its place
    against the tile layout (ieee, the default precision), "split_latency_max_rows": the same
    against the throughput layout (bf16x3), up to latency_max_rows (where a precision runs
    the throughput layout, the latency layout stops there), "latency_warps": 4, 8 or 16, by
    their time summed over the training batches, "bf16x3_above_latency": whether the
    throughput layout (bf16x3) beat the default dispatch at every batch above that (whether
    that opt-in pays), "split_above_latency": which of the fp32-faithful splits
    (DEFAULT_SPLITS: tf32x3 in the tile layout, bf16x3 in the throughput and the tile layouts)
    beat the default dispatch at every batch above that and is fastest at the largest batch
    they share, or None, "throughput_bwd_block": 16 or 32, "throughput_merged": whether
    the merged kernels run (their backward at 16 rows)}. The throughput layout runs as the
    table has it (the "fused_throughput" row), with its backward at 32-row blocks, or merged,
    whichever beats the others accurately: merged at every batch it and the table's share
    (65536 and 1024), the 32-row backward at the largest. The default dispatch at a batch
    above the latency regime is the ieee tile layout: its "fused_tile" row, or where none was
    timed the "fused" row (at 65536, where "fused" runs that layout).

    "Beat" means faster by more than the noise (`NOISE_FLOOR`, or the larger `half_spread`
    of the two rows): within it the table keeps what it has now. So the latency layout keeps
    a batch up to today's LATENCY_MAX_ROWS unless the tile layout beats it there, and takes
    one above only by beating the tile layout; the first batch it does not keep ends its
    regime. The table's warps ("fused_latency" runs them) and backward row block, ieee above
    the latency regime (no split) and the first listed of DEFAULT_SPLITS stay unless another
    beats them.
    Only a variant within 1e-4 of float64 at every batch stage 2 checks it at (`accurate`; a
    failed, missing or NaN check is not) is picked: latency_max_rows is 0 when the latency
    layout is not, a warp count, the 32-row backward or a split that is not is passed over,
    and bf16x3_above_latency is False. A key is absent when its rows are;
    "latency_max_rows" also when the crossover stage was cut short (`cross_complete`), and
    "split_latency_max_rows" with it, or when the throughput layout is not accurate or beat
    the latency layout already at the smallest crossover batch (its switch point is then
    below the batches timed: time smaller ones before moving it)."""
    ms = {(r["variant"], r["batch"]): r["ms"] for r in rows if "ms" in r}
    spread = {(r["variant"], r["batch"]): r.get("spread", 0.0) for r in rows if "ms" in r}

    def accurate(variant):
        errs = [errors.get(f"{variant}/B{b}") for b in error_batches(variant)]
        return all(isinstance(e, float) and e <= 1e-4 for e in errs)   # NaN compares False

    def beats(new_ms, old_ms, keys):
        margin = max([NOISE_FLOOR] + [spread[k] for k in keys])
        return new_ms < old_ms * (1 - margin)

    def beats_row(new, old):
        return beats(ms[new], ms[old], (new, old))

    rec, split_rows = {}, None
    batches = sorted({b for v, b in ms if v == "fused_latency" and ("fused_tile", b) in ms})
    kept = [b for b in batches
            if (not beats_row(("fused_tile", b), ("fused_latency", b))
                if b <= fused.LATENCY_MAX_ROWS else
                beats_row(("fused_latency", b), ("fused_tile", b)))]
    if batches and cross_complete:
        # the first batch lost ends the latency regime: a later win is noise around the
        # crossover
        first_loss = min([b for b in batches if b not in kept], default=None)
        rec["latency_max_rows"] = max([b for b in kept if first_loss is None or b < first_loss],
                                      default=0) if accurate("fused_latency") else 0
        # the same switch against the throughput layout, inside the latency regime: the
        # latency layout keeps a batch unless the throughput layout beats it there
        within = [b for b in batches if ("fused_throughput", b) in ms
                  and b <= rec["latency_max_rows"]]
        lost = [b for b in within if beats_row(("fused_throughput", b), ("fused_latency", b))]
        if within and accurate("fused_throughput") and (not lost or min(lost) > min(within)):
            split_rows = (rec["latency_max_rows"] if not lost else
                          max(b for b in within if b < min(lost)))
    train = sorted({b for v, b in ms if v == "fused_latency"} & set(STAGES["train"]))
    # "fused_latency" runs the table's warps at the benchmark's widths (8 today)
    table_warps = fused._latency_warps(*(fused._pow2(w) for w in WIDTHS))
    by_warps = {4: "fused_latency_w4", 16: "fused_latency_w16", table_warps: "fused_latency"}
    sums = {w: sum(ms.get((v, b), float("inf")) for b in train)
            for w, v in by_warps.items() if accurate(v)}
    sums = {w: t for w, t in sums.items() if t < float("inf")}
    if train and sums:
        # the table's unless others beat it; then the fastest of those
        now = table_warps if table_warps in sums else min(sums, key=sums.get)
        beaters = [w for w in sums if w != now and beats(
            sums[w], sums[now], [(by_warps[x], b) for x in (w, now) for b in train])]
        rec["latency_warps"] = min(beaters, key=sums.get) if beaters else now
    if split_rows is not None:   # (after the warps: the keys in the order results store them)
        rec["split_latency_max_rows"] = split_rows
    # The default dispatch above the latency regime at batch b, once this table is applied:
    # the ieee tile layout, "fused_tile" where a stage timed it (5, 6: "fused" is not timed
    # at the crossover batches, and at 1024 it is the latency layout of today's table), else
    # "fused", which runs that layout at 65536 (stage 4).
    default_row = {b: ("fused_tile", b) if ("fused_tile", b) in ms else ("fused", b)
                   for _, b in ms if ("fused", b) in ms or ("fused_tile", b) in ms}
    # Every split that is accurate and beats the default at each batch above the latency
    # regime where both ran; the fastest of them at the largest batch they all ran.
    over = {v: {b for w, b in ms if w == v and b > rec.get("latency_max_rows", 0)
                and b in default_row} for v in SPLITS}
    faster = {v: bs for v, bs in over.items()
              if bs and accurate(v) and all(beats_row((v, b), default_row[b]) for b in bs)}
    if over["fused_throughput"]:
        rec["bf16x3_above_latency"] = "fused_throughput" in faster
    default = [v for v in DEFAULT_SPLITS if v in faster]
    if any(over[v] for v in DEFAULT_SPLITS):
        shared = max(set.intersection(*(faster[v] for v in default)), default=None) \
            if default else None
        best = None
        if shared is not None:
            # the first listed unless others beat it there; then the fastest of those
            beaters = [v for v in default[1:] if beats_row((v, shared), (default[0], shared))]
            best = min(beaters, key=lambda v: ms[v, shared]) if beaters else default[0]
        rec["split_above_latency"] = best
    # "fused_throughput" runs the table's throughput kernels (not merged, backward at 16
    # rows, today)
    shared = {v: sorted(b for w, b in ms if w == v and ("fused_throughput", b) in ms)
              for v in ("fused_throughput_bwd32", "fused_throughput_merged")}
    wins = {v: bool(bs) and accurate(v) and all(beats_row((v, b), ("fused_throughput", b))
                                                for b in (bs[-1:] if v.endswith("32") else bs))
            for v, bs in shared.items()}
    if wins["fused_throughput_bwd32"] and wins["fused_throughput_merged"]:
        # both beat the table's: the faster of the two at the largest batch they share
        b = max(set(shared["fused_throughput_bwd32"]) & set(shared["fused_throughput_merged"]),
                default=None)
        loser = ("fused_throughput_bwd32" if b is None or ms["fused_throughput_merged", b]
                 <= ms["fused_throughput_bwd32", b] else "fused_throughput_merged")
        wins[loser] = False
    if shared["fused_throughput_bwd32"] or wins["fused_throughput_merged"]:
        rec["throughput_bwd_block"] = (32 if wins["fused_throughput_bwd32"] else
                                       16 if wins["fused_throughput_merged"]
                                       else fused.THROUGHPUT_BLOCK_B["bwd"])
    if shared["fused_throughput_merged"]:
        # (once applied, the table's row is the merged one: kept unless the 32-row one wins)
        rec["throughput_merged"] = (wins["fused_throughput_merged"] or (
            fused.THROUGHPUT_MERGED and not wins["fused_throughput_bwd32"]))
    return rec


# Each split `recommend` may name as the default above the latency regime, as fused.py runs
# it by default: (SPLIT_ABOVE_LATENCY, whether bf16x3 keeps the throughput layout; None: as
# bf16x3_above_latency says).
SPLIT_SETTINGS = {None: ("ieee", None), "fused_tile_tf32x3": ("tf32x3", None),
                  "fused_throughput": ("bf16x3", True), "fused_tile_bf16x3": ("bf16x3", False)}


def fused_py(rec):
    """The entries of kernels/leapfrog/fused.py's table that apply `recommend`'s answer, by
    name ("_latency_warps(width >= 64)": what that function returns for the benchmark's
    widths). An entry is absent when its measurement is."""
    out = {}
    if "latency_max_rows" in rec:
        out["LATENCY_MAX_ROWS"] = rec["latency_max_rows"]
        # without its own measurement the split's switch is the latency regime's end
        out["SPLIT_LATENCY_MAX_ROWS"] = rec.get("split_latency_max_rows", rec["latency_max_rows"])
    if "latency_warps" in rec:
        out["_latency_warps(width >= 64)"] = rec["latency_warps"]
    split = rec.get("split_above_latency")
    if "split_above_latency" in rec:
        out["SPLIT_ABOVE_LATENCY"] = SPLIT_SETTINGS[split][0]
    keep = SPLIT_SETTINGS[split][1] if split in SPLIT_SETTINGS else None
    if keep is None:
        keep = rec.get("bf16x3_above_latency")
    if keep is not None:   # a layout that loses goes (the issue): bf16x3 then runs tiles
        out["THROUGHPUT_PRECISIONS"] = ("bf16x3",) if keep else ()
    if "throughput_bwd_block" in rec:
        out["THROUGHPUT_BLOCK_B"] = {"fwd": fused.THROUGHPUT_BLOCK_B["fwd"],
                                     "bwd": rec["throughput_bwd_block"]}
    if "throughput_merged" in rec:
        out["THROUGHPUT_MERGED"] = rec["throughput_merged"]
    return out


if __name__ == "__main__":
    main()
