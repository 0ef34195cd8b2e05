"""Compile the fused leapfrog kernels for a GPU that is not here, and report what ptxas says.

    PYTHONPATH=. python bench/ptxas_report.py             # the default grid, sm_90 (H100/H200)
    python bench/ptxas_report.py --widths 128 --chunks 0 32 --warps 8 --arch 90
    python bench/ptxas_report.py --save   # merged into bench/results/ptxas-sm_90.json

No GPU is needed: Triton lowers each kernel to PTX for the target and assembles it with the
ptxas that ships in the triton wheel; the report is that ptxas run's own -v log. Per kernel it reports
registers per thread, spill stores and loads, stack frame, the shared memory Triton asks for,
and the compile time. These are no timings, but they are how a layout goes wrong on a real
GPU: a kernel that spills keeps its working set in local memory, and one that asks for more
shared memory than the device has (227 KB on an H100) fails at launch.

Must run without TRITON_INTERPRET (the interpreter replaces the kernels' compiled form).
"""
import argparse
import atexit
import contextlib
import inspect
import io
import os
import re
import shutil
import sys
import tempfile
import time

# A cache hit would skip ptxas, and with it the log this report reads. The cache is this
# run's alone: removed at exit, so repeated reports do not leave compiled kernels behind.
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="ptxas_report_")
atexit.register(shutil.rmtree, os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
from hgan.kernels.leapfrog.dispatch import _interpreting  # noqa: E402  (as Triton reads it)

if _interpreting():
    raise SystemExit("ptxas_report.py compiles real kernels: unset TRITON_INTERPRET")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hgan.kernels.leapfrog import latency, streamed, throughput, tile  # noqa: E402
from sass import sass_loops  # noqa: E402

KP = 16   # k = 10, the benchmark's, pads to 16
STAGES = int(os.environ.get("PTXAS_STAGES", "0"))


# --chunks values that name a layout's module (the others are hidden units per streamed chunk,
# 0 the register-resident tile layout); throughput_merged compiles throughput's with MERGE
LAYOUT_CHUNKS = {"latency": latency, "throughput": throughput, "throughput_merged": throughput}


def _kernel(direction, chunk):
    mod = LAYOUT_CHUNKS.get(chunk) or (streamed if chunk else tile)
    return getattr(mod, f"_leapfrog_{direction}_kernel")


def parse_ptxas(log: str) -> dict:
    """registers, spill_stores, spill_loads, stack (bytes) from `ptxas -v` output."""
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    if not (regs and spill and stack):
        raise ValueError(f"unrecognised ptxas output:\n{log}")
    return {"registers": int(regs.group(1)), "spill_stores": int(spill.group(1)),
            "spill_loads": int(spill.group(2)), "stack": int(stack.group(1))}


def count_mma(ptx: str) -> dict:
    """Matrix instructions in the PTX: wgmma (Hopper's warpgroup tensor-core path, M >= 64
    per warpgroup), the waits that end each wgmma group (Triton waits for every tl.dot's
    group before anything else runs: each is a dependent stage), mma.sync (the older per-warp
    path Triton falls back to for smaller blocks) and fp32 FMAs (FMA-unit products and
    elementwise work)."""
    return {"wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
            "wgmma_waits": len(re.findall(r"wgmma\.wait_group", ptx)),
            "mma_sync": len(re.findall(r"mma\.sync", ptx)),
            "fma_f32": len(re.findall(r"fma\.rn\.f32", ptx))}


def disassemble(cubin: bytes) -> str:
    """SASS of a cubin through the nvdisasm that ships in the triton wheel."""
    import subprocess
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                            "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True,
                              check=True).stdout


def _aligned(kern, sig):
    """The 16-byte alignment a real launch specialises every pointer on (torch allocations
    are 256-byte aligned): without it Triton cannot vectorise loads, and the register layouts
    it picks, hence the report, would not be the ones a GPU runs."""
    names = list(inspect.signature(kern.fn).parameters)
    return {(names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items()
            if t.startswith("*")}


def _compile(kern, sig, constexprs, arch, num_warps, **options):
    """Compile `kern` for sm_<arch> as a launch would (16-byte aligned pointers, fused
    multiply-adds); returns (the compiled kernel, its row fields: shared memory, compile
    time and what ptxas -v reports)."""
    log = io.StringIO()
    triton.knobs.nvidia.dump_ptxas_log = True    # Triton prints its ptxas -v log
    try:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(fn=kern, signature=sig, constexprs=constexprs,
                          attrs=_aligned(kern, sig)),
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": num_warps, "enable_fp_fusion": True, **options})
        seconds = time.perf_counter() - t0
    finally:
        triton.knobs.nvidia.dump_ptxas_log = False
    return compiled, {"shared": compiled.metadata.shared, "compile_s": round(seconds, 1),
                      **parse_ptxas(log.getvalue())}


def compile_one(direction, width, block_b, num_warps, chunk, arch=90, order2=True,
                precision="ieee", maxnreg=None, sass=False):
    """Compile one kernel for sm_<arch>; returns the report row (with sass_loops' fields
    when `sass`)."""
    kern = _kernel(direction, chunk)
    constexprs = {"BLOCK_B": block_b, "KP": KP, "H1": width, "H2": width, "ACT": 0,
                  "ORDER2": order2, "PREC": precision, "CH": chunk,
                  "MERGE": chunk == "throughput_merged"}
    if chunk == "latency":
        # its exact sizes are compile-time constants: the benchmark's k 10 and width 100
        # (or the padded width where that is under 100)
        constexprs.update(K=10, N1=min(width, 100), N2=min(width, 100),
                          SAVE=True)   # the forward as training runs it (for a backward)
    # the latency layout has no row block, chunk or dot precision: pass what the kernel takes
    constexprs = {k: v for k, v in constexprs.items()
                  if k in inspect.signature(kern.fn).parameters}
    sig = {}
    for name in inspect.signature(kern.fn).parameters:
        if name.endswith("_ptr"):
            sig[name] = "*fp32"
        elif name in ("B", "K", "T") and name not in constexprs:
            sig[name] = "i32"
        elif name == "dt":
            sig[name] = "fp32"
        else:
            if name not in constexprs:   # a kernel parameter this report does not know
                raise KeyError(f"no value for the kernel's constexpr {name!r}")
            sig[name] = "constexpr"
    compiled, ptxas_row = _compile(kern, sig, constexprs, arch, num_warps,
                                   **({"maxnreg": maxnreg} if maxnreg else {}),
                                   **({"num_stages": STAGES} if STAGES else {}))
    row = {"kernel": direction, "width": width, "block_b": block_b, "num_warps": num_warps,
           "maxnreg": maxnreg, "chunk": chunk, "precision": precision, **ptxas_row}
    row.update(count_mma(compiled.asm["ptx"]))
    if sass:
        row.update(sass_loops(disassemble(compiled.asm["cubin"])))
    return row


KEY = ("kernel", "width", "block_b", "num_warps", "maxnreg", "chunk", "precision")


def compile_gru(direction, hidden, num_warps, feedback, arch=90):
    """hgan.kernels.gru's forward or backward kernel for sm_<arch>: registers, spills and
    shared memory as ptxas reports them (the leapfrog kernels' row fields where they apply)."""
    from hgan.kernels import gru as kgru
    kern = getattr(kgru, f"_{direction}_kernel")
    sig = {p: "*fp32" if p.endswith("_ptr") else "i32" if p in ("n", "frames") else "constexpr"
           for p in inspect.signature(kern.fn).parameters}
    hp = max(16, triton.next_power_of_2(hidden))
    _, ptxas_row = _compile(kern, sig, {"H": hidden, "HP": hp, "FEEDBACK": feedback}, arch,
                            num_warps)
    return {"kernel": f"gru_{direction}", "width": hidden, "num_warps": num_warps,
            "feedback": feedback, **ptxas_row}


def merge_rows(path, rows):
    """The saved rows with this run's replacing those of the same config (KEY), so that
    several invocations build one report. Rows kept from an earlier run are only valid for
    the commit the file names if that run compiled the same kernels: re-run them all after
    a kernel changes."""
    import json
    old = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f).get("rows", [])
    new = {tuple(r[k] for k in KEY) for r in rows}
    return [r for r in old if tuple(r.get(k) for k in KEY) not in new] + rows


def _fmt(r):
    layout = (r["chunk"] if r["chunk"] in LAYOUT_CHUNKS else
              f"streamed/{r['chunk']}" if r["chunk"] else "resident")
    return (f"{r['kernel']}  width={r['width']:>3}  BLOCK_B={r['block_b']:>3}  "
            f"warps={r['num_warps']}  {layout:<12}  {r['precision']:<6}  regs={r['registers']:>3}  "
            f"spill st/ld={r['spill_stores']:>6}/{r['spill_loads']:<6}  "
            f"stack={r['stack']:>6}  smem={r['shared']:>7}  wgmma={r['wgmma']:>4}  "
            f"waits={r.get('wgmma_waits', 0):>4}  "
            f"mma.sync={r['mma_sync']:>4}  {r['compile_s']:>6.1f} s"
            + (f"  step loop: {r['sass_loop_instrs']} instrs, LDL/STL="
               f"{r['sass_loop_ldl']}/{r['sass_loop_stl']} over {r['sass_loop_local_bytes']} B, "
               f"HGMMA={r['sass_loop_hgmma']}"
               if "sass_loop_instrs" in r else ""))


def _chunk_arg(text):
    return text if text in LAYOUT_CHUNKS else int(text)


def _width_arg(text):
    """A hidden width as the kernels compile it: the wrapper pads 100 to 128 before the
    kernel sees it, and tl.arange needs a power of two."""
    w = int(text)
    if w < 16 or w & (w - 1):
        raise argparse.ArgumentTypeError(
            f"{w} is not a compiled width: the kernels see widths padded to a power of two "
            f">= 16 (a width of 100 runs as 128)")
    return w


def _cause(err):
    """The line of a compile error that says why: ptxas's "fatal"/"error" line, else the last
    (Triton's CompilationError puts its cause after the source; PTXASError ends in a repro
    command)."""
    lines = [ln.strip() for ln in str(err).splitlines()
             if ln.strip() and not ln.strip().startswith("Repro command")]
    said = [ln for ln in lines if "fatal" in ln or "error" in ln.lower()]
    return (said or lines or [""])[-1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 or 80")
    ap.add_argument("--widths", type=_width_arg, nargs="+", default=[32, 128],
                    help="hidden widths as compiled (powers of two >= 16)")
    ap.add_argument("--blocks", type=int, nargs="+", default=[16])
    ap.add_argument("--warps", type=int, nargs="+", default=None,
                    help="warps per program (default 4 and 8; with --gru the kernels' own)")
    ap.add_argument("--chunks", type=_chunk_arg, nargs="+", default=["latency", 0, 16, 32],
                    help="latency = a program per row (latency.py); throughput = hidden-major "
                         "tiles (throughput.py); throughput_merged = the same with their "
                         "products merged (MERGE); 0 = register-resident tile "
                         "layout; >0 = streamed, hidden units per chunk")
    ap.add_argument("--kernels", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    ap.add_argument("--precisions", nargs="+", default=["ieee"],
                    choices=["ieee", "tf32x3", "tf32", "bf16x3"],
                    help="the kernels' dot precision")
    ap.add_argument("--maxnreg", type=int, default=None,
                    help="register cap per thread passed to Triton (default: its own choice)")
    ap.add_argument("--sass", action="store_true",
                    help="also disassemble each cubin and count spill loads/stores (LDL/STL) "
                         "and tensor-core instructions inside the step loop")
    ap.add_argument("--save", action="store_true",
                    help="record the rows in bench/results/ptxas-sm_<arch>.json")
    ap.add_argument("--gru", action="store_true",
                    help="instead: hgan.kernels.gru's kernels (mocogan's rollout) at hidden "
                         "100, both modes, at the warps they launch with (or --warps)")
    a = ap.parse_args(argv)
    rows, failed = [], 0
    if a.gru:
        from hgan.kernels import gru as kgru
        for direction in ("forward", "backward"):
            chosen = kgru.FORWARD_WARPS if direction == "forward" else kgru.BACKWARD_WARPS
            for feedback in (True, False):
                for nw in (a.warps or [chosen]):
                    r = compile_gru(direction, 100, nw, feedback, a.arch)
                    print(f"{r['kernel']}  hidden=100  {'feedback' if feedback else 'noise':<8}  "
                          f"warps={nw}  regs={r['registers']:>3}  spill st/ld="
                          f"{r['spill_stores']}/{r['spill_loads']}  stack={r['stack']}  "
                          f"smem={r['shared']}  {r['compile_s']:.1f} s", flush=True)
        return 0
    for width in a.widths:
        for chunk in a.chunks:
            if isinstance(chunk, int) and chunk > width:
                continue
            for bb in a.blocks:
                for nw in (a.warps or [4, 8]):
                    for direction in a.kernels:
                        # the latency layout has no dot precision (fp32 FMAs whatever is
                        # asked: one compile, recorded as ieee); the throughput layout takes
                        # bf16x3 only, whatever is asked
                        precs = {"latency": ["ieee"], "throughput": ["bf16x3"],
                                 "throughput_merged": ["bf16x3"]}.get(chunk, a.precisions)
                        for prec in precs:
                            try:
                                row = compile_one(direction, width, bb, nw, chunk, a.arch,
                                                  precision=prec, maxnreg=a.maxnreg,
                                                  sass=a.sass)
                            except Exception as err:  # noqa: BLE001 - reported, not fatal
                                print(f"{direction} width={width} BLOCK_B={bb} warps={nw} "
                                      f"chunk={chunk} {prec}: {type(err).__name__}: "
                                      f"{_cause(err)[:300]}")
                                failed += 1
                                continue
                            rows.append(row)
                            print(_fmt(row), flush=True)
    if a.save:
        from _results import environment, write_json
        env = environment("cpu")
        env["device"] = f"ptxas-sm_{a.arch}"
        env["note"] = ("offline compile for the target, no GPU involved: registers, spills and "
                       "shared memory as ptxas -v reports them; no timings. The top-level "
                       "commit and versions are the last writer's; a row's own commit and "
                       "triton, where it has them, are what compiled it (older rows: git log)")
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                            f"ptxas-sm_{a.arch}.json")
        # Each row names what compiled it: rows kept from earlier runs keep theirs, and the
        # file's top-level commit and versions are only its last writer's.
        rows = [dict(r, commit=env["commit"], triton=env["triton"]) for r in rows]
        write_json(path, dict(env, rows=merge_rows(path, rows)))
        print(f"wrote {path}")
    if failed:
        print(f"{failed} of {failed + len(rows)} kernels did not compile (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
