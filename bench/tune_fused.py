"""Sweep the fused leapfrog kernels' row block, warps, layout and dot precision on a GPU.

    PYTHONPATH=. python3 bench/tune_fused.py                  # B = 64, 1024, 65536 on CUDA
    PYTHONPATH=. python3 bench/tune_fused.py --smoke          # CPU, Triton interpreter, tiny

For each batch and each (BLOCK_B, num_warps, chunk, precision) it runs the fused forward +
backward of the benchmark shape (frames 16, k 10, widths 100, 100, scheme order2), measures
the largest relative error of trajectory and every gradient against the analytic backend on
the same inputs (above 1e-4 the config is marked wrong and never chosen: that is how the
tf32 precisions' error on a GPU gets measured), and times it with triton.testing.do_bench
(median, ms). It prints a table, records the sweep under section "fused_tune" of
bench/results/<device>.json, and names the fastest correct config per batch: copy those into
fused._block_b / fused._num_warps / fused._chunk. chunk 0 is the register-resident layout
(tile.py), chunk > 0 the streamed one (streamed.py) with that many hidden units per chunk.
The sweep is of the tile layouts only (it forces them at every batch); the latency layout and
the batch at which the dispatch table switches to the tile layouts are timed by
bench/gpu/leapfrog_table.py.
A config that fails to compile (too many registers or too much shared memory) is recorded
with its error.

Compiling is the slow part on a GPU machine: at width 128 one resident-layout backward takes
about a minute of single-threaded ptxas (triton 3.6, sm_90; a streamed one about 10 s), and
the default grid has 24 configs. So on CUDA every config is first compiled in parallel worker
processes (--jobs; they fill Triton's on-disk cache for exactly the sweep's specialisation:
every batch is a multiple of 16, k = 10, frames = 16). A config still compiling after
--compile-timeout (240 s) is skipped with that reason: BLOCK_B >= 64 at width 128 took over
10 minutes in triton's frontend alone on a CPU here. The sweep is recorded after every row,
so a run cut off by a time limit keeps what it measured ("complete": false).
"""
import argparse
import concurrent.futures
import math
import multiprocessing
import os
import sys

import torch

if "--smoke" in sys.argv and not torch.cuda.is_available():
    # Before triton is imported: @triton.jit picks the interpreter at decoration time.
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import record  # noqa: E402

from hgan.kernels import PRECISIONS  # noqa: E402
from hgan.kernels.leapfrog import fused  # noqa: E402
from hgan.kernels.leapfrog.check import random_mlp, rel_err, rollout_and_grads  # noqa: E402

FRAMES, K, WIDTHS = 16, 10, (100, 100)


def _run(backend, q0, p0, w, b, cot, precision="ieee", frames=None):
    """Trajectory and every gradient of the benchmark rollout, as one list."""
    outs, grads = rollout_and_grads(q0, p0, w, b, 0.05, frames or FRAMES, "softplus", backend,
                                    cot, "order2", precision)
    return outs + grads


def _use(cfg):
    """Point the fused host code at one (BLOCK_B, num_warps, chunk, precision) config; returns
    the precision, which goes to leapfrog() itself."""
    bb, nw, ch, prec = cfg
    fused.LATENCY_MAX_ROWS = 0                # the tile layouts at every batch,
    fused.THROUGHPUT_PRECISIONS = ()          # bf16x3 included (throughput.py is not swept)
    fused._block_b = lambda h1, h2: bb
    fused._num_warps = lambda h1, h2: nw
    fused._chunk = lambda h1, h2: ch
    return prec


def _compile_one(job):
    """Worker: run one config once so that Triton compiles (and caches on disk) its forward
    and backward kernels. Returns an error text or None."""
    cfg, device, frames = job
    prec = _use(cfg)
    gen = torch.Generator().manual_seed(0)
    w, b = random_mlp(K, WIDTHS, device=device, generator=gen)
    # 64 rows: the same specialisation (a multiple of 16) as every batch of the sweep.
    q0, p0 = (torch.randn(64, K, generator=gen).to(device) for _ in range(2))
    cot = [torch.randn(s, generator=gen).to(device)
           for s in [(64, frames, K), (64, frames, K), (64, frames - 1, K)]]
    try:
        _run("fused", q0, p0, w, b, cot, prec, frames)
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as err:  # noqa: BLE001 - the sweep records it
        return f"{type(err).__name__}: {str(err)[:200]}"
    return None


def configs(blocks, warps, chunks, precisions=("ieee",)):
    return [(bb, nw, ch, pr) for pr in precisions for ch in chunks for bb in blocks
            for nw in warps]


def precompile(cfgs, jobs, device="cuda", timeout=None):
    """Compile every (BLOCK_B, num_warps, chunk, precision) config in `jobs` processes (spawned:
    CUDA cannot be forked). Returns {config: None, or why the config cannot run}. A config
    still compiling after `timeout` seconds is given up (its worker is killed): the sweep
    skips it rather than wait for it serially."""
    ctx = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max(1, min(jobs, len(cfgs))), mp_context=ctx)
    futures = {pool.submit(_compile_one, (cfg, device, FRAMES)): cfg for cfg in cfgs}
    done, pending = concurrent.futures.wait(futures, timeout=timeout)
    if pending:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
    pool.shutdown(wait=True, cancel_futures=True)
    out = {}
    for fut, cfg in futures.items():
        if fut not in done:
            out[cfg] = f"compile did not finish within {timeout:.0f} s"
        elif fut.exception() is not None:
            out[cfg] = f"{type(fut.exception()).__name__}: {str(fut.exception())[:200]}"
        else:
            out[cfg] = fut.result()
        print(f"compiled BLOCK_B={cfg[0]:>4}  warps={cfg[1]}  chunk={cfg[2]:>3}  {cfg[3]:<6}  "
              f"{out[cfg] or 'ok'}", flush=True)
    return out


def sweep(batches, cfgs, device, timed, on_row=None, skip=None):
    """cfgs: (BLOCK_B, num_warps, chunk, precision) tuples; skip: {config: reason} of configs
    not to run (see precompile)."""
    skip = skip or {}
    saved = (fused._block_b, fused._num_warps, fused._chunk, fused.LATENCY_MAX_ROWS,
             fused.THROUGHPUT_PRECISIONS)
    rows = []
    try:
        for batch in batches:
            gen = torch.Generator().manual_seed(batch)
            w, b = random_mlp(K, WIDTHS, device=device, generator=gen)
            q0 = torch.randn(batch, K, generator=gen).to(device)
            p0 = torch.randn(batch, K, generator=gen).to(device)
            shapes = [(batch, FRAMES, K), (batch, FRAMES, K), (batch, FRAMES - 1, K)]
            cot = [torch.randn(s, generator=gen).to(device) for s in shapes]
            ref = _run("analytic", q0, p0, w, b, cot)
            for cfg in cfgs:
                prec = _use(cfg)
                row = {"batch": batch, "block_b": cfg[0], "num_warps": cfg[1], "chunk": cfg[2],
                       "precision": prec}
                if cfg in skip:
                    row.update(error=skip[cfg], correct=False)
                    rows.append(row)
                    print(_fmt(row), flush=True)
                    continue
                try:
                    got = _run("fused", q0, p0, w, b, cot, prec)
                    errs = [rel_err(x, y) for x, y in zip(got, ref)]
                    # NaN anywhere is the error: max() keeps NaN only where it comes first
                    row["max_rel_err"] = (math.nan if any(math.isnan(e) for e in errs)
                                          else max(errs))
                    row["correct"] = row["max_rel_err"] <= 1e-4
                    # A wrong config is timed too (if finite): tf32's speed is worth knowing
                    # even where its error rules it out as a default.
                    if timed and math.isfinite(row["max_rel_err"]):
                        import triton.testing
                        row["median_ms"] = triton.testing.do_bench(
                            lambda: _run("fused", q0, p0, w, b, cot, prec), warmup=50,
                            rep=300, return_mode="median")
                except Exception as err:  # noqa: BLE001 - a config that cannot compile
                    row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
                    row["correct"] = False
                rows.append(row)
                print(_fmt(row), flush=True)
                if on_row is not None:
                    on_row(rows)
    finally:
        (fused._block_b, fused._num_warps, fused._chunk, fused.LATENCY_MAX_ROWS,
         fused.THROUGHPUT_PRECISIONS) = saved
    return rows


def _fmt(row):
    ms = f"{row['median_ms']:9.3f}" if "median_ms" in row else "        -"
    err = f"{row['max_rel_err']:.1e}" if "max_rel_err" in row else row.get("error", "")[:40]
    return f"B={row['batch']:>6}  BLOCK_B={row['block_b']:>4}  warps={row['num_warps']}  " \
           f"chunk={row['chunk']:>3}  {row['precision']:<6}  ms={ms}  err={err}"


def best(rows):
    out = {}
    for r in rows:
        if r.get("correct") and "median_ms" in r:
            cur = out.get(r["batch"])
            if cur is None or r["median_ms"] < cur["median_ms"]:
                out[r["batch"]] = r
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="CPU + TRITON_INTERPRET: one tiny batch, correctness only")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 1024, 65536])
    ap.add_argument("--blocks", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--chunks", type=int, nargs="+", default=[16, 32],
                    help="hidden units per chunk of the streamed layout; 0 = register-resident "
                         "(left out by default: at the benchmark width it spills 63 KB per "
                         "thread and takes minutes to compile)")
    ap.add_argument("--precisions", nargs="+", default=["ieee", "tf32x3", "tf32", "bf16x3"],
                    choices=list(PRECISIONS), help="dot precisions (leapfrog's precision=)")
    ap.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1),
                    help="parallel compile processes before the sweep (1: compile in the sweep)")
    ap.add_argument("--compile-timeout", type=float, default=240.0,
                    help="seconds the parallel compile may take; slower configs are skipped")
    a = ap.parse_args(argv)
    if a.smoke:
        rows = sweep([19], configs([16, 32], [4], [0, 32]), "cpu", timed=False)
        assert all(r["correct"] for r in rows), rows
        return rows
    if not torch.cuda.is_available():
        raise SystemExit("tune_fused.py times CUDA kernels; use --smoke on a CPU")
    cfgs = configs(a.blocks, a.warps, a.chunks, a.precisions)
    skip = {}
    if a.jobs > 1:
        compiled = precompile(cfgs, a.jobs, timeout=a.compile_timeout)
        skip = {cfg: err for cfg, err in compiled.items() if err}

    def save(rows, complete=False):
        record("fused_tune", "sweep", {
            "shape": {"frames": FRAMES, "k": K, "widths": list(WIDTHS)}, "rows": rows,
            "fastest": {str(k): v for k, v in best(rows).items()}, "complete": complete},
            "cuda")

    rows = sweep(a.batches, cfgs, "cuda", timed=True, on_row=save, skip=skip)
    save(rows, complete=True)
    for batch, r in sorted(best(rows).items()):
        print(f"fastest at B={batch}: BLOCK_B={r['block_b']} num_warps={r['num_warps']} "
              f"chunk={r['chunk']} precision={r['precision']} ({r['median_ms']:.3f} ms)")
    return rows


if __name__ == "__main__":
    main()
