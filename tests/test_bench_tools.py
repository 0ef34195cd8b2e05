"""The tools behind bench/: the results-file merge used after GPU calls, and the fused-kernel
tuning sweep (its correctness gate, run through the Triton interpreter here)."""
import contextlib
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import _results  # noqa: E402


def _write(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def test_merge_combines_sections_and_refuses_mixed_devices(tmp_path):
    a = _write(tmp_path / "a.json", {"device": "GPU-X", "commit": "c1",
                                     "results": {"leapfrog": {"x": 1, "y": 1}, "tune": {"s": 1}}})
    b = _write(tmp_path / "b.json", {"device": "GPU-X", "commit": "c2",
                                     "results": {"leapfrog": {"y": 2}, "trainstep": {"t": 3}}})
    path = _results.merge([a, b], out_dir=str(tmp_path / "out"))
    assert os.path.basename(path) == "GPU-X.json"
    with open(path) as f:
        merged = json.load(f)
    assert merged["commit"] == "c2"
    assert merged["results"] == {"leapfrog": {"x": 1, "y": 2}, "tune": {"s": 1},
                                 "trainstep": {"t": 3}}
    c = _write(tmp_path / "c.json", {"device": "GPU-Y", "results": {}})
    with pytest.raises(ValueError, match="one device"):
        _results.merge([a, c], out_dir=str(tmp_path / "out"))
    for i, nameless in enumerate(({"results": {}}, {"device": "", "results": {}})):
        d = _write(tmp_path / f"d{i}.json", nameless)
        for files in ([d, a], [a, d]):
            with pytest.raises(ValueError, match=f"d{i}.json names no device"):
                _results.merge(files, out_dir=str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["GPU-X.json"]
    with pytest.raises(ValueError, match="no results files given"):   # not a silent no-op
        _results.merge([], out_dir=str(tmp_path / "out"))


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs CUDA or the Triton interpreter")
def test_tuning_sweep_checks_every_config_and_restores_the_defaults(monkeypatch):
    pytest.importorskip("triton")
    import tune_fused
    from hgan.kernels.leapfrog import fused
    before = fused._block_b, fused._num_warps, fused._chunk
    monkeypatch.setattr(tune_fused, "FRAMES", 3)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfgs = tune_fused.configs([16, 32], [4], [0, 32], ["ieee", "tf32x3"])
    assert cfgs[:4] == [(16, 4, 0, "ieee"), (32, 4, 0, "ieee"), (16, 4, 32, "ieee"),
                        (32, 4, 32, "ieee")] and len(cfgs) == 8
    # each layout in each precision at 16 rows, and 32 rows once: 5 of the 8 through the
    # interpreter, which takes seconds each
    cfgs = [c for c in cfgs if c[0] == 16 or c == (32, 4, 0, "ieee")]
    rows = tune_fused.sweep([5], cfgs, device, timed=False)
    assert [(r["block_b"], r["num_warps"], r["chunk"], r["precision"]) for r in rows] == cfgs
    assert all(r["correct"] and r["max_rel_err"] <= 1e-4 for r in rows), rows
    assert (fused._block_b, fused._num_warps, fused._chunk) == before


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs CUDA or the Triton interpreter")
def test_tuning_precompile_runs_every_config_in_spawned_workers(monkeypatch):
    # On CUDA this fills Triton's disk cache in parallel before the sweep; on CPU the spawned
    # workers inherit TRITON_INTERPRET and run the same fused forward + backward.
    pytest.importorskip("triton")
    import tune_fused
    monkeypatch.setattr(tune_fused, "FRAMES", 3)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # one resident and one streamed config, 32-row blocks (the sweep's other default): the
    # workers' 64 rows are 2 programs each, half the interpreted work of 16-row blocks
    cfgs = [(32, 4, 0, "ieee"), (32, 4, 32, "tf32")]
    # and one the fused host code refuses (a chunk of 24 hidden units): its error comes back,
    # so the workers did run the fused rollout with each config (an idle worker returns None)
    bad = (32, 4, 24, "ieee")
    out = tune_fused.precompile(cfgs + [bad], jobs=2, device=device)
    assert {cfg: out[cfg] for cfg in cfgs} == {cfg: None for cfg in cfgs}
    assert out[bad].startswith("ValueError: fused streamed layout: chunk must be") and \
        "got 24" in out[bad], out[bad]


def test_tuning_gives_up_slow_compiles_and_the_sweep_skips_them(monkeypatch):
    pytest.importorskip("triton")
    import tune_fused
    monkeypatch.setattr(tune_fused, "FRAMES", 3)
    cfg = (16, 4, 32, "ieee")
    out = tune_fused.precompile([cfg], jobs=1, device="cpu", timeout=0.01)
    assert out == {cfg: "compile did not finish within 0 s"}
    rows = tune_fused.sweep([5], [cfg], "cpu", timed=False, skip=out)
    assert rows == [{"batch": 5, "block_b": 16, "num_warps": 4, "chunk": 32, "precision": "ieee",
                     "correct": False, "error": "compile did not finish within 0 s"}]


def _ptxas_report(*args, tmpdir=None, kernel="fwd"):
    """bench/ptxas_report.py's rows of one kernel (the forward unless said) for these
    arguments, as {layout: {field: int}}."""
    triton = pytest.importorskip("triton")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("this triton wheel ships no ptxas")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # "off" is Triton's own word for compiled launches (hgan.kernels' reading of it too)
    env = {**os.environ, "TRITON_INTERPRET": "off"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    out = subprocess.run([sys.executable, "bench/ptxas_report.py", "--kernels", kernel, *args],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {}
    for line in out.stdout.splitlines():
        if line.startswith(kernel):
            fields = dict(re.findall(r"([a-z.]+)=\s*(\d+)", line))
            stores, loads = re.search(r"spill st/ld=\s*(\d+)/(\d+)", line).groups()
            fields.update(stores=stores, loads=loads)
            loop = re.search(r"step loop: (\d+) instrs, LDL/STL=(\d+)/(\d+) over (\d+) B, "
                             r"HGMMA=(\d+)", line)
            if loop:
                fields.update(zip(("loop_instrs", "loop_ldl", "loop_stl", "loop_local_bytes",
                                   "loop_hgmma"), loop.groups()))
            layout = re.search(r"warps=\d+\s+(\S+)", line).group(1)
            rows[layout] = {k: int(v) for k, v in fields.items()}
    return rows


def test_ptxas_report_builds_for_sm90_without_a_gpu(tmp_path):
    # bench/ptxas_report.py compiles the real kernels for an H100 and reads ptxas's own -v
    # log. The streamed forward at width 16 fits its registers: a spill here is a regression.
    rows = _ptxas_report("--widths", "16", "--chunks", "16", "--warps", "4", tmpdir=tmp_path)
    assert list(rows) == ["streamed/16"], rows
    # its private Triton cache (a compiled kernel per row) goes with the run
    assert list(tmp_path.iterdir()) == []
    r = rows["streamed/16"]
    assert 0 < r["regs"] <= 255 and r["stores"] == r["loads"] == 0, r


def test_ptxas_report_refuses_a_width_the_kernels_never_compile():
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TRITON_INTERPRET": "off",
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "bench/ptxas_report.py", "--widths", "100"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "100 is not a compiled width" in out.stderr and "runs as 128" in out.stderr


def test_throughput_layout_reaches_wgmma_where_the_row_major_tiles_do_not():
    # Why throughput.py exists: held hidden-major, its weight products have M = the width
    # and compile to Hopper's wgmma at a 16-row block, without spills; the row-major
    # streamed layout's bf16x3 dots at that block compile to mma.sync only.
    rows = _ptxas_report("--widths", "64", "--chunks", "throughput", "16", "--warps", "8",
                         "--precisions", "bf16x3", "--sass")
    assert rows["throughput"]["wgmma"] > 0 and rows["throughput"]["stores"] == 0, rows
    assert rows["streamed/16"]["wgmma"] == 0 and rows["streamed/16"]["mma.sync"] > 0, rows
    # and in the SASS (nvdisasm from the same wheel): the wgmma sit in the step loop, with no
    # local-memory traffic beside them
    loop = rows["throughput"]
    assert loop["loop_hgmma"] > 0 and loop["loop_ldl"] == loop["loop_stl"] == 0, rows
    assert rows["streamed/16"]["loop_hgmma"] == 0, rows


def test_merged_throughput_backward_has_fewer_dependent_tensor_core_stages():
    # What the merged backward is for (throughput._vjp_merged): Triton waits for each tl.dot's
    # wgmma group before the next, so the step's products are a chain of dependent stages;
    # merged pairwise they are fewer (45 against 114 per step under bf16x3) and wider, and
    # with it the step needs fewer barriers and no more shared memory than a block may have.
    rows = _ptxas_report("--widths", "64", "--chunks", "throughput", "throughput_merged",
                         "--warps", "8", "--blocks", "16", kernel="bwd")
    plain, merged = rows["throughput"], rows["throughput_merged"]
    assert 0 < merged["waits"] < plain["waits"] / 2, rows
    assert merged["wgmma"] < plain["wgmma"] and merged["mma.sync"] < plain["mma.sync"], rows
    assert merged["smem"] <= 227 * 1024, rows


# Hand-written nvdisasm-style listing: an outer loop (.L_x_0 .. 0x0070) holding an inner one
# (.L_x_1 .. 0x0050), a forward branch that is no loop, spills inside and outside the inner
# loop, and a predicated backward branch.
_SASS = """
        /*0000*/                   STL [R1+0x10], R4 ;
.L_x_0:
        /*0010*/                   LDL.64 R6, [R1+0x10] ;
.L_x_1:
        /*0020*/                   HGMMA.64x16x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0030*/                   LDL.LU R8, [R1+0x18] ;
        /*0040*/                   STL.64 [R1+0x20], R8 ;
        /*0050*/              @P0  BRA `(.L_x_1) ;
        /*0060*/                   FFMA R2, R3, R4, R5 ;
        /*0070*/              @!P1 BRA `(.L_x_0) ;
        /*0080*/                   BRA `(.L_x_2) ;
        /*0090*/                   LDL R9, [R1] ;
.L_x_2:
        /*00a0*/                   EXIT ;
"""


def test_sass_loops_counts_what_the_deepest_loop_runs():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    from sass import sass_loops
    r = sass_loops(_SASS)
    assert r["sass_loop_depth"] == 2 and r["sass_loop_instrs"] == 4
    assert (r["sass_loop_ldl"], r["sass_loop_stl"], r["sass_loop_hgmma"]) == (1, 1, 1)
    assert (r["sass_ldl"], r["sass_stl"], r["sass_ffma"]) == (3, 2, 1)
    # slots the inner loop touches: 4 bytes at 0x18, 8 at 0x20
    assert r["sass_loop_local_bytes"] == 12
    # no backward branch: no loop, nothing counted as in one
    flat = sass_loops(_SASS.replace("@P0  BRA `(.L_x_1)", "NOP").replace(
        "@!P1 BRA `(.L_x_0)", "NOP"))
    assert flat["sass_loop_depth"] == 0 and flat["sass_loop_ldl"] == 0


def _leapfrog_table():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "leapfrog_table", os.path.join(os.path.dirname(__file__), "..", "bench", "gpu",
                                       "leapfrog_table.py"))
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    return table


def _smoke_with_stage(table, monkeypatch, stage, batches):
    """--smoke's shapes, with one stage run at `batches` instead."""
    smoke = table.smoke

    def patched():
        smoke()
        table.STAGES[stage] = batches
    monkeypatch.setattr(table, "smoke", patched)


def test_leapfrog_table_forces_each_layout_and_restores_the_table():
    from hgan.kernels.leapfrog import fused
    table = _leapfrog_table()
    before = (fused.LATENCY_MAX_ROWS, fused.LATENCY_SCRATCH_BYTES, fused.THROUGHPUT_PRECISIONS,
              dict(fused.THROUGHPUT_BLOCK_B), fused._latency_warps)
    with table.forced("latency"):
        assert fused._layout(65536, 16, 128, 128) == "latency"
    with table.forced("latency@16"):
        assert fused._layout(65536, 16, 128, 128) == "latency"
        assert fused._launch_config("latency", 16, 128, 128, torch.device("cpu"),
                                    "ieee")[1] == {"num_warps": 16}
    with table.forced("tile"):
        assert fused._layout(16, 16, 128, 128) == fused._chunk(128, 128)
        assert fused._layout(16, 16, 128, 128, "bf16x3") == fused._chunk(128, 128)
    with table.forced("throughput"):
        assert fused._layout(16, 16, 128, 128, "bf16x3") == "throughput"
    with table.forced("throughput_bwd32"):
        assert fused._layout(16, 16, 128, 128, "bf16x3") == "throughput"
        assert fused.THROUGHPUT_BLOCK_B == {"fwd": 64, "bwd": 32}
    with table.forced(None):
        assert fused._layout(16, 16, 128, 128) == "latency"
    # the parallel compile warm-up runs every fused variant in one round of 16 processes
    # (fused_latency's kernels are "fused"'s at the warm-up batches under LATENCY_MAX_ROWS,
    # and have their own job above it)
    warmed = {v for v, _ in table.WARM_JOBS}
    assert warmed <= set(table.VARIANTS) and len(table.WARM_JOBS) <= 16
    assert {v for v, spec in table.VARIANTS.items() if spec[0] == "fused"} <= warmed | {
        "fused_latency"}
    for b in table.WARM_BATCHES:
        assert (("fused", b) if b <= fused.LATENCY_MAX_ROWS else ("fused_latency", b)) in \
            table.WARM_JOBS, b
    assert (fused.LATENCY_MAX_ROWS, fused.LATENCY_SCRATCH_BYTES, fused.THROUGHPUT_PRECISIONS,
            fused.THROUGHPUT_BLOCK_B, fused._latency_warps) == before


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs the interpreter")
def test_leapfrog_table_smoke_runs_every_stage(tmp_path, monkeypatch):
    # The GPU call is minutes of borrowed time: its script's own mistakes are found here,
    # on CPU through the interpreter at tiny shapes.
    monkeypatch.setenv("OUT", str(tmp_path))
    table = _leapfrog_table()
    results = os.path.join(os.path.dirname(__file__), "..", "bench", "results")
    # contents, not names: a CPU results file of this machine may already be there
    before = {n: open(os.path.join(results, n), "rb").read() for n in os.listdir(results)}
    table.main(["--smoke"])
    out = json.load(open(tmp_path / "leapfrog_table.json"))
    assert out["errors"] and all(isinstance(e, float) and e <= 1e-4
                                 for e in out["errors"].values()), out["errors"]
    assert not [r for r in out["rows"] if "failed" in r]
    timed = {(r["variant"], r["batch"]) for r in out["rows"]}
    for variant in ("reference", "analytic", "fused", "fused_latency", "fused_tile",
                    "fused_latency_w4", "fused_latency_w16"):
        assert (variant, table.STAGES["train"][0]) in timed
    assert ("fused_latency", table.STAGES["big"][0]) in timed
    assert ("fused_throughput", table.STAGES["big"][0]) in timed
    assert "fused_throughput/B3" in out["errors"]
    assert set(out["peaks"]) == {"fp32", "tf32", "bf16"}
    assert out["warm"]["kernels"] == 1 and out["warm"]["failures"] == []   # one warm-up job
    assert out["cross_complete"] and {"latency_max_rows", "latency_warps"} <= set(out["recommend"])
    # stage 7: the eager call's host time, its ops, and a trace TensorBoard's plugin reads
    host = out["host"]
    assert host["batch"] == table.STAGES["train"][0] and host["device_us"] == 0.0   # no CUDA
    assert 0 < host["host_fwd_us"] < host["host_us"] and host["top_host_ops"]
    assert any(o["op"] == "LeapfrogFunctionBackward" for o in host["top_host_ops"])
    trace = json.load(open(tmp_path / "host_profile" / host["trace"]))
    assert host["trace"].endswith(".pt.trace.json") and trace["traceEvents"]
    assert {n: open(os.path.join(results, n), "rb").read()   # a smoke run records nothing
            for n in os.listdir(results)} == before


def test_leapfrog_table_recommends_the_dispatch_table_from_its_rows():
    table = _leapfrog_table()
    rows = [{"variant": v, "batch": b, "ms": ms} for v, b, ms in [
        ("fused_latency", 16, 0.2), ("fused_tile", 16, 3.0),
        ("fused_latency_w4", 16, 0.3), ("fused_latency_w16", 16, 0.15),
        ("fused_latency", 64, 0.25), ("fused_tile", 64, 3.0),
        ("fused_latency_w4", 64, 0.4), ("fused_latency_w16", 64, 0.2),
        ("fused_latency", 1024, 1.0), ("fused_tile", 1024, 3.5),
        ("fused_latency", 2048, 4.0), ("fused_tile", 2048, 3.6),     # the crossover
        ("fused_latency", 4096, 3.0), ("fused_tile", 4096, 3.7),     # noise past it
        ("fused", 4096, 3.7), ("fused_throughput", 4096, 2.0),
        ("fused", 65536, 90.0), ("fused_throughput", 65536, 9.0),
        ("fused_throughput_bwd32", 65536, 8.0)]]
    rows.append({"variant": "fused_tile", "batch": 8192, "failed": "OutOfResources"})
    errors = {"fused_throughput/B64": 6e-5, "fused_throughput/B1031": 7e-5,
              "fused_latency/B64": 1e-6, "fused_latency/B1031": 1e-6,
              "fused_latency_w4/B64": 1e-6, "fused_latency_w16/B64": 1e-6,
              "fused_throughput_bwd32/B64": 6e-5}
    # bf16x3 faster everywhere above the crossover and accurate: said, and the default split
    # there (the only split timed)
    assert table.recommend(rows, errors) == {
        "latency_max_rows": 1024, "latency_warps": 16, "bf16x3_above_latency": True,
        "split_above_latency": "fused_throughput", "throughput_bwd_block": 32}
    # too coarse a split: the tensor-core path does not pay
    errors["fused_throughput/B1031"] = 2e-4
    rec = table.recommend(rows, errors)
    assert rec["bf16x3_above_latency"] is False and rec["split_above_latency"] is None
    # slower somewhere above the crossover: not a default either
    slow = rows + [{"variant": "fused_throughput", "batch": 8192, "ms": 9.0},
                   {"variant": "fused", "batch": 8192, "ms": 8.0}]
    assert table.recommend(slow, {})["bf16x3_above_latency"] is False
    assert table.recommend([], {}) == {}
    # an error check that failed, is missing or is NaN does not vouch for bf16x3
    for bad in ("RuntimeError('...')", None, float("nan")):
        errors = {"fused_throughput/B64": 6e-5, "fused_throughput/B1031": bad}
        if bad is None:
            del errors["fused_throughput/B1031"]
        assert table.recommend(rows, errors)["bf16x3_above_latency"] is False
    # a crossover stage cut short by the budget sets no switch point
    assert "latency_max_rows" not in table.recommend(rows, errors, cross_complete=False)


def test_leapfrog_table_worst_error_is_nan_when_any_is():
    table = _leapfrog_table()
    assert table.worst_error({"q": 1e-7, "p": 3e-6}) == 3e-6
    nan = float("nan")
    assert all(table.worst_error(e) != table.worst_error(e)
               for e in ({"q": 1e-7, "grad": nan}, {"q": nan, "grad": 1e-7}))


def test_results_name_the_commit_given_where_the_tree_has_no_git(monkeypatch):
    # The GPU machine gets the working tree without .git: HGAN_COMMIT names the commit.
    monkeypatch.setenv("HGAN_COMMIT", "abc1234")
    assert _results.environment("cpu")["commit"] == "abc1234"
    monkeypatch.delenv("HGAN_COMMIT")
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", _results.environment("cpu")["commit"])


def test_leapfrog_table_without_cuda_refuses_in_one_line(monkeypatch, capsys):
    # not 15 compile jobs failing one by one and a traceback from the matmul peaks
    table = _leapfrog_table()
    monkeypatch.setattr(table.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        table.main([])
    assert e.value.code == 2
    assert capsys.readouterr().err.endswith("has no CUDA device; --smoke checks the script on "
                                            "CPU\n")


class _FakeNVML:
    """pynvml's calls that gpu_state makes, with the units NVML answers in (mW, MHz, C)."""
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    class NVMLError(Exception):
        pass

    def __init__(self, reasons):
        self.reasons, self.inits = reasons, 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid != b"GPU-1234":   # torch names the UUID without NVML's "GPU-" prefix
            raise self.NVMLError("Not Found")
        return "h"

    def nvmlDeviceGetClockInfo(self, h, which):
        return {1: 1755, 2: 3201}[which]

    def nvmlDeviceGetMaxClockInfo(self, h, which):
        return 1980

    def nvmlDeviceGetPowerUsage(self, h):
        return 612345

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700000

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 71

    def nvmlDeviceGetPerformanceState(self, h):
        return 0

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.reasons


def test_gpu_state_names_the_clocks_power_and_what_holds_the_clocks_down(monkeypatch, tmp_path):
    # A GPU figure taken under a power cap or a thermal slowdown must say so: every results
    # entry measured on CUDA carries the card's state, read (only read) through NVML.
    monkeypatch.setattr(_results, "_NVML", {})
    fake = _FakeNVML(reasons=0x4 | 0x40 | 0x1000)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(_results.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_results.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(_results.torch.cuda, "get_device_properties",
                        lambda i: type("P", (), {"uuid": "1234"})())
    state = _results.gpu_state()
    assert state == {"sm_clock_mhz": 1755, "sm_clock_max_mhz": 1980, "mem_clock_mhz": 3201,
                     "power_w": 612.345, "power_limit_w": 700.0, "temperature_c": 71,
                     "pstate": 0, "clock_reasons": ["sw_power_cap", "hw_thermal_slowdown",
                                                    "other 0x1000"]}
    assert _results.gpu_state_line(state) == (
        "GPU state: SM 1755/1980 MHz, memory 3201 MHz, 612/700 W, 71 C, P0, clocks held by: "
        "sw_power_cap, hw_thermal_slowdown, other 0x1000")
    _results.gpu_state()
    assert fake.inits == 1   # NVML is initialised once per process
    # each entry recorded on CUDA carries it; a CPU entry does not
    monkeypatch.setattr(_results, "RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(_results.torch.cuda, "get_device_name", lambda i: "GPU X")
    path = _results.record("s", "row", {"ms": 1.0}, "cuda")
    assert json.load(open(path))["results"]["s"]["row"]["gpu_state"] == state
    monkeypatch.setattr(_results.torch.cuda, "is_available", lambda: False)
    path = _results.record("s", "row", {"ms": 1.0}, "cpu")
    assert "gpu_state" not in json.load(open(path))["results"]["s"]["row"]
    # NVML failing is said, not raised: the figure is still recorded
    monkeypatch.setattr(_results.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fake, "nvmlDeviceGetPowerUsage",
                        lambda h: (_ for _ in ()).throw(fake.NVMLError("Not Supported")))
    assert _results.gpu_state() == {"error": "NVMLError: Not Supported"}
    assert _results.gpu_state_line({"error": "NVMLError: Not Supported"}) == (
        "GPU state: not read (NVMLError: Not Supported)")
    # no nvidia-ml-py: nothing to say
    monkeypatch.setattr(_results, "_NVML", {})
    monkeypatch.setitem(sys.modules, "pynvml", None)   # import fails
    assert _results.gpu_state() is None
    assert _results.gpu_state_line(None) == "GPU state: not read (no NVML)"


def test_results_files_are_named_after_the_gpu_and_state_the_versions(monkeypatch):
    # the name becomes a file name (bench/results/NVIDIA-H200.json, what the docs and the
    # merge step name); the versions are what the figures were measured with
    monkeypatch.setattr(_results.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_results.torch.cuda, "get_device_name", lambda i: "NVIDIA H200 (NVL)")
    assert _results.device_name("cuda") == "NVIDIA-H200--NVL"
    env = _results.environment("cuda")
    assert env["device"] == "NVIDIA-H200--NVL" and env["torch"] == torch.__version__
    triton = pytest.importorskip("triton")
    assert env["triton"] == triton.__version__


def test_cpu_results_files_tell_native_bf16_cpus_apart(monkeypatch):
    # the same "AMD EPYC" model name with and without AVX512-BF16 trains differently
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    import _results
    monkeypatch.setattr("hgan.train.loop.cpu_has_fast_bf16", lambda: False)
    plain = _results.device_name("cpu")
    monkeypatch.setattr("hgan.train.loop.cpu_has_fast_bf16", lambda: True)
    assert _results.device_name("cpu") == plain + "-bf16"
    assert plain.startswith("cpu-") and plain.endswith(f"-{os.cpu_count()}cores")


def _rows(*triples):
    return [{"variant": v, "batch": b, "ms": ms} for v, b, ms in triples]


_ALL_ACCURATE = {"fused_latency/B64": 1e-6, "fused_latency/B1031": 1e-6,
                 "fused_latency_w4/B64": 1e-6, "fused_latency_w16/B64": 1e-6,
                 "fused_throughput/B64": 6e-5, "fused_throughput/B1031": 6e-5,
                 "fused_throughput_bwd32/B64": 6e-5, "fused_throughput_merged/B64": 6e-5}


def test_leapfrog_table_recommend_crossover_ties_and_gaps():
    table = _leapfrog_table()
    # latency loses at 2048 and 8192 and wins at 4096 between: the first loss ends the regime
    rows = _rows(("fused_latency", 1024, 1.0), ("fused_tile", 1024, 2.0),
                 ("fused_latency", 2048, 3.0), ("fused_tile", 2048, 2.0),
                 ("fused_latency", 4096, 1.0), ("fused_tile", 4096, 2.0),
                 ("fused_latency", 8192, 9.0), ("fused_tile", 8192, 2.0))
    assert table.recommend(rows, _ALL_ACCURATE)["latency_max_rows"] == 1024
    # a tie is no loss: the latency layout keeps that batch
    tie = _rows(("fused_latency", 16, 1.0), ("fused_tile", 16, 1.0),
                ("fused_latency", 64, 2.0), ("fused_tile", 64, 1.0))
    assert table.recommend(tie, _ALL_ACCURATE)["latency_max_rows"] == 16
    # warps: 8 and 4 tie over the training batches -> 8 (the table's); 4 is missing at B = 64,
    # so its lower time at B = 16 alone is no sum over the training batches
    warps = _rows(("fused_latency", 16, 1.0), ("fused_latency", 64, 2.0),
                  ("fused_latency_w4", 16, 2.0), ("fused_latency_w4", 64, 1.0),
                  ("fused_latency_w16", 16, 2.0), ("fused_latency_w16", 64, 2.0))
    assert table.recommend(warps, _ALL_ACCURATE)["latency_warps"] == 8
    gap = _rows(("fused_latency", 16, 1.0), ("fused_latency", 64, 2.0),
                ("fused_latency_w4", 16, 0.5))
    assert table.recommend(gap, _ALL_ACCURATE)["latency_warps"] == 8
    # the 32-row backward: a tie keeps 16; the largest batch measured decides
    bwd = _rows(("fused_throughput", 65536, 8.0), ("fused_throughput_bwd32", 65536, 8.0))
    assert table.recommend(bwd, _ALL_ACCURATE)["throughput_bwd_block"] == 16
    bwd = _rows(("fused_throughput", 1024, 2.0), ("fused_throughput_bwd32", 1024, 1.0),
                ("fused_throughput", 65536, 8.0), ("fused_throughput_bwd32", 65536, 9.0))
    assert table.recommend(bwd, _ALL_ACCURATE)["throughput_bwd_block"] == 16
    # bf16x3 is judged above the latency regime only: slower at the switch point itself is
    # the latency layout's batch, not the throughput layout's
    above = _rows(("fused_latency", 1024, 1.0), ("fused_tile", 1024, 2.0),
                  ("fused_latency", 2048, 3.0), ("fused_tile", 2048, 2.0),
                  ("fused_throughput", 1024, 5.0), ("fused", 1024, 1.0),
                  ("fused_throughput", 2048, 1.0), ("fused", 2048, 2.0))
    rec = table.recommend(above, _ALL_ACCURATE)
    assert rec["latency_max_rows"] == 1024 and rec["bf16x3_above_latency"] is True
    # every row failed: nothing to recommend
    failed = [{"variant": v, "batch": 64, "failed": "OutOfResources"} for v in table.VARIANTS]
    assert table.recommend(failed, {}) == {}


def test_leapfrog_table_recommend_judges_a_split_against_the_tile_row_where_one_was_timed():
    # Above the latency regime the default dispatch is the ieee tile layout: at 1024 its
    # "fused_tile" row (2.0 ms), not "fused" (3.0, today's latency layout there). tf32x3 at
    # 2.5 beats the second, not the first: no split, though it wins at 65536.
    table = _leapfrog_table()
    errors = dict(_ALL_ACCURATE, **{f"fused_tile_tf32x3/B{b}": 5e-6 for b in (64, 1031)})
    rows = _rows(("fused_latency", 512, 1.0), ("fused_tile", 512, 2.0),
                 ("fused_latency", 1024, 3.0), ("fused_tile", 1024, 2.0), ("fused", 1024, 3.0),
                 ("fused_tile_tf32x3", 1024, 2.5),
                 ("fused", 65536, 90.0), ("fused_tile_tf32x3", 65536, 50.0))
    rec = table.recommend(rows, errors)
    assert rec["latency_max_rows"] == 512 and rec["split_above_latency"] is None


def test_leapfrog_table_fused_py_sets_the_backward_block_and_keeps_the_forwards():
    # only the backward's block was timed: the forward's stays what fused.py has
    table = _leapfrog_table()
    assert table.fused.THROUGHPUT_BLOCK_B["fwd"] == 64
    assert table.fused_py({"throughput_bwd_block": 32}) == {
        "THROUGHPUT_BLOCK_B": {"fwd": 64, "bwd": 32}}


def test_leapfrog_table_recommends_the_merged_kernels_only_where_they_win_everywhere(
        monkeypatch):
    # The merged kernels (fused_throughput_merged) replace the table's only by beating them
    # beyond the noise at every batch both ran (65536 and 1024) and within 1e-4; where the
    # 32-row backward wins too, the faster of the two at the largest batch they share.
    table = _leapfrog_table()
    plain = (("fused_throughput", 65536, 18.0, 0.0), ("fused_throughput", 1024, 1.6, 0.0))

    def rec(*rows, errors=_ALL_ACCURATE):
        r = table.recommend(_noisy(*plain, *rows), errors)
        return r.get("throughput_bwd_block"), r.get("throughput_merged")
    both = (("fused_throughput_merged", 65536, 10.0, 0.0),
            ("fused_throughput_merged", 1024, 1.2, 0.0))
    assert rec(*both) == (16, True)
    assert table.fused_py(table.recommend(_noisy(*plain, *both), _ALL_ACCURATE)) == {
        "THROUGHPUT_BLOCK_B": {"fwd": 64, "bwd": 16}, "THROUGHPUT_MERGED": True}
    # slower at 1024, or within the noise there, or off by more than 1e-4: the table keeps
    for mid_ms in (1.7, 1.59):
        assert rec(both[0], ("fused_throughput_merged", 1024, mid_ms, 0.0)) == (None, False)
    assert rec(*both, errors=dict(_ALL_ACCURATE, **{"fused_throughput_merged/B64": 2e-4})) \
        == (None, False)
    assert rec(*both, errors={k: v for k, v in _ALL_ACCURATE.items()
                              if "merged" not in k}) == (None, False)   # never checked
    # the 32-row backward wins too: the faster at 65536 takes it
    assert rec(*both, ("fused_throughput_bwd32", 65536, 12.0, 0.0)) == (16, True)
    assert rec(*both, ("fused_throughput_bwd32", 65536, 9.0, 0.0)) == (32, False)
    # once applied, the table's row is the merged backward: a tie keeps it, and the 32-row
    # variant (forced unmerged) must beat it to take over
    monkeypatch.setattr(table.fused, "THROUGHPUT_MERGED", True)
    tie = (("fused_throughput_merged", 65536, 18.0, 0.0),
           ("fused_throughput_merged", 1024, 1.6, 0.0))
    assert rec(*tie) == (None, True)
    assert rec(*tie, ("fused_throughput_bwd32", 65536, 18.0, 0.0)) == (16, True)
    assert rec(*tie, ("fused_throughput_bwd32", 65536, 12.0, 0.0)) == (32, False)


def test_leapfrog_table_warps_need_to_beat_the_current_rows_spread_too():
    # 16 warps 10% faster than the table's 8, but the 8-warp row's own halves are 12% apart:
    # within its noise, the table keeps 8
    table = _leapfrog_table()
    rows = _noisy(("fused_latency", 16, 0.5, 0.12), ("fused_latency", 64, 0.5, 0.0),
                  ("fused_latency_w16", 16, 0.45, 0.0), ("fused_latency_w16", 64, 0.45, 0.0))
    assert table.recommend(rows, _ALL_ACCURATE)["latency_warps"] == 8
    rows[0]["spread"] = 0.05                       # outside it: 16 takes over
    assert table.recommend(rows, _ALL_ACCURATE)["latency_warps"] == 16


def _dispatch_state(fused):
    """What the fused dispatch table holds now, as a timed or checked call sees it."""
    return {"max_rows": fused.LATENCY_MAX_ROWS, "precisions": fused.THROUGHPUT_PRECISIONS,
            "blocks": dict(fused.THROUGHPUT_BLOCK_B), "warps": fused._latency_warps(128, 128),
            "merged": fused.THROUGHPUT_MERGED}


def _forcing_expected(layout, default):
    """The dispatch state `forced(layout)` must set (by hand, from forced's docstring)."""
    want = dict(default)
    if layout and layout.startswith("latency"):
        want["max_rows"] = "huge"
        if "@" in layout:
            want["warps"] = int(layout.split("@")[1])
    elif layout == "tile":
        want.update(max_rows=0, precisions=())
    elif layout in ("throughput", "throughput_bwd32", "throughput_merged"):
        want["max_rows"] = 0
        if layout == "throughput_bwd32":
            want.update(blocks={**default["blocks"], "bwd": 32}, merged=False)
        elif layout == "throughput_merged":
            want.update(blocks={**default["blocks"], "bwd": 16}, merged=True)
    return want


def _seen(state):
    return {**state, "max_rows": "huge" if state["max_rows"] >= 1 << 30 else state["max_rows"]}


def test_leapfrog_table_times_each_variant_under_its_own_layout(monkeypatch):
    # The timed call runs inside forced(layout): without it every fused_tile, fused_latency
    # and warps row would time the default dispatch, and `recommend` would read noise.
    table = _leapfrog_table()
    monkeypatch.setattr(table, "DEV", "cpu")
    default, seen = _dispatch_state(table.fused), []

    def fake_leapfrog(q0, p0, w, b, **kw):
        seen.append(_seen(_dispatch_state(table.fused)))
        return q0 * 1.0, p0 * 1.0, q0 * 2.0
    monkeypatch.setattr(table, "leapfrog", fake_leapfrog)
    for variant, (_, _, layout) in table.VARIANTS.items():
        for forward_only in (False, True):
            seen.clear()
            table.step_fn(variant, 3, forward_only=forward_only)()
            assert seen == [_forcing_expected(layout, default)], (variant, seen)
            assert _dispatch_state(table.fused) == default      # and put back after


def test_leapfrog_table_checks_each_variants_error_under_its_own_layout(monkeypatch,
                                                                         tmp_path):
    # The 1e-4 gate must be measured on the kernel `recommend` may pick, not the default one.
    table = _leapfrog_table()
    default = _dispatch_state(table.fused)

    class Compared(list):
        def append(self, item):
            super().append((item, _seen(_dispatch_state(table.fused))))
    compared = Compared()
    _fake_table_main(table, monkeypatch, tmp_path, compared=compared)
    order = table.ERROR_VARIANTS + table.ERROR_VARIANTS_FIRST
    assert len(compared) == len(order)
    for variant, ((args, kwargs), state) in zip(order, compared):
        backend, precision, layout = table.VARIANTS[variant]
        assert (args[7], kwargs["precision"]) == (backend, precision), variant
        assert state == _forcing_expected(layout, default), (variant, state)


def test_leapfrog_table_graph_rows_time_the_replays_of_one_capture(monkeypatch):
    # The "(graph)" rows: three warm-up runs on a side stream, one capture, then only the
    # graph's replays timed (timing the body again would record eager times under that name).
    from types import SimpleNamespace
    table = _leapfrog_table()
    calls = []

    class Graph:
        def replay(self):
            calls.append("replay")

    class Capture:
        def __init__(self, g):
            calls.append("capture")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(table.torch, "cuda", SimpleNamespace(
        Stream=lambda: stream, current_stream=lambda: stream,
        stream=lambda s: contextlib.nullcontext(), CUDAGraph=Graph, graph=Capture))
    monkeypatch.setattr(table, "step_fn", lambda v, b: lambda: calls.append(("body", v, b)))

    def median_ms(fn, min_reps=None, max_s=2.0):
        calls.append("timed")
        fn()
        fn()
        return 1.5, 2, 0.0
    monkeypatch.setattr(table, "median_ms", median_ms)
    assert table.graph_ms("fused", 16) == (1.5, 2, 0.0)
    body = ("body", "fused", 16)
    assert calls == [body] * 3 + ["capture", body, "timed", "replay", "replay"]


def _noisy(*quads):
    return [{"variant": v, "batch": b, "ms": ms, "spread": sp} for v, b, ms, sp in quads]


def test_leapfrog_table_recommend_changes_the_table_only_beyond_the_noise(monkeypatch):
    # METHOD.md: a difference between versions smaller than a version's spread between two
    # timings is noise. Each change of the dispatch table must gain more than NOISE_FLOOR and
    # more than either row's half_spread; within that, the table keeps what it has.
    table = _leapfrog_table()
    assert table.NOISE_FLOOR == 0.02
    monkeypatch.setattr(table.fused, "LATENCY_MAX_ROWS", 2048)    # what this test's rows know
    assert table.half_spread([1.0]) == 0.0
    assert table.half_spread([1.0, 1.0, 3.0, 3.0]) == pytest.approx(1.0)   # halves 1 and 3
    errors = dict(_ALL_ACCURATE, **{f"{v}/B{b}": 5e-6 for v in ("fused_tile_tf32x3",
                                                               "fused_tile_bf16x3")
                                   for b in (64, 1031)})
    cross = [("fused_latency", 1024, 1.0, 0.0), ("fused_tile", 1024, 2.0, 0.0)]

    def rec(*quads):
        return table.recommend(_noisy(*cross, *quads), errors)

    # crossover: at or under today's 2048 the latency layout keeps a batch the tile layout
    # does not beat beyond the noise (1% slower: kept; 3% slower: lost) ...
    assert rec(("fused_latency", 2048, 2.02, 0.0), ("fused_tile", 2048, 2.0, 0.0))[
        "latency_max_rows"] == 2048
    assert rec(("fused_latency", 2048, 2.06, 0.0), ("fused_tile", 2048, 2.0, 0.0))[
        "latency_max_rows"] == 1024
    # ... or a row's own spread (3% slower, but its halves 5% apart: kept)
    assert rec(("fused_latency", 2048, 2.06, 0.05), ("fused_tile", 2048, 2.0, 0.0))[
        "latency_max_rows"] == 2048
    # above 2048 the latency layout takes a batch only by beating the tile layout
    up = [("fused_latency", 2048, 1.0, 0.0), ("fused_tile", 2048, 2.0, 0.0)]
    assert rec(*up, ("fused_latency", 4096, 3.95, 0.0), ("fused_tile", 4096, 4.0, 0.0))[
        "latency_max_rows"] == 2048
    assert rec(*up, ("fused_latency", 4096, 3.8, 0.0), ("fused_tile", 4096, 4.0, 0.0))[
        "latency_max_rows"] == 4096
    # warps: 16 warps 1% faster over the training batches keeps 8; 10% faster takes 16,
    # unless a spread of 12% says that too is noise
    for w16_ms, w16_spread, want in ((0.99, 0.0, 8), (0.9, 0.0, 16), (0.9, 0.12, 8)):
        warps = _noisy(("fused_latency", 16, 0.5, 0.0), ("fused_latency", 64, 0.5, 0.0),
                       ("fused_latency_w16", 16, w16_ms / 2, w16_spread),
                       ("fused_latency_w16", 64, w16_ms / 2, 0.0),
                       ("fused_latency_w4", 16, 0.6, 0.0), ("fused_latency_w4", 64, 0.6, 0.0))
        assert table.recommend(warps, errors)["latency_warps"] == want, (w16_ms, w16_spread)
    # a split becomes the default (and the bf16x3 opt-in is said to pay) only beyond the noise
    for split_ms, split_spread, pays in ((9.9, 0.0, False), (9.0, 0.0, True), (9.0, 0.15, False)):
        r = rec(*up, ("fused", 65536, 10.0, 0.0),
                ("fused_throughput", 65536, split_ms, split_spread))
        assert r["bf16x3_above_latency"] is pays, (split_ms, split_spread, r)
        assert r["split_above_latency"] == ("fused_throughput" if pays else None)
    # among splits that pay, a later-listed one displaces tf32x3 only by beating it too
    for bf16_ms, want in ((7.9, "fused_tile_tf32x3"), (7.0, "fused_throughput")):
        r = rec(*up, ("fused", 65536, 10.0, 0.0), ("fused_tile_tf32x3", 65536, 8.0, 0.0),
                ("fused_throughput", 65536, bf16_ms, 0.0))
        assert r["split_above_latency"] == want, (bf16_ms, r)
    # the 32-row backward: 1% faster keeps 16-row blocks, 10% faster takes 32
    for bwd32_ms, want in ((7.92, 16), (7.2, 32)):
        bwd = _noisy(("fused_throughput", 65536, 8.0, 0.0),
                     ("fused_throughput_bwd32", 65536, bwd32_ms, 0.0))
        assert table.recommend(bwd, errors)["throughput_bwd_block"] == want
    # once a run's table is applied (16 warps, 32-row backward blocks), the next run's rows
    # for it tie with their forced twins: the table keeps what it has, it does not fall back
    monkeypatch.setattr(table.fused, "THROUGHPUT_BLOCK_B", {"fwd": 64, "bwd": 32})
    monkeypatch.setattr(table.fused, "_latency_warps", lambda h1, h2: 16)
    applied = _noisy(("fused_throughput", 65536, 7.2, 0.0),
                     ("fused_throughput_bwd32", 65536, 7.2, 0.0),
                     ("fused_latency", 16, 0.45, 0.0), ("fused_latency", 64, 0.45, 0.0),
                     ("fused_latency_w16", 16, 0.45, 0.0), ("fused_latency_w16", 64, 0.45, 0.0),
                     ("fused_latency_w4", 16, 0.6, 0.0), ("fused_latency_w4", 64, 0.6, 0.0))
    r = table.recommend(applied, errors)
    assert (r["throughput_bwd_block"], r["latency_warps"]) == (32, 16), r


@pytest.mark.parametrize("split, bf16x3_pays", [
    (None, True), (None, False), ("fused_tile_tf32x3", True), ("fused_tile_tf32x3", False),
    ("fused_throughput", True),   # a split that is the default beat the default: it pays
    ("fused_tile_bf16x3", True), ("fused_tile_bf16x3", False)])
def test_leapfrog_table_fused_py_makes_the_default_run_what_was_measured_fastest(
        monkeypatch, split, bf16x3_pays):
    # The "fused.py, as measured" line is what to set in kernels/leapfrog/fused.py: with it
    # set, leapfrog's default (precision "auto") runs at the benchmark's shape exactly the
    # variant the table measured as the one to pick (its precision and layout as the table's
    # VARIANTS force them), and the latency layout up to the measured switch point.
    table = _leapfrog_table()
    fused = table.fused
    merged = bf16x3_pays     # either way, across the cases
    rec = {"latency_max_rows": 1024, "split_latency_max_rows": 512, "latency_warps": 16,
           "split_above_latency": split, "bf16x3_above_latency": bf16x3_pays,
           "throughput_bwd_block": 32, "throughput_merged": merged}
    settings = table.fused_py(rec)
    warps = settings.pop("_latency_warps(width >= 64)")
    assert warps == 16 and set(settings) == {"LATENCY_MAX_ROWS", "SPLIT_LATENCY_MAX_ROWS",
                                             "SPLIT_ABOVE_LATENCY", "THROUGHPUT_PRECISIONS",
                                             "THROUGHPUT_BLOCK_B", "THROUGHPUT_MERGED"}
    for name, value in settings.items():
        assert hasattr(fused, name), name        # names the table's own entries
        monkeypatch.setattr(fused, name, value)
    assert fused.THROUGHPUT_BLOCK_B == {"fwd": 64, "bwd": 32}
    for direction, block in (("fwd", 64), ("bwd", 32)):
        cfg = fused._launch_config("throughput", 65536, 128, 128, torch.device("cpu"),
                                   "bf16x3", direction)[1]
        assert cfg.get("MERGE", False) is merged and cfg["BLOCK_B"] == block
    k, (n1, n2), T = table.K, table.WIDTHS, table.FRAMES
    KP, H1, H2 = fused._pow2(k), fused._pow2(n1), fused._pow2(n2)

    def runs(B):
        precision = fused.resolve_precision("auto", B, T, k, n1, n2)
        return precision, fused._layout(B, T, H1, H2, precision, KP)
    # where the default runs the throughput layout, the latency layout stops at the split's
    # own switch point (512 rows), elsewhere at the latency regime's end (1024)
    end = 512 if split == "fused_throughput" else 1024
    assert runs(end) == ("ieee", "latency") and runs(end + 1)[1] != "latency"
    assert runs(1025)[1] != "latency"
    _, precision, layout = table.VARIANTS[split or "fused_tile"]
    assert runs(65536) == (precision, "throughput" if layout == "throughput"
                           else fused._chunk(H1, H2)), (split, bf16x3_pays, settings)
    # the bf16x3 opt-in keeps the throughput layout only where it paid
    asked = fused._layout(65536, T, H1, H2, "bf16x3", KP)
    assert (asked == "throughput") == (bf16x3_pays and split != "fused_tile_bf16x3")


def test_leapfrog_table_recommends_the_splits_own_switch_from_the_crossover(monkeypatch):
    # The latency layout keeps a crossover batch against the throughput layout unless the
    # latter beats it beyond the noise, inside the latency regime; the rows an H200 measured
    # (commit fcd82da) give 256: 1.50 against 1.62 ms at 256 rows, 2.32 against 1.64 at 512.
    table = _leapfrog_table()
    monkeypatch.setattr(table.fused, "LATENCY_MAX_ROWS", 512)
    cross = [("fused_latency", 256, 1.50, 0.0), ("fused_tile", 256, 3.62, 0.0),
             ("fused_latency", 512, 2.32, 0.0), ("fused_tile", 512, 3.67, 0.0),
             ("fused_latency", 2048, 8.21, 0.0), ("fused_tile", 2048, 3.64, 0.0),
             ("fused_throughput", 2048, 1.59, 0.0)]

    def rec(t256, t512, errors=_ALL_ACCURATE):
        return table.recommend(_noisy(*cross, ("fused_throughput", 256, t256, 0.0),
                                      ("fused_throughput", 512, t512, 0.0)), errors)
    measured = rec(1.62, 1.64)
    assert (measured["latency_max_rows"], measured["split_latency_max_rows"]) == (512, 256)
    assert table.fused_py(measured)["SPLIT_LATENCY_MAX_ROWS"] == 256
    # never beaten inside the regime: the regime's end; beaten by 1% only: noise, kept
    assert rec(1.62, 2.30)["split_latency_max_rows"] == 512
    # beaten at the smallest batch timed: the switch lies below the table's batches, so no
    # figure, and fused.py's entry stays the regime's end
    assert "split_latency_max_rows" not in rec(1.2, 1.64)
    assert table.fused_py(rec(1.2, 1.64))["SPLIT_LATENCY_MAX_ROWS"] == 512
    # a throughput layout outside 1e-4 of float64 moves nothing
    bad = dict(_ALL_ACCURATE, **{f"fused_throughput/B{b}": 3e-4 for b in (64, 1031)})
    assert "split_latency_max_rows" not in rec(1.62, 1.64, bad)


def test_leapfrog_table_recommends_nothing_that_missed_the_error_contract():
    # faster but outside 1e-4 of float64 (or unchecked): never the recommendation
    table = _leapfrog_table()
    rows = _rows(("fused_latency", 16, 1.0), ("fused_tile", 16, 3.0),
                 ("fused_latency", 64, 1.0), ("fused_tile", 64, 3.0),
                 ("fused_latency_w4", 16, 0.5), ("fused_latency_w4", 64, 0.5),
                 ("fused_latency_w16", 16, 0.7), ("fused_latency_w16", 64, 0.7),
                 ("fused_throughput", 65536, 9.0), ("fused_throughput_bwd32", 65536, 8.0),
                 ("fused", 65536, 90.0))
    assert table.recommend(rows, _ALL_ACCURATE) == {
        "latency_max_rows": 64, "latency_warps": 4, "bf16x3_above_latency": True,
        "split_above_latency": "fused_throughput", "throughput_bwd_block": 32}
    for bad in (2e-4, float("nan"), "RuntimeError('...')", None):
        errors = dict(_ALL_ACCURATE, **{"fused_latency_w4/B64": bad,
                                        "fused_throughput_bwd32/B64": bad,
                                        "fused_latency/B1031": bad})
        if bad is None:
            for key in ("fused_latency_w4/B64", "fused_throughput_bwd32/B64",
                        "fused_latency/B1031"):
                del errors[key]
        rec = table.recommend(rows, errors)
        # the latency layout unchecked: no latency regime; its 4 warps unchecked: 16
        assert rec["latency_max_rows"] == 0 and rec["latency_warps"] == 16, (bad, rec)
        assert rec["throughput_bwd_block"] == 16, (bad, rec)
    errors = dict(_ALL_ACCURATE, **{"fused_throughput/B1031": 5e-4})
    rec = table.recommend(rows, errors)
    assert rec["bf16x3_above_latency"] is False and rec["split_above_latency"] is None


def test_leapfrog_table_recommends_the_fastest_accurate_split_as_a_default():
    # 3xTF32 or 3xBF16, whichever is faster and meets 1e-4 (the issue): each of
    # DEFAULT_SPLITS may become the default above the latency regime when it is within 1e-4
    # of float64 at every batch stage 2 checks and beats the default dispatch at every batch
    # there; the fastest at the largest batch wins, tf32x3 (more bits) on a tie.
    table = _leapfrog_table()
    assert table.DEFAULT_SPLITS == ("fused_tile_tf32x3", "fused_throughput", "fused_tile_bf16x3")
    cross = [("fused_latency", 1024, 1.0), ("fused_tile", 1024, 2.0),
             ("fused_latency", 2048, 3.0), ("fused_tile", 2048, 2.0)]
    errors = dict(_ALL_ACCURATE, **{f"{v}/B{b}": 5e-6 for v in ("fused_tile_tf32x3",
                                                               "fused_tile_bf16x3")
                                   for b in (64, 1031)})
    rows = _rows(*cross, ("fused", 65536, 90.0),
                 ("fused_throughput", 2048, 1.5), ("fused_throughput", 65536, 8.0),
                 ("fused_tile_tf32x3", 2048, 1.8), ("fused_tile_tf32x3", 65536, 10.0),
                 ("fused_tile_bf16x3", 65536, 9.0))
    rec = table.recommend(rows, errors)
    assert rec["latency_max_rows"] == 1024 and rec["bf16x3_above_latency"] is True
    assert rec["split_above_latency"] == "fused_throughput"   # 8 ms: not tf32x3's 10
    # the throughput layout's bf16x3 outside the contract at one batch (or unchecked): the
    # next fastest accurate split at 65536, the largest batch the others share
    for bad in (2e-4, float("nan"), None):
        errs = dict(errors, **{"fused_throughput/B1031": bad})
        if bad is None:
            del errs["fused_throughput/B1031"]
        rec = table.recommend(rows, errs)
        assert rec["split_above_latency"] == "fused_tile_bf16x3", (bad, rec)   # 9 ms, not 10
        assert rec["bf16x3_above_latency"] is False
    # none accurate: no default split
    errs = dict(errors, **{f"{v}/B1031": 2e-4 for v in table.DEFAULT_SPLITS})
    assert table.recommend(rows, errs)["split_above_latency"] is None
    # a tie at the largest shared batch keeps tf32x3, the split with more bits
    tie = _rows(*cross, ("fused", 65536, 90.0),
                ("fused_throughput", 2048, 1.5), ("fused_throughput", 65536, 10.0),
                ("fused_tile_tf32x3", 2048, 1.8), ("fused_tile_tf32x3", 65536, 10.0))
    assert table.recommend(tie, errors)["split_above_latency"] == "fused_tile_tf32x3"
    # slower than the default at one batch above the crossover: not a default
    slower = rows + _rows(("fused_tile_tf32x3", 4096, 5.0), ("fused_throughput", 4096, 4.5),
                          ("fused_tile_bf16x3", 4096, 4.2), ("fused_tile", 4096, 4.0))
    assert table.recommend(slower, errors)["split_above_latency"] is None
    # a tie with the default at one batch is no win (ties keep the table as it is): neither
    # a split nor the bf16x3 opt-in is said to pay
    tied = rows + _rows(("fused_tile_tf32x3", 4096, 4.0), ("fused_throughput", 4096, 4.0),
                        ("fused_tile_bf16x3", 4096, 4.0), ("fused_tile", 4096, 4.0))
    rec = table.recommend(tied, errors)
    assert rec["split_above_latency"] is None and rec["bf16x3_above_latency"] is False
    # none beats the default: no split, said so
    none = _rows(*cross, ("fused", 65536, 9.0), ("fused_throughput", 65536, 12.0),
                 ("fused_tile_tf32x3", 65536, 10.0), ("fused_tile_bf16x3", 65536, 11.0))
    assert table.recommend(none, errors)["split_above_latency"] is None
    # no split timed above the latency regime: no key
    assert "split_above_latency" not in table.recommend(_rows(*cross), errors)


def test_leapfrog_table_picks_among_several_default_splits_at_their_largest_shared_batch(
        monkeypatch):
    # The rule (the issue's "whichever measures faster") picks by the largest batch both beat
    # the default at, not by the smallest, and keeps the first listed on a tie (here bf16x3,
    # listed first for the test).
    table = _leapfrog_table()
    monkeypatch.setattr(table, "DEFAULT_SPLITS", ("fused_tile_bf16x3", "fused_tile_tf32x3"))
    errors = dict(_ALL_ACCURATE, **{f"{v}/B{b}": 5e-6 for v in table.DEFAULT_SPLITS
                                   for b in (64, 1031)})
    cross = [("fused_latency", 1024, 1.0), ("fused_tile", 1024, 2.0),
             ("fused_latency", 2048, 3.0), ("fused_tile", 2048, 2.0), ("fused", 65536, 90.0)]
    rows = _rows(*cross, ("fused_tile_tf32x3", 2048, 1.0), ("fused_tile_tf32x3", 65536, 20.0),
                 ("fused_tile_bf16x3", 2048, 1.8), ("fused_tile_bf16x3", 65536, 10.0))
    assert table.recommend(rows, errors)["split_above_latency"] == "fused_tile_bf16x3"
    tie = _rows(*cross, ("fused_tile_tf32x3", 2048, 1.0), ("fused_tile_tf32x3", 65536, 10.0),
                ("fused_tile_bf16x3", 2048, 1.8), ("fused_tile_bf16x3", 65536, 10.0))
    assert table.recommend(tie, errors)["split_above_latency"] == "fused_tile_bf16x3"


def test_leapfrog_table_judges_splits_at_the_crossover_batches_it_times_them_at():
    # Stage 6 times the splits beside the ieee tile layout ("fused_tile") at the crossover
    # batches, and "fused" only at the training, 1024 and 65536 batches: a split slower than
    # the tile layout (what the default dispatch runs above the latency regime) at crossover
    # batches is no default there, however it does at 65536. Rows as the script makes them.
    table = _leapfrog_table()
    errors = dict(_ALL_ACCURATE, **{f"{v}/B{b}": 5e-6 for v in table.DEFAULT_SPLITS
                                   for b in (64, 1031)})
    rows = []
    for b in table.STAGES["train"] + table.STAGES["mid"] + table.STAGES["big"]:
        rows += _rows(("fused", b, b / 100))
    for b in table.STAGES["train"] + table.STAGES["mid"] + table.STAGES["cross"]:
        # the latency layout wins up to 1024 rows, the tile layout above
        rows += _rows(("fused_latency", b, b / 100 if b <= 1024 else b / 10),
                      ("fused_tile", b, b / 50 if b <= 1024 else b / 100))
    assert "fused" not in {r["variant"] for r in rows if r["batch"] in table.STAGES["cross"]}
    big = table.STAGES["big"][0]
    for v in table.SPLITS:
        # each split 20% faster than the default at 65536, 50% slower than the tile layout
        # at every crossover batch above 1024
        rows += _rows((v, big, big / 100 * 0.8))
        rows += _rows(*[(v, b, b / 100 * 1.5) for b in table.STAGES["cross"] if b > 1024])
    rec = table.recommend(rows, errors)
    assert rec["latency_max_rows"] == 1024
    assert rec["split_above_latency"] is None, rec
    assert rec["bf16x3_above_latency"] is False, rec
    # faster than the tile layout there too: the fastest at 65536 is the default
    for r in rows:
        if r["variant"] == "fused_tile_bf16x3" and r["batch"] != big:
            r["ms"] = r["batch"] / 100 * 0.9
    assert table.recommend(rows, errors)["split_above_latency"] == "fused_tile_bf16x3"


def test_leapfrog_table_warm_up_compiles_in_parallel_and_gives_up_at_its_limit(monkeypatch):
    # The warm-up decides what the timed stages skip: a limit too short marks every variant
    # slow (nothing timed), one too long spends the call's budget on ptxas; a compile that
    # fails or is killed must say so, and a killed one's variant must be skipped later.
    import types
    table = _leapfrog_table()
    clock, started, killed = [0.0], [], []

    class Proc:
        def __init__(self, cmd, stderr, **kw):
            self.variant, self.batch = cmd[-2], int(cmd[-1])
            self.pid, self.start, self.returncode = 1000 + len(started), clock[0], None
            started.append((self.variant, self.batch, sum(p.poll() is None for p in procs)))
            procs.append(self)
            if (self.variant, self.batch) == ("fused_tile_bf16x3", 1031):
                stderr.write("Traceback ...\nOutOfResources")

        def poll(self):   # 10 s of compiling; fused_tile_tf32 never finishes
            if self.variant == "fused_tile_tf32" or clock[0] - self.start < 10:
                return None
            self.returncode = int((self.variant, self.batch) == ("fused_tile_bf16x3", 1031))
            return self.returncode

        def wait(self):
            pass

    procs = []
    monkeypatch.setattr(table, "time", types.SimpleNamespace(
        monotonic=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s)))
    monkeypatch.setattr(table.subprocess, "Popen", Proc)
    monkeypatch.setattr(table.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(table.os, "killpg", lambda pid, sig: killed.append(pid))

    class Budget:
        def __init__(self, left):
            self.left = lambda: left

    n, failures, slow = table.warm(Budget(1000.0), smoke_run=False)
    # min(300 s, budget - 120 s): 300
    assert n == len(table.WARM_JOBS) <= 16 and slow == {"fused_tile_tf32"}   # one round
    assert sorted(failures) == ["fused_tile_bf16x3/B1031: Traceback ...\nOutOfResources",
                                "fused_tile_tf32/B64: still compiling after 300 s"]
    assert sorted(killed) == sorted(p.pid for p in procs if p.variant == "fused_tile_tf32")
    assert [s[2] for s in started] == list(range(n))    # all at once (up to 16)
    assert sorted(s[:2] for s in started) == sorted((v, b) for v, b in table.WARM_JOBS)
    # little budget left: the floor of 30 s
    clock[0], procs[:] = 0.0, []
    failures = table.warm(Budget(100.0), smoke_run=False)[1]
    assert "fused_tile_tf32/B64: still compiling after 30 s" in failures


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs CUDA or the Triton interpreter")
def test_leapfrog_table_times_the_forward_as_training_runs_it(monkeypatch):
    # The forward-only rows are the training step's motion share: inputs that need gradients,
    # so the latency layout's forward saves its activations as it does in training (without
    # them it compiles another forward, without those stores).
    pytest.importorskip("triton")
    table = _leapfrog_table()
    table.smoke()
    from hgan.kernels.leapfrog import fused
    saves, real = [], fused._launch

    def spy(kernel, grid, *args, **kwargs):
        if "SAVE" in kwargs:
            saves.append(kwargs["SAVE"])
        return real(kernel, grid, *args, **kwargs)
    monkeypatch.setattr(fused, "_launch", spy)
    out = table.step_fn("fused_latency", 3, forward_only=True)()
    assert saves == [True] and all(t.requires_grad for t in out)


def test_leapfrog_table_median_ms_is_the_median_of_cuda_event_times(monkeypatch):
    table = _leapfrog_table()
    durations = iter([7.0, 1.0, 100.0, 2.0, 3.0, 50.0])

    class Event:
        def __init__(self, enable_timing):
            pass

        def record(self):
            pass

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return next(durations)

    monkeypatch.setattr(table, "DEV", "cuda")
    monkeypatch.setattr(table.torch.cuda, "Event", Event)
    monkeypatch.setattr(table.torch.cuda, "synchronize", lambda: None)
    calls = []
    # max_s 0: exactly min_reps timed calls after one untimed warm-up call; times
    # [7, 1, 100, 2, 3], whose halves [7, 1] and [100, 2, 3] have medians 4 and 3
    assert table.median_ms(lambda: calls.append(1), min_reps=5, max_s=0.0) == (
        3.0, 5, pytest.approx(1 / 3))
    assert len(calls) == 6


def test_leapfrog_table_matmul_peak_is_flops_per_second(monkeypatch):
    table = _leapfrog_table()
    monkeypatch.setattr(table, "DEV", "cpu")       # 256 x 256 operands
    monkeypatch.setattr(table, "median_ms",
                        lambda fn, min_reps=None, max_s=2.0: (2.0, 5, 0.0))
    # 2 * 256^3 multiply-add FLOPs in 2 ms
    assert table.matmul_peak(False) == pytest.approx(2 * 16777216 / 2e-3)
    assert table.matmul_peak(True, torch.bfloat16) == pytest.approx(1.6777216e10)


def _fake_table_main(table, monkeypatch, tmp_path, budget_s=1000.0, slow=(), ms=None,
                     cost=lambda v, b: 0.0, error_cost=0.0, recorded=None, compared=None,
                     check_fails=None):
    """table.main(["--smoke"]) with every measurement faked and a fake clock for the budget.
    Returns (the JSON written to $OUT, [(variant, batch, fwd, seconds left, rows already in
    the JSON) per timed call], [seconds left at each error check]). An exception in `ms` is
    raised by that row's timing. With a list as `recorded`, the run is a CUDA one (DEV
    "cuda", device "GPU-X") whose record() calls are appended to it; otherwise record() must
    not be called: a CPU run writes no results file. A list as `compared` gets each error
    check's (args, kwargs); `check_fails` maps an error check's index to what it raises."""
    clock = [0.0]
    if recorded is not None:
        smoke = table.smoke

        def cuda_smoke():
            smoke()
            table.DEV = "cuda"
        monkeypatch.setattr(table, "smoke", cuda_smoke)
        monkeypatch.setattr(table, "environment", lambda dev: {
            "device": "GPU-X", "torch": "t", "triton": "tr", "commit": "c", "python": "3"})
        monkeypatch.setattr(table, "graph_ms",
                            lambda v, b: ((ms or {}).get((v, b, "graph"), 1.0), 7, 0.0))
        monkeypatch.setattr(table, "record", lambda *a: recorded.append(a))
        monkeypatch.setattr(table, "inputs", lambda batch, seed=0: [None] * 8)   # no .to("cuda")
    else:
        monkeypatch.setattr(table, "record", lambda *a: pytest.fail(f"record{a} on CPU"))

    class Budget:
        def __init__(self, seconds):
            self.end = clock[0] + seconds

        def left(self):
            return self.end - clock[0]

    out_json = tmp_path / "leapfrog_table.json"
    budget, timed, checks = [], [], []
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setattr(table, "Budget", lambda s: budget.append(Budget(s)) or budget[0])
    monkeypatch.setattr(table, "warm", lambda b, smoke_run: (1, [], set(slow)))
    monkeypatch.setattr(table, "matmul_peak", lambda tf32, dtype=None: 1e12)
    monkeypatch.setattr(table, "step_fn", lambda v, b, forward_only=False: (v, b, forward_only))

    def median_ms(fn, min_reps=None, max_s=2.0):
        v, b, fwd = fn
        saved = len(json.load(open(out_json))["rows"]) if out_json.exists() else 0
        timed.append((v, b, fwd, budget[0].left(), saved))
        clock[0] += cost(v, b)
        value = (ms or {}).get((v, b), 2.0)
        if isinstance(value, Exception):
            raise value
        return value, 7, 0.0

    def compare(*args, **kwargs):
        checks.append(budget[0].left())
        clock[0] += error_cost
        if compared is not None:
            compared.append((args, kwargs))
        if len(checks) - 1 in (check_fails or {}):
            raise check_fails[len(checks) - 1]
        return {"q": 1e-6, "d_W0": 2e-6}

    monkeypatch.setattr(table, "median_ms", median_ms)
    monkeypatch.setattr(table, "compare_to_reference", compare)
    table.main(["--smoke", "--budget-s", str(budget_s)])
    return json.load(open(out_json)), timed, checks


def test_leapfrog_table_main_records_rows_as_it_goes(tmp_path, monkeypatch, capsys):
    table = _leapfrog_table()
    ms = {("reference", 2): 10.0, ("fused", 2): 2.0, ("fused_latency", 6): 1.0,
          ("fused_tile", 6): 3.0}
    out, timed, checks = _fake_table_main(table, monkeypatch, tmp_path, ms=ms,
                                          slow=("fused_tile_tf32x3",))
    # every row is in $OUT/leapfrog_table.json before the next is timed
    timed_rows = [i for i, r in enumerate(out["rows"]) if "ms" in r]
    assert [t[4] for t in timed] == timed_rows and len(timed) == len(out["rows"]) - 2
    # TFLOP/s from a hand count at the smoke shapes (frames 2, k 10, widths 40, 64): per row,
    # 3 evaluations x 1 step; forward 4 (800 + 2560) FLOPs each, backward 2 (5 * 800 +
    # 6 * 2560): 40320 forward, 156480 with the backward
    for r in (out["rows"][i] for i in timed_rows):
        flops = (40320 if r["variant"].endswith("(fwd)") else 156480) * r["batch"]
        assert r["tflops"] == pytest.approx(flops / (r["ms"] * 1e-3) / 1e12), r
        assert r["reps"] == 7
    assert {"fused (fwd)", "fused_throughput (fwd)"} <= {r["variant"] for r in out["rows"]}
    # a variant the warm-up could not compile is not compiled by the error stage either
    assert out["errors"]["fused_tile_tf32x3/B3"] == "not compiled in the warm-up"
    assert len(checks) == len(out["errors"]) - 1
    assert {e for k, e in out["errors"].items() if k != "fused_tile_tf32x3/B3"} == {2e-6}
    assert {"fused_latency_w4/B3", "fused_latency_w16/B3", "fused_throughput_bwd32/B3"} <= set(
        out["errors"])
    skipped = [r for r in out["rows"] if "ms" not in r]
    assert skipped == [{"variant": "fused_tile_tf32x3", "batch": b,
                        "failed": "not compiled in the warm-up"} for b in (5, 6)]
    # the closing table: x eager is the reference's time over the row's
    fused_line = next(line for line in capsys.readouterr().out.splitlines()
                      if line.startswith("fused ") and " 2 " in line)
    assert "5.0x" in fused_line, fused_line
    assert out["cross_complete"] and out["recommend"]["latency_max_rows"] == 6


def test_leapfrog_table_main_stops_each_stage_at_its_budget(tmp_path, monkeypatch):
    table = _leapfrog_table()
    # the crossover's first row spends the budget: nothing is timed after it, the crossover
    # is incomplete (no switch point), and the results are still written
    out, timed, checks = _fake_table_main(
        table, monkeypatch, tmp_path, budget_s=100.0,
        cost=lambda v, b: 90.0 if b == table.STAGES["cross"][0] else 0.0)
    assert timed[-1][:2] == ("fused_latency", table.STAGES["cross"][0])
    assert all(t[3] >= 15 for t in timed)
    assert not out["cross_complete"] and "latency_max_rows" not in out["recommend"]
    assert "latency_warps" in out["recommend"]
    # the error stage stops with under 60 s left: checks at 70, 65 and 60 s, then none
    (tmp_path / "e").mkdir()
    out, timed, checks = _fake_table_main(table, monkeypatch, tmp_path / "e", budget_s=70.0,
                                          error_cost=5.0)
    assert checks == [70.0, 65.0, 60.0] and len(out["errors"]) == 3
    assert all(t[3] >= 15 for t in timed) and len(timed) == len(out["rows"]) > 0


def test_leapfrog_table_main_saves_a_failed_row_at_once_and_it_leaves_the_crossover_open(
        tmp_path, monkeypatch):
    # A GPU call can be killed at any row: a failure must already be in the JSON, and a
    # crossover batch whose tile row failed is not measured, so no switch point is drawn
    # from the training batches alone. With two error batches, the variants the warm-up
    # compiles at the first only are checked there only (at the second they would compile
    # inside the timed error stage).
    table = _leapfrog_table()
    _smoke_with_stage(table, monkeypatch, "errors", (3, 4))
    ms = {("fused_latency", 6): 1.0, ("fused_tile", 6): RuntimeError("OutOfResources")}
    out, timed, _ = _fake_table_main(table, monkeypatch, tmp_path, ms=ms)
    assert {"variant": "fused_tile", "batch": 6,
            "failed": "RuntimeError('OutOfResources')"} in out["rows"]
    # one row per timed call, each in the JSON before the next call
    assert len(timed) == len(out["rows"])
    assert [t[4] for t in timed] == list(range(len(timed)))
    assert not out["cross_complete"] and "latency_max_rows" not in out["recommend"]
    both = ("fused", "fused_latency", "fused_throughput", "fused_tile", "fused_tile_tf32x3",
            "fused_tile_bf16x3")
    first = ("fused_latency_w4", "fused_latency_w16", "fused_throughput_bwd32",
             "fused_throughput_merged", "fused_tile_tf32")
    assert set(out["errors"]) == ({f"{v}/B{b}" for v in both for b in (3, 4)}
                                  | {f"{v}/B3" for v in first})


def test_leapfrog_table_main_on_cuda_records_every_row_and_returns_the_device_file(
        tmp_path, monkeypatch):
    # On a GPU each row goes to bench/results/<device>.json as it is measured (and the
    # peaks, errors and dispatch table with them), the captured step is timed too, and that
    # file is copied beside $OUT's JSON (what the call brings back for `_results.py merge`);
    # a CPU run (_fake_table_main's default) records nothing.
    table = _leapfrog_table()
    results = tmp_path / "results"
    results.mkdir()
    (results / "GPU-X.json").write_text('{"device": "GPU-X"}')
    monkeypatch.setattr(table, "RESULTS_DIR", str(results))
    recorded = []
    out, _, _ = _fake_table_main(table, monkeypatch, tmp_path / "out",
                                 ms={("fused", 2, "graph"): 0.5}, recorded=recorded)
    measured = [r for r in out["rows"] if "ms" in r]
    assert {"variant": "fused (graph)", "batch": 2, "ms": 0.5, "reps": 7, "spread": 0.0,
            "tflops": pytest.approx(156480 * 2 / 0.5e-3 / 1e12)} in measured
    assert [a for a in recorded if "batch" in a[2]] == [
        ("leapfrog_table", f"{r['variant']}/B{r['batch']}", r, "cuda") for r in measured]
    # beside the rows: the peaks, each error check and the dispatch table, as the JSON has them
    rest = {a[1]: a[2] for a in recorded if "batch" not in a[2]}
    assert all(a[0] == "leapfrog_table" and a[3] == "cuda" for a in recorded)
    assert rest.pop("matmul_peaks") == {f"{k}_flops_per_s": v for k, v in out["peaks"].items()}
    assert rest.pop("dispatch_table_as_measured") == out["recommend"]
    assert json.loads(json.dumps(rest.pop("fused_py_as_measured"))) == out["fused_py"]
    assert rest == {f"error {k}": {"rel_err_vs_float64": e} for k, e in out["errors"].items()}
    assert out["errors"] and out["peaks"]
    assert sorted(os.listdir(tmp_path / "out")) == ["GPU-X.json", "leapfrog_table.json"]
    # the card's state before the timed stages, after the heaviest and at the end
    assert set(out["gpu_state"]) == {"start", "after B = 65536", "end"}
    # --smoke: its timings are the interpreter's, so even a device file there stays behind
    table = _leapfrog_table()
    monkeypatch.setattr(table, "RESULTS_DIR", str(results))
    monkeypatch.setattr(table, "environment", lambda dev: {"device": "GPU-X", "commit": "c"})
    (tmp_path / "cpu").mkdir()
    _fake_table_main(table, monkeypatch, tmp_path / "cpu")
    assert os.listdir(tmp_path / "cpu") == ["leapfrog_table.json"]


def test_leapfrog_table_warm_up_keeps_to_16_processes_and_what_the_budget_leaves(monkeypatch):
    # Up to 16 compiles at a time (fewer on fewer cores), each in a session of its own (a kill
    # at the limit takes its ptxas children too); the limit is what the budget leaves past the
    # stages' 120 s (300 s of budget: 180 s); a long error keeps its tail, where the reason
    # is; under --smoke one job, at the smoke shapes' training batch.
    import types
    table = _leapfrog_table()
    warm_jobs = list(table.WARM_JOBS)
    clock, running, peak, kwargs, cmds = [0.0], set(), [0], [], []

    class Proc:
        def __init__(self, cmd, stderr, **kw):
            self.cmd, self.start, self.pid, self.returncode = cmd, clock[0], 1, None
            cmds.append(cmd)
            kwargs.append(kw)
            running.add(self)
            peak[0] = max(peak[0], len(running))
            if cmd[-2] == "fused_tile":
                stderr.write("x" * 500 + "\nOutOfResources: shared memory")

        def poll(self):   # 10 s of compiling; fused_tile_tf32 never finishes
            if self.cmd[-2] == "fused_tile_tf32" or clock[0] - self.start < 10:
                return None
            self.returncode = int(self.cmd[-2] == "fused_tile")
            return self.returncode

        def wait(self):
            running.discard(self)

    class Budget:
        def __init__(self, left):
            self.left = lambda: left

    monkeypatch.setattr(table, "time", types.SimpleNamespace(
        monotonic=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s)))
    monkeypatch.setattr(table.subprocess, "Popen", Proc)
    killed_at = []
    monkeypatch.setattr(table.os, "killpg", lambda pid, sig: killed_at.append(clock[0]))
    monkeypatch.setattr(table, "WARM_JOBS", [(v, b) for v in ("fused", "fused_latency_w4")
                                             for b in range(1, 11)])
    for cores, most in ((64, 16), (4, 4)):
        monkeypatch.setattr(table.os, "cpu_count", lambda: cores)
        clock[0], peak[0] = 0.0, 0
        assert table.warm(Budget(1000.0), smoke_run=False) == (20, [], set())
        assert peak[0] == most, (cores, peak[0])
    assert kwargs and all(kw.get("start_new_session") for kw in kwargs)
    monkeypatch.setattr(table, "WARM_JOBS", [("fused_tile_tf32", 64), ("fused_tile", 64)])
    clock[0] = 0.0
    n, failures, slow = table.warm(Budget(300.0), smoke_run=False)
    assert slow == {"fused_tile_tf32"} and len(killed_at) == 1 and 180 <= killed_at[0] < 181
    assert "fused_tile_tf32/B64: still compiling after 180 s" in failures, failures
    tile = next(f for f in failures if f.startswith("fused_tile/B64: "))
    assert tile.endswith("\nOutOfResources: shared memory") and len(tile) == len(
        "fused_tile/B64: ") + 200
    monkeypatch.setattr(table, "WARM_JOBS", warm_jobs)
    table.smoke()
    cmds.clear()
    assert table.warm(Budget(1000.0), smoke_run=True)[0] == 1
    assert len(cmds) == 1 and cmds[0][-4:] == ["--smoke", "--warm-one", warm_jobs[0][0],
                                               str(table.STAGES["train"][0])], cmds


def test_leapfrog_table_main_budget_defaults_to_its_usage_line_and_a_warm_up_job_runs_alone(
        tmp_path, monkeypatch, capsys):
    table = _leapfrog_table()
    monkeypatch.setenv("OUT", str(tmp_path))
    # --warm-one (a warm-up job): that variant's one step at that batch, and nothing else
    ran, real_budget, budgets = [], table.Budget, []
    monkeypatch.setattr(table, "step_fn", lambda v, b, forward_only=False:
                        lambda: ran.append((v, b, forward_only)))
    monkeypatch.setattr(table, "Budget", lambda s: pytest.fail("a warm-up job ran the table"))
    table.main(["--smoke", "--warm-one", "fused_tile", "64"])
    assert ran == [("fused_tile", 64, False)] and os.listdir(tmp_path) == []

    # the table without --budget-s: the docstring's usage line (inside the runbook's < 6 min),
    # and a tree without git is told to set HGAN_COMMIT
    class Stop(Exception):
        pass

    def warm(budget, smoke_run):
        raise Stop
    monkeypatch.setattr(table, "Budget", lambda s: budgets.append(s) or real_budget(s))
    monkeypatch.setattr(table, "warm", warm)
    for commit, hint in (("unknown", True), ("abc1234", False)):
        monkeypatch.setattr(table, "environment", lambda dev: {"device": "cpu", "commit": commit})
        with pytest.raises(Stop):
            table.main(["--smoke"])
        first = capsys.readouterr().out.splitlines()[0]
        assert first.endswith("(set HGAN_COMMIT: this tree has no git)") == hint, first
    usage = float(re.search(r"--budget-s (\d+)", table.__doc__)[1])
    assert budgets == [usage, usage] and usage < 360


def test_leapfrog_table_main_runs_the_documented_stages_in_order(tmp_path, monkeypatch, capsys):
    # The docstring's stages in order of value, each at its own batches (the smoke shapes':
    # train 2 and here 3, big 5, mid 4, cross 6); every key of "dispatch table, as measured",
    # the last line; the error check on the activation the timed rollouts use; a check that
    # raises is that variant's result, and the stage goes on. A device without a results file
    # yet (its first row is still to come) is no error.
    import inspect
    table = _leapfrog_table()
    _smoke_with_stage(table, monkeypatch, "train", (2, 3))
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(table, "RESULTS_DIR", str(results))
    compared = []
    ms = {("fused_latency", b): 3.0 for b in (4, 5, 6)}   # the latency layout wins at 2, 3
    out, _, _ = _fake_table_main(table, monkeypatch, tmp_path / "out", ms=ms, recorded=[],
                                 compared=compared, check_fails={0: RuntimeError("ptxas")})
    assert os.listdir(tmp_path / "out") == ["leapfrog_table.json"]
    rows = [(r["variant"], r["batch"]) for r in out["rows"]]
    train = {"reference", "analytic", "fused", "fused_latency", "fused_tile", "fused_latency_w4",
             "fused_latency_w16", "fused (graph)", "fused (fwd)"}
    stages = [(2, train), (3, train),
              (5, {"reference", "fused_throughput", "fused", "fused_throughput_merged",
                   "fused_tile_tf32x3", "fused_tile_bf16x3", "fused_throughput_bwd32",
                   "fused_tile_tf32", "fused_latency", "fused_throughput (fwd)",
                   "fused_throughput_merged (fwd)", "fused (fwd)"}),
              (4, {"reference", "analytic", "fused", "fused_latency", "fused_tile",
                   "fused_throughput", "fused_throughput_merged"}),
              (6, {"fused_latency", "fused_throughput", "fused_tile", "fused_tile_tf32x3",
                   "fused_tile_bf16x3"})]
    assert [b for _, b in rows] == [b for b, vs in stages for _ in vs], rows
    for b, vs in stages:
        assert sorted(v for v, batch in rows if batch == b) == sorted(vs), b
    assert set(out["recommend"]) == {"latency_max_rows", "latency_warps", "bf16x3_above_latency",
                                     "split_above_latency", "throughput_bwd_block",
                                     "throughput_merged"}
    table_line, last = capsys.readouterr().out.rstrip("\n").splitlines()[-2:]
    assert table_line.startswith("dispatch table, as measured: "), table_line
    assert json.loads(table_line.split(": ", 1)[1]) == out["recommend"]
    # and last, what to set in fused.py to apply it
    assert last.startswith("kernels/leapfrog/fused.py, as measured: "), last
    assert json.loads(last.split(": ", 1)[1]) == json.loads(json.dumps(
        table.fused_py(out["recommend"]))) == out["fused_py"]
    activation = inspect.signature(table.leapfrog).parameters["activation"].default
    assert compared and all(args[6] == activation for args, _ in compared)
    assert out["errors"]["fused/B3"] == "RuntimeError('ptxas')"
    assert len(compared) == len(out["errors"]) == len(table.ERROR_VARIANTS) + len(
        table.ERROR_VARIANTS_FIRST)


def test_tuning_sweep_marks_errors_over_1e_4_and_nan_anywhere_wrong(monkeypatch):
    import tune_fused
    ones = [torch.ones(4) for _ in range(3)]

    def off(i, d):   # the outputs with output i's first entry off by d
        out = [t.clone() for t in ones]
        out[i][0] += d
        return out

    # rel_err = d / ||ones(4)|| = d / 2: 2^-14 = 6.1e-5 is within 1e-4, 2^-13 = 1.2e-4 is not
    by_precision = {"ieee": off(2, 2 ** -13), "tf32": off(2, 2 ** -12),
                    "tf32x3": off(1, float("nan")), "bf16x3": off(0, 0.0)}
    monkeypatch.setattr(tune_fused, "_run", lambda backend, *a: (
        ones if backend == "analytic" else by_precision[a[5]]))
    cfgs = [(16, 4, 0, p) for p in by_precision]
    rows = {r["precision"]: r for r in tune_fused.sweep([5], cfgs, "cpu", timed=False)}
    assert rows["ieee"]["max_rel_err"] == 2 ** -14 and rows["ieee"]["correct"]
    assert rows["tf32"]["max_rel_err"] == 2 ** -13 and not rows["tf32"]["correct"]
    assert math.isnan(rows["tf32x3"]["max_rel_err"]) and not rows["tf32x3"]["correct"]
    assert rows["bf16x3"]["max_rel_err"] == 0.0 and rows["bf16x3"]["correct"]


def test_tuning_best_is_the_fastest_correct_config_per_batch():
    import tune_fused
    rows = [{"batch": 64, "block_b": 16, "correct": True, "median_ms": 2.0},
            {"batch": 64, "block_b": 32, "correct": False, "median_ms": 1.0},   # wrong
            {"batch": 64, "block_b": 64, "correct": True, "median_ms": 1.5},
            {"batch": 1024, "block_b": 16, "correct": True},                    # not timed
            {"batch": 1024, "block_b": 32, "correct": True, "median_ms": 3.0},
            {"batch": 1024, "block_b": 64, "correct": False, "error": "OutOfResources"},
            {"batch": 65536, "block_b": 16, "correct": False, "median_ms": 0.5}]
    assert {b: r["block_b"] for b, r in tune_fused.best(rows).items()} == {64: 64, 1024: 32}


def test_record_merges_sections_and_stamps_each_entry(tmp_path, monkeypatch):
    env = {"device": "GPU-X", "commit": "c1", "torch": "t"}
    monkeypatch.setattr(_results, "RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(_results, "environment", lambda device="cuda": dict(env))
    _results.record("leapfrog", "a", {"median_s": 1.0})
    env["commit"] = "c2"
    _results.record("trainstep", "b", {"median_s": 2.0})
    path = _results.record("leapfrog", "c", {"median_s": 3.0})
    assert path == str(tmp_path / "GPU-X.json")
    data = json.load(open(path))
    assert data["commit"] == "c2" and data["device"] == "GPU-X"
    assert set(data["results"]) == {"leapfrog", "trainstep"}
    assert set(data["results"]["leapfrog"]) == {"a", "c"}
    a = data["results"]["leapfrog"]["a"]
    assert a["median_s"] == 1.0 and a["commit"] == "c1" and a["measured"].endswith("Z")
    assert data["results"]["trainstep"]["b"]["commit"] == "c2"
    # each entry names the versions it ran with and how loaded the machine was
    assert a["torch"] == "t" and "triton" in a and "load_average_1min" in a
    # keys sorted: the tracked file's diff after a GPU call shows only what changed
    assert open(path).read() == json.dumps(data, indent=2, sort_keys=True)


def test_hgan_bench_results_sends_the_medians_elsewhere_and_keeps_the_commit(tmp_path):
    # bench/results/ is tracked: a trial run may write its medians elsewhere, and the commit
    # is still this checkout's (it was found from the results folder's location)
    code = ("import sys; sys.path.insert(0, 'bench'); import _results\n"
            "_results.environment = lambda device='cuda': {'device': 'GPU-X', 'commit': 'c'}\n"
            "print(_results.record('leapfrog', 'a', {'median_s': 1.0}))\n"
            "print(_results.commit())")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "HGAN_COMMIT"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={**env, "HGAN_BENCH_RESULTS": str(tmp_path / "mine")}, check=True)
    path, sha = out.stdout.split()
    assert path == str(tmp_path / "mine" / "GPU-X.json")
    assert json.load(open(path))["results"]["leapfrog"]["a"]["median_s"] == 1.0
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    assert sha == (head.stdout.strip() if head.returncode == 0 else "unknown")


def test_a_partial_speedup_entry_keeps_the_ratios_it_did_not_retime(tmp_path, monkeypatch):
    # A -k run that timed reference and reference_compiled only replaced the whole entry:
    # the stored analytic ratios vanished.
    env = {"device": "GPU-X", "commit": "c1", "torch": "t", "triton": None}
    monkeypatch.setattr(_results, "RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(_results, "environment", lambda device="cuda": dict(env))
    _results.record("leapfrog", "speedup/B64/fwd", {"analytic_over_reference": 3.6,
                                                    "compiled_over_reference": 1.1}, partial=True)
    env["commit"] = "c2"
    path = _results.record("leapfrog", "speedup/B64/fwd", {"compiled_over_reference": 1.05},
                           partial=True)
    e = json.load(open(path))["results"]["leapfrog"]["speedup/B64/fwd"]
    assert e["compiled_over_reference"] == 1.05 and e["commit"] == "c2"
    assert e["analytic_over_reference"] == 3.6
    assert e["earlier"] == {"analytic_over_reference": {"commit": "c1",
                                                        "measured": e["earlier"][
                                                            "analytic_over_reference"]["measured"]}}
    # re-timing it takes it off the earlier list; an entry written whole keeps nothing old
    env["commit"] = "c3"
    _results.record("leapfrog", "speedup/B64/fwd", {"analytic_over_reference": 3.0}, partial=True)
    e = json.load(open(path))["results"]["leapfrog"]["speedup/B64/fwd"]
    assert e["analytic_over_reference"] == 3.0 and e["earlier"] == {
        "compiled_over_reference": {"commit": "c2", "measured": e["earlier"][
            "compiled_over_reference"]["measured"]}}
    # left out again: it still names c2, where its value was measured, not c3
    env["commit"] = "c4"
    _results.record("leapfrog", "speedup/B64/fwd", {"analytic_over_reference": 3.1}, partial=True)
    e = json.load(open(path))["results"]["leapfrog"]["speedup/B64/fwd"]
    assert e["compiled_over_reference"] == 1.05
    assert e["earlier"]["compiled_over_reference"]["commit"] == "c2"
    # every ratio re-timed: nothing is earlier, and no empty "earlier" is left behind
    _results.record("leapfrog", "speedup/B64/fwd", {"analytic_over_reference": 3.2,
                                                    "compiled_over_reference": 1.0}, partial=True)
    assert "earlier" not in json.load(open(path))["results"]["leapfrog"]["speedup/B64/fwd"]
    _results.record("leapfrog", "speedup/B64/fwd", {"x": 1.0})
    e = json.load(open(path))["results"]["leapfrog"]["speedup/B64/fwd"]
    assert "earlier" not in e and "analytic_over_reference" not in e and e["x"] == 1.0


def test_merge_keeps_what_the_device_file_already_holds(tmp_path):
    # `python bench/_results.py merge FILE` replaced bench/results/<device>.json with FILE's
    # entries: every other section of that device was deleted.
    out = tmp_path / "out"
    out.mkdir()
    _write(out / "GPU-X.json", {"device": "GPU-X", "commit": "c0", "results": {
        "datagen": {"d": 1}, "leapfrog": {"x": 0, "z": 5}}})
    new = _write(tmp_path / "new.json", {"device": "GPU-X", "commit": "c3",
                                         "results": {"leapfrog": {"x": 7}}})
    merged = json.load(open(_results.merge([new], out_dir=str(out))))
    assert merged["results"] == {"datagen": {"d": 1}, "leapfrog": {"x": 7, "z": 5}}
    assert merged["commit"] == "c3"


def test_results_merge_command_says_what_is_wrong_in_one_line(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "bench", "_results.py")
    r = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage:")
    r = subprocess.run([sys.executable, script, "merge", str(tmp_path / "missing.json")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: cannot read ") and "missing.json" in r.stderr


def test_results_name_no_commit_outside_a_git_tree(tmp_path, monkeypatch):
    # the copy a GPU machine gets has no .git: "unknown", not the HEAD of some repository
    # the copy happens to sit in
    monkeypatch.delenv("HGAN_COMMIT", raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    outer = tmp_path / "outer"
    (outer / "copy" / "bench").mkdir(parents=True)
    subprocess.run(git + ["init", "-q", str(outer)], check=True)
    subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "outer"], cwd=outer, check=True)
    outer_head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=outer, capture_output=True,
                                text=True).stdout.strip()
    monkeypatch.setattr(_results, "REPO_ROOT", str(outer / "copy"))
    assert _results.commit() == "unknown"
    # the checkout itself: its HEAD
    monkeypatch.setattr(_results, "REPO_ROOT", str(outer))
    assert _results.commit() == outer_head


def _ptxas_module(monkeypatch):
    """bench/ptxas_report.py imported for its text functions (it refuses TRITON_INTERPRET, and
    points TRITON_CACHE_DIR at a folder of its own: both restored afterwards). The kernels
    are imported first, so they stay decorated for the interpreter."""
    pytest.importorskip("triton")
    import importlib
    import importlib.util
    for kernels in ("latency", "streamed", "throughput", "tile"):
        importlib.import_module(f"hgan.kernels.leapfrog.{kernels}")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", os.environ.get("TRITON_CACHE_DIR", ""))
    spec = importlib.util.spec_from_file_location(
        "ptxas_report_under_test", os.path.join(os.path.dirname(__file__), "..", "bench",
                                                "ptxas_report.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ptxas_report_shows_the_line_that_says_why_a_compile_failed(monkeypatch):
    ptxas = _ptxas_module(monkeypatch)
    # PTXASError: the fatal line, not the repro command after it
    err = RuntimeError("PTXAS error: Internal Triton PTX codegen error\n`ptxas` stderr:\n"
                       "ptxas fatal   : Value 'sm_12' is not defined for option 'gpu-name'\n\n"
                       "Repro command: /x/ptxas -lineinfo --gpu-name=sm_12 /tmp/a.ptx")
    assert ptxas._cause(err) == "ptxas fatal   : Value 'sm_12' is not defined for option 'gpu-name'"
    # CompilationError: the source first, its cause last
    err = ValueError("at 9:23:\ndef _kernel(x):\n    r = tl.arange(0, 100)\n"
                     "                       ^\narange's range must be a power of 2")
    assert ptxas._cause(err) == "arange's range must be a power of 2"


def test_ptxas_report_parses_the_ptxas_log_and_merges_saved_rows(tmp_path, monkeypatch):
    ptxas = _ptxas_module(monkeypatch)
    log = ("ptxas info    : Compiling entry function '_leapfrog_bwd_kernel' for 'sm_90a'\n"
           "ptxas info    : Function properties for _leapfrog_bwd_kernel\n"
           "    40 bytes stack frame, 24 bytes spill stores, 32 bytes spill loads\n"
           "ptxas info    : Used 168 registers, used 1 barriers, 384 bytes cmem[0]\n")
    assert ptxas.parse_ptxas(log) == {"registers": 168, "spill_stores": 24, "spill_loads": 32,
                                      "stack": 40}
    with pytest.raises(ValueError, match="unrecognised"):
        ptxas.parse_ptxas("ptxas info    : Used 168 registers")
    key = dict(kernel="fwd", width=128, block_b=16, num_warps=8, maxnreg=None, chunk=32,
               precision="ieee")
    path = tmp_path / "ptxas.json"
    path.write_text(json.dumps({"rows": [dict(key, registers=200),
                                         dict(key, width=32, registers=90)]}))
    merged = ptxas.merge_rows(str(path), [dict(key, registers=180)])
    assert merged == [dict(key, width=32, registers=90), dict(key, registers=180)]


def test_leapfrog_bench_speedups_are_baseline_time_over_variant_time(monkeypatch):
    import test_bench_leapfrog as bench
    recorded = {}
    monkeypatch.setattr(bench, "record", lambda section, name, payload, device, **kw:
                        recorded.update({name: payload}))
    monkeypatch.setattr(bench, "_medians", {
        ("reference", 64, "fwdbwd"): 0.010, ("reference_compiled", 64, "fwdbwd"): 0.004,
        ("analytic", 64, "fwdbwd"): 0.002, ("fused", 64, "fwdbwd"): 0.001,
        ("fused", 64, "fwd"): 0.0005})
    bench._record_ratios(64, "fwdbwd")
    assert recorded == {"speedup/B64/fwdbwd": pytest.approx({
        "reference_compiled_over_reference": 2.5, "analytic_over_reference": 5.0,
        "fused_over_reference": 10.0, "analytic_over_reference_compiled": 2.0,
        "fused_over_reference_compiled": 4.0})}


def test_trainstep_bench_speedup_is_baseline_step_over_variant_step(monkeypatch):
    import test_bench_trainstep as bench
    recorded = {}
    monkeypatch.setattr(bench, "record", lambda section, name, payload, device, **kw:
                        recorded.update({name: payload}))
    # Only this session's medians pair: a baseline stored by another run is not read.
    monkeypatch.setattr(bench, "_medians", {
        ("baseline", 32): 0.2, ("optimised", 32): 0.05, ("captured", 32): 0.01,
        ("captured", 64): 0.5})
    bench.record_speedup(32)
    assert recorded == {"speedup_32px": pytest.approx({
        "optimised_over_baseline": 4.0, "captured_over_baseline": 20.0,
        "baseline_median_step_s": 0.2, "optimised_median_step_s": 0.05,
        "captured_median_step_s": 0.01})}
    recorded.clear()
    bench.record_speedup(64)     # no baseline timed at 64 px: the stored entry stays
    assert recorded == {}


def test_leapfrog_table_recommend_takes_an_error_of_1e_4_and_the_largest_shared_batch():
    # "within 1e-4" is inclusive: a variant measured at exactly 1e-4 of float64 qualifies
    table = _leapfrog_table()
    rows = _rows(("fused_latency", 16, 1.0), ("fused_tile", 16, 3.0),
                 ("fused_latency", 64, 1.0), ("fused_tile", 64, 3.0))
    edge = dict(_ALL_ACCURATE, **{"fused_latency/B64": 1e-4, "fused_latency/B1031": 1e-4})
    assert table.recommend(rows, edge)["latency_max_rows"] == 64
    edge = dict(_ALL_ACCURATE, **{"fused_latency/B1031": 1.0001e-4})
    assert table.recommend(rows, edge)["latency_max_rows"] == 0
    # tf32x3 is accurate and faster than the default dispatch at 2048 and 65536; bf16x3,
    # faster still at 2048 but slower at 65536 (the largest batch both ran), does not win
    errors = dict(_ALL_ACCURATE, **{f"fused_tile_tf32x3/B{b}": 5e-6 for b in (64, 1031)})
    rows = _rows(("fused_latency", 1024, 1.0), ("fused_tile", 1024, 2.0),
                 ("fused_latency", 2048, 3.0), ("fused_tile", 2048, 2.0),
                 ("fused", 2048, 2.0), ("fused", 65536, 90.0),
                 ("fused_throughput", 2048, 1.0), ("fused_throughput", 65536, 12.0),
                 ("fused_tile_tf32x3", 2048, 1.5), ("fused_tile_tf32x3", 65536, 10.0))
    assert table.recommend(rows, errors)["split_above_latency"] == "fused_tile_tf32x3"


def test_leapfrog_table_crossover_is_complete_only_when_every_batch_was_measured(
        tmp_path, monkeypatch, capsys):
    # the crossover at two batches: the budget runs out after the latency layout's row at the
    # second, so its tile row is missing and no switch point may be recommended from the first
    table = _leapfrog_table()
    _smoke_with_stage(table, monkeypatch, "cross", (6, 7))
    ms = {("reference", 2): 10.0, ("fused", 2): 2.0}
    out, timed, _ = _fake_table_main(table, monkeypatch, tmp_path, budget_s=100.0, ms=ms,
                                     cost=lambda v, b: 90.0 if (v, b) == ("fused_latency", 7)
                                     else 0.0)
    assert ("fused_latency", 7) in [t[:2] for t in timed]
    assert ("fused_tile", 7) not in [t[:2] for t in timed]
    assert not out["cross_complete"] and "latency_max_rows" not in out["recommend"]
    # a forward alone has no eager twin: no "x eager" ratio on its line (the reference's
    # 10 ms over its 2 ms would read 5.0x)
    fwd_line = next(line for line in capsys.readouterr().out.splitlines()
                    if line.startswith("fused (fwd) ") and " 2 " in line)
    assert not re.search(r"\d\.\dx", fwd_line) and fwd_line.split()[4] == "-", fwd_line


def test_record_stamps_win_over_a_payload_naming_a_commit(tmp_path, monkeypatch):
    # an entry names the commit and versions it was measured with, whatever the payload says
    monkeypatch.setattr(_results, "RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(_results, "environment", lambda device="cuda": {
        "device": "GPU-X", "commit": "c9", "torch": "t9", "triton": "tr9"})
    path = _results.record("leapfrog", "a", {"ms": 1.0, "commit": "stale", "torch": "old"})
    e = json.load(open(path))["results"]["leapfrog"]["a"]
    assert (e["ms"], e["commit"], e["torch"], e["triton"]) == (1.0, "c9", "t9", "tr9")


def test_a_bench_run_prints_the_ratios_it_recorded(tmp_path, monkeypatch):
    # The speed-ups (the figures README's "-k" runs are for) went only into the JSON file: the
    # terminal showed the paired test's whole loop time (3.6 s) and no ratio.
    import importlib.util
    monkeypatch.setattr(_results, "RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(_results, "WRITTEN", set())
    monkeypatch.setattr(_results, "RATIOS", {})
    paired = {"analytic_median_s": 0.02, "analytic_over_reference_median_paired": 2.16,
              "analytic_over_reference_quartiles": [2, 2.3]}
    _results.record("leapfrog", "paired/B64/fwdbwd", paired, device="cpu")
    _results.record("leapfrog", "analytic/B64/fwd", {"median_s": 0.009}, device="cpu")
    # a time ratio reads the other way: the line did not say which way each one read
    _results.record("dv_layout", "channels_last_3d/32px/fp32",
                    {"median_s": 0.011, "channels_last_3d_over_ncdhw_time": 1.1}, device="cpu")
    spec = importlib.util.spec_from_file_location(
        "bench_conftest", os.path.join(os.path.dirname(_results.__file__), "conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)

    class Reporter:
        lines = []

        def write_line(self, line):
            self.lines.append(line)

    reporter = Reporter()
    conftest.pytest_terminal_summary(reporter)
    assert reporter.lines[0].startswith("medians recorded in ")
    assert reporter.lines[1:] == [
        "ratios recorded by this run, keys as in the file (speed-up X_over_Y = Y's time / X's, "
        "above 1 when X is faster; time ratio X_over_Y_time = X's time / Y's, below 1 when X "
        "is faster):",
        "  leapfrog paired/B64/fwdbwd: analytic_over_reference_median_paired = 2.16 (speed-up)",
        "  dv_layout channels_last_3d/32px/fp32: channels_last_3d_over_ncdhw_time = 1.1 "
        "(time ratio)"]


def test_bf16_gradients_measures_every_parameter_against_float64(capsys):
    """bench/bf16_gradients.py on a tiny model: a gradient for every parameter of G_I, D_I and
    D_V; its fp32 column is fp32 rounding against float64, its bf16 column bf16's (8-bit
    operands: above 1e-3, far below 1), and another batch's gradient is another gradient."""
    import copy
    from operator import attrgetter

    import bf16_gradients
    from hgan.models import ModelConfig, build_models
    torch.manual_seed(0)
    models = build_models(ModelConfig(resolution=16, ngf=4, ndf=4, clip_frames=4, motion_dim=4,
                                      content_dim=4, hidden=8, integrator="analytic"))
    wide = copy.deepcopy(models)
    for path in bf16_gradients.NETS:
        attrgetter(path)(wide).double()

    def run(m, seed, dtype, amp):
        return bf16_gradients.gradients(m, models, seed, 4, 4, dtype, amp)
    ref = run(wide, 1, torch.float64, False)
    want = {f"{path}.{k}" for path in bf16_gradients.NETS
            for k, _ in attrgetter(path)(models).named_parameters()}
    assert set(ref) == want
    rel = {name: {k: float((g[k] - ref[k]).norm() / ref[k].norm()) for k in ref}
           for name, g in (("fp32", run(models, 1, torch.float32, False)),
                           ("bf16", run(models, 1, torch.float32, True)),
                           ("other", run(wide, 2, torch.float64, False)))}
    assert max(rel["fp32"].values()) < 1e-4
    assert 1e-3 < max(rel["bf16"].values()) and min(rel["other"].values()) > 1e-2
    with pytest.raises(SystemExit):
        bf16_gradients.main(["--frames", "4"])
    assert "need --frames >= 16" in capsys.readouterr().err
    bf16_gradients.main(["--seeds", "1", "--batch", "2", "--model", "mocogan"])
    assert "parameters over seeds [1], at most " in capsys.readouterr().out


def test_split_errors_measures_both_precisions_against_float64(monkeypatch, tmp_path, capsys):
    """bench/split_errors.py, one case: a JSON line per case, and the split measured, not
    fp32 again (its error is the 16-bit split's, well above ieee's, within the contract)."""
    import split_errors
    from hgan.kernels.leapfrog import fused
    monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", fused.LATENCY_MAX_ROWS)  # restored after
    out = tmp_path / "errors.jsonl"
    device = "cuda" if torch.cuda.is_available() else "cpu"   # as the suite runs the kernels
    worst = split_errors.main(["--max-cases", "1", "--out", str(out), "--device", device])
    line, = out.read_text().splitlines()
    case = json.loads(line)
    assert capsys.readouterr().out.strip() == line
    assert case["k"] <= 32 and all(16 <= w <= 128 for w in case["widths"])
    assert case["layout"] == str(fused._layout(case["B"], case["frames"], *case["widths"],
                                               "bf16x3"))
    assert worst == {"ieee": case["ieee"], "bf16x3": case["bf16x3"]}
    assert case["ieee"] < 1e-6 and 10 * case["ieee"] < case["bf16x3"] <= 1e-4, case


def test_leapfrog_table_recommend_reads_a_saved_run_cut_short_or_whole(tmp_path, monkeypatch,
                                                                         capsys):
    # A run killed before its last line leaves $OUT/leapfrog_table.json (saved after every
    # row): --recommend prints the dispatch table those rows say, as the run would have; a
    # crossover cut short sets no switch point. Not such a file: one line, exit 2.
    table = _leapfrog_table()
    out, _, _ = _fake_table_main(table, monkeypatch, tmp_path / "whole")
    capsys.readouterr()
    saved = tmp_path / "whole" / "leapfrog_table.json"
    assert table.main(["--recommend", str(saved)]) == out["recommend"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "dispatch table, as measured: " + json.dumps(out["recommend"])
    assert lines[1].startswith("kernels/leapfrog/fused.py, as measured: ") and len(lines) == 2
    assert json.loads(lines[1].split(": ", 1)[1]) == out["fused_py"]
    assert "latency_max_rows" in out["recommend"]
    cut = dict(out, rows=[r for r in out["rows"] if r["batch"] != table.STAGES["cross"][-1]])
    del cut["recommend"], cut["cross_complete"]
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    rec = table.main(["--recommend", str(tmp_path / "cut.json")])
    assert "latency_max_rows" not in rec and rec == table.recommend(cut["rows"], cut["errors"],
                                                                     False)
    (tmp_path / "bad.json").write_text('{"device": "GPU-X"}')
    for bad in (tmp_path / "bad.json", tmp_path / "missing.json"):
        with pytest.raises(SystemExit) as e:
            table.main(["--recommend", str(bad)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and f"{bad}: not a leapfrog_table.json" in err


def test_ptxas_report_compiles_the_gru_kernels_for_sm90_without_spills():
    # hgan.kernels.gru at the warps it launches with (forward 4, backward 8), both modes: a
    # spill or a register count over the limit here is a regression of the mocogan rollout
    triton = pytest.importorskip("triton")
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia",
                                       "bin", "ptxas")):
        pytest.skip("this triton wheel ships no ptxas")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TRITON_INTERPRET": "off",
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "bench/ptxas_report.py", "--gru"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"gru_(\w+)\s+hidden=100\s+(\w+)\s+warps=(\d)\s+regs=\s*(\d+)\s+"
                      r"spill st/ld=(\d+)/(\d+)", out.stdout)
    assert sorted((d, m, int(w)) for d, m, w, *_ in rows) == [
        ("backward", "feedback", 8), ("backward", "noise", 8),
        ("forward", "feedback", 4), ("forward", "noise", 4)], out.stdout
    assert all(0 < int(r) <= 255 and s == l == "0" for *_, r, s, l in rows), out.stdout
