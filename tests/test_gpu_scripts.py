"""The GPU shell scripts, on CPU: they parse, and trainstep.sh's stage bookkeeping (what comes
back in $OUT, the budget, one stage's failure) holds with a stand-in interpreter.

Time on a GPU machine is short and a remote runner may copy back at most 8 files from $OUT:
a script mistake found there costs the run. The Python the scripts run is tested elsewhere
(test_bench_tools.py, test_bench_trainstep_table.py); here python3 is a stub that logs its
arguments and writes a results file, so only the shell logic runs.
"""
import glob
import os
import shutil
import subprocess
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "bench", "gpu", "*.sh"))) + [
    os.path.join(ROOT, ".ci", "run")]


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_script_parses(script):
    r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _stub_bin(tmp_path, fail_on=None):
    """python3 and nvidia-smi stand-ins on a PATH of their own. The python3 stub appends its
    arguments to calls.txt and, for a trainstep_table stage, writes a results file the way the
    real one does (bench/results/<device>.json); `fail_on` makes the stage with that argument
    exit 3 after writing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$*" >> "{tmp_path}/calls.txt"
        case "$*" in
          *--summary*) echo "| variant | videos/s |"; exit 0 ;;
          *trainstep_table.py*)
            echo '{{"device": "stub"}}' > bench/results/stub-device.json
            echo "32 px: capture 1234 videos/s"
            case "$*" in *"{fail_on or '@@never@@'}"*) echo "RuntimeError: stub"; exit 3 ;; esac
            exit 0 ;;
          *) echo "stub $*"; exit 0 ;;
        esac
        """))
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'Stub GPU, 1 MiB, 0'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def _copy_tree(tmp_path):
    """The scripts run from a repo root and write bench/results: give them a copy."""
    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "bench"), repo / "bench",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return repo


def _run(script, repo, bin_dir, out, **env):
    e = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", OUT=str(out),
             TMPDIR=str(out.parent), **env)
    return subprocess.run(["bash", script], cwd=repo, env=e, capture_output=True, text=True,
                          timeout=120)


def test_trainstep_script_returns_its_own_results_within_eight_files(tmp_path):
    bin_dir = _stub_bin(tmp_path, fail_on="--variants baseline fused")
    repo = _copy_tree(tmp_path)
    committed = sorted(os.listdir(repo / "bench" / "results"))
    assert committed and "stub-device.json" not in committed
    out = tmp_path / "out"
    r = _run("bench/gpu/trainstep.sh", repo, bin_dir, out)
    # the failed stage costs only itself, and the call's exit status says one failed
    assert r.returncode == 1 and "2 stage(s) failed" in r.stderr, r.stderr   # eager 32, 64
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    stages = [c for c in calls if "trainstep_table.py" in c and "--summary" not in c]
    # every stage ran, in the script's order of importance, the prep first
    assert len(stages) == 8 and "--prep" in stages[0] and "--busy capture" in stages[1]
    assert "capture_compile" in stages[-1]
    assert any("--summary" in c for c in calls)
    # only what this call wrote comes back (not other devices' committed results), and few
    # enough files for a runner that copies back 8
    got = sorted(os.listdir(out))
    assert got == ["stub-device.json", "trainstep-table.md", "trainstep.txt", "versions.txt"]
    assert not set(committed) & set(got)
    log = (out / "trainstep.txt").read_text()
    assert "== eager-32: rc 3" in log and "RuntimeError: stub" in log   # a failed stage ...
    assert "== capture-64: rc 0" in log                               # ... costs only itself
    assert "Stub GPU" in (out / "versions.txt").read_text()
    assert not [f for f in os.listdir(tmp_path) if f.startswith("tmp")]   # mktemp files gone


def test_trainstep_script_skips_stages_past_its_budget(tmp_path):
    bin_dir = _stub_bin(tmp_path)
    repo = _copy_tree(tmp_path)
    out = tmp_path / "out"
    r = _run("bench/gpu/trainstep.sh", repo, bin_dir, out, TRAINSTEP_BUDGET_S="10")
    assert r.returncode == 0, r.stderr
    log = (out / "trainstep.txt").read_text()
    assert log.count("skipped, ") == 8, log          # under 20 s left: no stage starts
    calls = (tmp_path / "calls.txt").read_text()
    assert "--prep" not in calls and "--summary" in calls


def test_cuda_tests_script_logs_both_runs_with_their_exit_codes(tmp_path):
    bin_dir = _stub_bin(tmp_path)
    repo = _copy_tree(tmp_path)
    out = tmp_path / "out"
    r = _run("bench/gpu/cuda_tests.sh", repo, bin_dir, out)
    assert r.returncode == 0, r.stderr
    calls = [c for c in (tmp_path / "calls.txt").read_text().splitlines() if "-m pytest" in c]
    # the capture tests in a process of their own, the rest without them (side by side)
    assert len(calls) == 2 and all("-m cuda" in c for c in calls)
    assert sorted(c.endswith("-m cuda tests/test_train_capture.py") for c in calls) == [False, True]
    assert sum("--ignore=tests/test_train_capture.py" in c for c in calls) == 1
    log = (out / "cuda-tests.txt").read_text()
    assert log.count("== rc 0") == 2
    assert log.index("== tests/test_train_capture.py") < log.index("== the other cuda tests")
    assert os.listdir(out) == ["cuda-tests.txt"]   # nothing else takes one of the 8 files
    assert not [f for f in os.listdir(tmp_path) if f.startswith("tmp")]   # mktemp files gone


def test_cuda_tests_script_fails_when_a_test_run_fails(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        case "$*" in *"-m cuda tests/test_train_capture.py") echo "1 failed"; exit 1 ;; esac
        echo "stub $*"
        """))
    (bin_dir / "python3").chmod(0o755)
    repo = _copy_tree(tmp_path)
    out = tmp_path / "out"
    r = _run("bench/gpu/cuda_tests.sh", repo, bin_dir, out)
    assert r.returncode == 1, r.stderr          # exited 0 whatever the tests did
    log = (out / "cuda-tests.txt").read_text()
    assert "== rc 1" in log and "== rc 0" in log


def _table1_stub_bin(tmp_path, pack_check_passes=True, export_fails=False, grid_fails=False):
    """python3 for table1.sh: logs each call and plays each step's part: the data step leaves
    the pendulum files, the grid a run's checkpoint and compare.md, export its folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$*" >> "{tmp_path}/calls.txt"
        args="$*"
        arg_after() {{ local want=$1; shift; while [ $# -gt 1 ]; do
            [ "$1" = "$want" ] && {{ echo "$2"; return; }}; shift; done; }}
        case "$args" in
          -) cat > /dev/null; echo "torch stub"; echo "commit $HGAN_COMMIT" ;;
          *"-m pytest"*) {'exit 0' if pack_check_passes else 'echo "1 failed"; exit 1'} ;;
          *"hgan.experiments export"*) {'echo "error: stub"; exit 2' if export_fails else
                                        'mkdir -p "$(arg_after --to "$@")"; touch "$(arg_after --to "$@")/compare.md"'} ;;
          *"table1"*--data-only*)
            g=$(arg_after --out "$@"); mkdir -p "$g/data/pendulum"
            touch "$g/data/pendulum/train.h5" "$g/data/pendulum/test.h5"; echo "data ready" ;;
          *"table1"*--report-only*) ;;
          *"table1"*)
            g=$(arg_after --out "$@")
            mkdir -p "$g/runs/pendulum-hgan-s0/checkpoints"
            touch "$g/runs/pendulum-hgan-s0/checkpoints/last.pt" "$g/grid.json" \\
                  "$g/runs/pendulum-hgan-s0/train.log"
            echo "| table |" > "$g/compare.md"; echo "grid done"; {'exit 1' if grid_fails else ':'} ;;
          *) echo "stub $args" ;;
        esac
        """))
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'Stub GPU'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("pack_check_passes", [True, False])
def test_table1_script_warms_the_grid_shapes_and_returns_at_most_eight_files(
        tmp_path, pack_check_passes):
    bin_dir = _table1_stub_bin(tmp_path, pack_check_passes)
    repo = _copy_tree(tmp_path)
    out, grid, dest = tmp_path / "out", tmp_path / "grid", tmp_path / "dest" / "table1"
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, PACK="15", HGAN_COMMIT="abc1234",
             GRID_DIR=str(grid), DEST=str(dest),
             GRID_ARGS="--batch-size 16 --frames=16 --train-traj 1000",
             TRAIN_ARGS="--loader gpu-resident --log-every 100")
    assert r.returncode == 0, r.stderr + r.stdout
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    warm = [c for c in calls if c.startswith("train.py")]
    # the kernels are compiled at the grid's batch and frames, with its training flags, on
    # a dataset of their own (never the grid's)
    assert len(warm) == 1 and "--batch-size 16" in warm[0] and "--frames=16" in warm[0]
    assert "--train-traj" not in warm[0] and "--loader gpu-resident" in warm[0]
    assert str(grid) not in warm[0]
    grid_runs = [c for c in calls if "table1" in c and "--deadline" in c]
    assert len(grid_runs) == 1
    assert f"--pack {15 if pack_check_passes else 1}" in grid_runs[0]
    evals = [c for c in calls if "-m hgan.evaluate" in c]
    assert len(evals) == 1 and "--frames=16" in evals[0]
    got = os.listdir(out)
    assert len(got) <= 8 and {"versions.txt", "grid.log", "compare.md", "table1.tar.gz",
                              "eval-one.log"} <= set(got), got
    versions = (out / "versions.txt").read_text()
    assert "commit abc1234" in versions
    assert ("packed-capture test failed" in versions) != pack_check_passes


def _timeout_stub(bin_dir, log):
    """A `timeout` that logs its arguments and runs the command without a limit."""
    (bin_dir / "timeout").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$*" >> "{log}"
        while [ "${{1#-}}" != "$1" ]; do case "$1" in -k|-s) shift 2 ;; *) shift ;; esac; done
        shift
        exec "$@"
        """))
    (bin_dir / "timeout").chmod(0o755)


def test_trainstep_script_caps_each_stage_at_what_is_left_of_its_budget(tmp_path):
    bin_dir = _stub_bin(tmp_path)
    _timeout_stub(bin_dir, tmp_path / "timeouts.txt")
    repo = _copy_tree(tmp_path)
    out = tmp_path / "out"
    r = _run("bench/gpu/trainstep.sh", repo, bin_dir, out, TRAINSTEP_BUDGET_S="50")
    assert r.returncode == 0, r.stderr
    limits = [int(line.split()[2]) for line in
              (tmp_path / "timeouts.txt").read_text().splitlines()]
    # every stage runs (the stub takes no time), none with a limit past the 50 s budget; the
    # prep's own 120 s is cut to what is left
    assert len(limits) == 8 and all(lim <= 50 for lim in limits), limits
    assert limits[0] >= 40, limits


def _run_sh_stub_bin(tmp_path):
    """python3 for run.sh: every Python stage writes this device's results file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$*" >> "{tmp_path}/calls.txt"
        echo '{{"device": "stub"}}' > bench/results/stub-device.json
        echo "stub $*"
        """))
    (bin_dir / "python3").chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("stage, log", [("tune", "tune.txt"), ("leapfrog", "bench-leapfrog.txt"),
                                        ("train", "bench-train.txt")])
def test_run_script_returns_only_the_results_file_of_this_call(tmp_path, stage, log):
    # other devices' committed files would take slots of the 8 and make the documented merge
    # of the returned files refuse them all (one device per results file)
    bin_dir = _run_sh_stub_bin(tmp_path)
    repo = _copy_tree(tmp_path)
    committed = sorted(os.listdir(repo / "bench" / "results"))
    assert committed and "stub-device.json" not in committed
    out = tmp_path / "out"
    r = subprocess.run(["bash", "bench/gpu/run.sh", stage], cwd=repo, capture_output=True,
                       text=True, timeout=120,
                       env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", OUT=str(out),
                                TMPDIR=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == sorted(["stub-device.json", log])
    assert not [f for f in os.listdir(tmp_path) if f.startswith("tmp")]   # mktemp file gone


def test_table1_script_keeps_the_committed_results_when_the_export_fails(tmp_path):
    # It removed docs/results/table1 before exporting: a failed grid took the committed
    # results with it.
    repo = _copy_tree(tmp_path)
    out, grid, dest = tmp_path / "out", tmp_path / "grid", tmp_path / "dest" / "table1"
    dest.mkdir(parents=True)
    (dest / "compare.md").write_text("committed table\n")
    bin_dir = _table1_stub_bin(tmp_path, export_fails=True)
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, GRID_DIR=str(grid), DEST=str(dest))
    assert r.returncode != 0
    assert (dest / "compare.md").read_text() == "committed table\n"
    assert sorted(os.listdir(dest.parent)) == ["table1"]         # no half-made export left
    assert not (out / "table1.tar.gz").exists()
    assert "export of" in (out / "grid.log").read_text()
    # a grid that failed (cut short: its compare.md from --report-only) keeps it too, and
    # its export still comes back
    shutil.rmtree(tmp_path / "bin")
    bin_dir = _table1_stub_bin(tmp_path, grid_fails=True)
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, GRID_DIR=str(grid), DEST=str(dest))
    assert r.returncode == 1
    assert (dest / "compare.md").read_text() == "committed table\n"
    assert (out / "table1.tar.gz").exists() and "kept as it was" in (out / "grid.log").read_text()
    (out / "table1.tar.gz").unlink()
    # a working export replaces it (a trailing slash on DEST changes nothing)
    shutil.rmtree(tmp_path / "bin")
    bin_dir = _table1_stub_bin(tmp_path)
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, GRID_DIR=str(grid), DEST=f"{dest}/")
    assert r.returncode == 0, r.stderr + r.stdout
    assert {"compare.md", "versions.txt"} <= set(os.listdir(dest))
    assert not [f for f in os.listdir(dest) if f.startswith("table1")]   # not exported inside
    assert (dest / "compare.md").read_text() == ""
    assert (out / "table1.tar.gz").exists()
    assert sorted(os.listdir(dest.parent)) == ["table1"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("tmp")]   # mktemp dir gone


def _no_cuda_bin(tmp_path):
    """python3 of a machine without a GPU: torch.cuda.is_available() is False."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$*" >> "{tmp_path}/calls.txt"
        case "$*" in *cuda.is_available*) exit 1 ;; esac
        echo "stub $*"
        """))
    (bin_dir / "python3").chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("script,args", [("trainstep.sh", []), ("cuda_tests.sh", []),
                                         ("table1.sh", []), ("run.sh", ["check"]),
                                         ("run.sh", ["train"])])
def test_gpu_scripts_stop_at_once_without_cuda(tmp_path, script, args):
    # trainstep.sh on a CPU ran its 8 stages (each failing, reason in a log) and exited 0.
    bin_dir = _no_cuda_bin(tmp_path)
    repo = _copy_tree(tmp_path)
    out = tmp_path / "out"
    r = subprocess.run(["bash", f"bench/gpu/{script}", *args], cwd=repo, capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, OUT=str(out),
                                                       PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"{script}: no CUDA device here (torch.cuda.is_available() is "
                                f"False): this script measures a GPU")
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 1, calls                 # the check, and nothing after it


def test_a_gpu_script_run_through_a_symlink_still_checks_for_cuda(tmp_path):
    # need_cuda.sh was looked up beside the symlink: "No such file", then every stage ran
    bin_dir = _no_cuda_bin(tmp_path)
    repo = _copy_tree(tmp_path)
    link = tmp_path / "ts.sh"
    link.symlink_to(repo / "bench" / "gpu" / "trainstep.sh")
    r = subprocess.run(["bash", str(link)], cwd=repo, capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, OUT=str(tmp_path / "out"),
                                            PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert r.returncode == 2 and "no CUDA device here" in r.stderr, r.stderr
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 1


@pytest.mark.parametrize("args,msg", [([], "usage: bash bench/gpu/run.sh check|tune"),
                                      (["bench"], "unknown stage 'bench'")])
def test_run_script_names_a_missing_or_unknown_stage(tmp_path, args, msg):
    bin_dir = _no_cuda_bin(tmp_path)
    repo = _copy_tree(tmp_path)
    r = subprocess.run(["bash", "bench/gpu/run.sh", *args], cwd=repo, capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, OUT=str(tmp_path / "out"),
                                                       PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert r.returncode == 2 and r.stderr.startswith(msg), r.stderr
    assert not (tmp_path / "calls.txt").exists()
