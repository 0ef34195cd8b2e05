"""The GPU shell scripts, on CPU: they parse, and trainstep.sh's stage bookkeeping (what comes
back in $OUT, the budget, one stage's failure) holds with a stand-in interpreter.

Time on a GPU machine is short and a remote runner may copy back at most 8 files from $OUT:
a script mistake found there costs the run. The Python the scripts run is tested elsewhere
(test_bench_tools.py, test_bench_trainstep_table.py); here python3 is a stub that logs its
arguments and writes a results file, so only the shell logic runs.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time

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
    exit 3 after writing. env.txt gets a line per call: its PYTHONPATH and whether $OUT
    already held the results file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$*" >> "{tmp_path}/calls.txt"
        in_out=$([ -f "$OUT/stub-device.json" ] && echo 1 || echo 0)
        echo "PYTHONPATH=$PYTHONPATH results_in_out=$in_out" >> "{tmp_path}/env.txt"
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
    assert len(stages) == len(_TRAINSTEP_STAGES) and "--prep" in stages[0] \
        and "--busy capture" in stages[1]
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
    assert log.count("skipped, ") == len(_TRAINSTEP_STAGES), log  # under 20 s left: none starts
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


def _table1_stub_bin(tmp_path, pack_check_passes=True, export_fails=False, grid_fails=False,
                     grid_writes_table=True, mps_client_ok=False, leftovers=False,
                     fake_torch=None, real_filter=False):
    """python3 for table1.sh: logs each call (and in env.txt its PYTHONPATH, PYTHONUNBUFFERED
    and MPS pipe) and plays each step's part: the data step leaves the pendulum files, the grid
    a run's checkpoint and compare.md (not with `grid_writes_table` False: a grid cut off before
    its table, which --report-only then writes), export its folder; the lone evaluation fails
    (exit 7) without its --data file. `leftovers`: the grid leaves two jobs naming $GRID/ on
    their command lines, one that stops on SIGTERM (saying so in <name>.stopped) and one that
    ignores it, each with its pid in <name>.pid, and `sleep` takes 0.05 s. `fake_torch`: the
    versions step runs the real interpreter on that folder's torch stand-in. `real_filter`:
    the warm-up's share of TRAIN_ARGS comes from the real grid.model_args (a torch import,
    seconds under load), else it is TRAIN_ARGS as given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    versions = (f'PYTHONPATH="{fake_torch}:$PYTHONPATH" exec "{sys.executable}" -' if fake_torch
                else 'cat > /dev/null; echo "torch stub"; echo "commit $HGAN_COMMIT"')
    spawn = ""
    if leftovers:
        (bin_dir / "leftover.py").write_text(textwrap.dedent("""\
            import os, signal, sys, time
            path = sys.argv[1]
            def stop(*_):
                open(path + ".stopped", "w").close()
                sys.exit(0)
            signal.signal(signal.SIGTERM, stop if path.endswith("term") else signal.SIG_IGN)
            open(path + ".pid", "w").write(str(os.getpid()))
            time.sleep(60)
            """))
        (bin_dir / "sleep").write_text("#!/usr/bin/env bash\ncommand -p sleep 0.05\n")
        spawn = textwrap.dedent(f"""\
            for kind in term stubborn; do
              "{sys.executable}" "{bin_dir}/leftover.py" "$g/leftover-$kind" > /dev/null 2>&1 &
            done
            for _ in $(seq 200); do
              [ -f "$g/leftover-term.pid" ] && [ -f "$g/leftover-stubborn.pid" ] && break
              command -p sleep 0.05
            done""").replace("\n", "\n            ")
    (bin_dir / "python3").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$*" >> "{tmp_path}/calls.txt"
        echo "PYTHONPATH=$PYTHONPATH PYTHONUNBUFFERED=${{PYTHONUNBUFFERED:-}}" \\
             "MPS_PIPE=${{CUDA_MPS_PIPE_DIRECTORY:-}} :: $*" >> "{tmp_path}/env.txt"
        args="$*"
        arg_after() {{ local want=$1; shift; while [ $# -gt 1 ]; do
            [ "$1" = "$want" ] && {{ echo "$2"; return; }}; shift; done; }}
        case "$args" in
          -) {versions} ;;
          *torch.ones*) {'exit 0' if mps_client_ok else 'echo "CUDA error: stub"; exit 1'} ;;
          *"import model_args"*) {f'exec "{sys.executable}" "$@"' if real_filter else
                                  'shift 2; echo "$*"'} ;;
          *"-m pytest"*) {'exit 0' if pack_check_passes else 'echo "1 failed"; exit 1'} ;;
          *"hgan.experiments export"*) {'echo "error: stub"; exit 2' if export_fails else
                                        'mkdir -p "$(arg_after --to "$@")"; touch "$(arg_after --to "$@")/compare.md"'} ;;
          *"-m hgan.evaluate"*)
            d=$(arg_after --data "$@"); [ -f "$d" ] || {{ echo "no such file: $d"; exit 7; }} ;;
          *"hgan.experiments table1"*--data-only*)
            g=$(arg_after --out "$@"); mkdir -p "$g/data/pendulum"
            touch "$g/data/pendulum/train.h5" "$g/data/pendulum/test.h5"; echo "data ready" ;;
          *"hgan.experiments table1"*--report-only*)
            echo "| from the runs on disk |" > "$(arg_after --out "$@")/compare.md" ;;
          *"hgan.experiments table1"*)
            g=$(arg_after --out "$@")
            mkdir -p "$g/runs/pendulum-hgan-s0/checkpoints"
            touch "$g/runs/pendulum-hgan-s0/checkpoints/last.pt" "$g/grid.json" \\
                  "$g/runs/pendulum-hgan-s0/train.log"
            {'echo "| table |" > "$g/compare.md"' if grid_writes_table else ':'}; echo "grid done"
            {spawn}
            {'exit 1' if grid_fails else ':'} ;;
          *) echo "stub $args" ;;
        esac
        """))
    # `nvidia-smi dmon` runs until it is killed: its pid and arguments in dmon.pid/dmon.args
    (bin_dir / "nvidia-smi").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        if [ "${{1:-}}" = dmon ]; then
          echo "$*" > "{tmp_path}/dmon.args"; echo $$ > "{tmp_path}/dmon.pid"
          echo "#Time gpu pwr gtemp"
          while true; do echo "12:00:00 0 612 71"; command -p sleep 0.05; done
        fi
        echo 'Stub GPU'
        """))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def _ends(pid, within_s=10.0):
    """Whether process `pid` is gone, or a zombie, within `within_s` (a killed orphan is
    reaped by whoever adopts it, a moment later)."""
    t_end = time.monotonic() + within_s
    while time.monotonic() < t_end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("pack_check_passes", [True, False])
def test_table1_script_warms_the_grid_shapes_and_returns_at_most_eight_files(
        tmp_path, pack_check_passes):
    bin_dir = _table1_stub_bin(tmp_path, pack_check_passes, real_filter=True)
    repo = _copy_tree(tmp_path)
    out, grid, dest = tmp_path / "out", tmp_path / "grid", tmp_path / "dest" / "table1"
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, PACK="15", HGAN_COMMIT="abc1234",
             GRID_DIR=str(grid), DEST=str(dest),
             GRID_ARGS="--batch-size 16 --frames=16 --train-traj 1000",
             TRAIN_ARGS="--loader gpu-resident --gru-input noise --log-every 100")
    assert r.returncode == 0, r.stderr + r.stdout
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    warm = [c for c in calls if c.startswith("train.py")]
    # the kernels are compiled at the grid's batch and frames, with its training flags, on
    # a dataset of their own (never the grid's); the warm-up is an hgan run, which train.py
    # would refuse mocogan's --gru-input
    assert len(warm) == 1 and "--batch-size 16" in warm[0] and "--frames=16" in warm[0]
    assert "--train-traj" not in warm[0] and "--loader gpu-resident" in warm[0]
    assert "--log-every 100" in warm[0] and "--gru-input" not in warm[0]
    assert str(grid) not in warm[0]
    grid_runs = [c for c in calls if "table1" in c and "--deadline" in c]
    assert len(grid_runs) == 1 and "--gru-input noise" in grid_runs[0]   # the grid's own filter
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
    assert len(limits) == len(_TRAINSTEP_STAGES) and all(lim <= 50 for lim in limits), limits
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
    # trainstep.sh on a CPU ran its stages (each failing, reason in a log) and exited 0.
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


def _timeouts(path):
    """What the _timeout_stub was asked: [(seconds, kill-after or None, the command)]."""
    got = []
    for line in path.read_text().splitlines():
        args, kill = line.split(), None
        while args[0].startswith("-"):
            kill = int(args[1]) if args[0] == "-k" else kill
            args = args[2:]
        got.append((int(args[0]), kill, " ".join(args[1:])))
    return got


def _fake_torch(tmp_path):
    """A torch stand-in for the real interpreter: FAKE_CUDA=1 a machine with a CUDA device, 0
    one without, unset a machine without torch (ImportError, a traceback on stderr)."""
    folder = tmp_path / "fake_torch"
    folder.mkdir()
    (folder / "torch.py").write_text(textwrap.dedent("""\
        import os
        if os.environ.get("FAKE_CUDA") not in ("0", "1"):
            raise ImportError("No module named 'torch' (stand-in)")
        __version__ = "0.0-stub"

        class version:
            cuda = "12.stub"

        class cuda:
            @staticmethod
            def is_available():
                return os.environ["FAKE_CUDA"] == "1"

            @staticmethod
            def get_device_name(i):
                return "Stub H200"
        """))
    return folder


@pytest.mark.parametrize("env, want", [
    # the defaults (LIMIT_S 570, TRAIN_S 240): the data step until 300 s before the end, the
    # kernel warm-up at most 150 s, the grid until 120 s before the end, training 240 s; no
    # pack check without PACK
    ({}, dict(pack=None, data=270, warm=150, grid=450, deadline=240, evaluates=True)),
    # 250 s gone by bash's clock: the data step's 30 s floor, no room for the warm-up (20 s,
    # under its 30), 200 s for the grid; TRAIN_S loses what the pack check, the data and the
    # warm-up took, not what ran before them
    ({"SECONDS": "250", "PACK": "15"},
     dict(pack=150, data=30, warm=None, grid=200, deadline=240, evaluates=True)),
    # 480 s gone: the grid's 30 s floor (timeout 0 is no limit), the deadline's 60 s floor, and
    # with under 100 s left no lone evaluation
    ({"SECONDS": "480", "TRAIN_S": "30"},
     dict(pack=None, data=30, warm=None, grid=30, deadline=60, evaluates=False)),
    # the runbook's four-minute check: LIMIT_S=240 TRAIN_S=90 skips the warm-up, still
    # evaluates one run alone
    ({"LIMIT_S": "240", "TRAIN_S": "90"},
     dict(pack=None, data=30, warm=None, grid=120, deadline=90, evaluates=True)),
], ids=["defaults", "250s-gone", "480s-gone", "runbook-4min"])
def test_table1_script_budgets_each_step_from_what_is_left(tmp_path, env, want):
    bin_dir = _table1_stub_bin(tmp_path)
    _timeout_stub(bin_dir, tmp_path / "timeouts.txt")
    repo = _copy_tree(tmp_path)
    out, grid = tmp_path / "out", tmp_path / "grid"
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, GRID_DIR=str(grid),
             DEST=str(tmp_path / "dest"), **env)
    assert r.returncode == 0, r.stderr + r.stdout
    got = {}
    for limit, kill, cmd in _timeouts(tmp_path / "timeouts.txt"):
        step = ("pack" if "-m pytest" in cmd else "data" if "--data-only" in cmd else
                "warm" if cmd.startswith("python3 train.py") else
                "grid" if "--deadline" in cmd else "evaluates" if "hgan.evaluate" in cmd else cmd)
        assert step not in got, step
        got[step] = (limit, kill, cmd)
    # computed from bash's SECONDS, which ticks on while the script runs: a few seconds less
    for step in ("pack", "data", "warm", "grid"):
        if want[step] is None:
            assert step not in got, got
        else:
            assert want[step] - 5 <= got[step][0] <= want[step], (step, got[step])
    deadline = int(re.search(r"--deadline (\d+)", got["grid"][2])[1])
    assert want["deadline"] - 5 <= deadline <= want["deadline"]
    assert (got.get("evaluates", (None,))[0] == 90) == want["evaluates"]
    assert ("eval-one.log" in os.listdir(out)) == want["evaluates"]
    log = (out / "grid.log").read_text()
    limit = env.get("LIMIT_S", "570")
    assert (f"kernel warm-up skipped: LIMIT_S {limit} leaves no room for it" in log) == (
        want["warm"] is None)
    # docs/experiments.md: 20,000 iterations each, 15 processes; PACK only when it was asked
    for step in ("data", "grid"):
        assert "--iters 20000" in got[step][2] and "--parallel 15" in got[step][2]
    assert f"--pack {15 if want['pack'] else 1}" in got["grid"][2]
    assert "MPS" not in (out / "versions.txt").read_text()      # MPS=1 only


@pytest.mark.parametrize("grid_args", [
    "--batch-size 16 --frames 12 --resolution 64 --train-traj 1000",
    "--batch-size=16 --frames=12 --resolution=64 --train-traj=1000"], ids=["space", "equals"])
def test_table1_script_hands_the_grid_settings_to_each_of_its_steps(tmp_path, grid_args):
    bin_dir = _table1_stub_bin(tmp_path)
    repo = _copy_tree(tmp_path)
    out, grid = tmp_path / "out", tmp_path / "grid"
    # an earlier call's warm-up run (finished) would be refused as the warm-up's --out
    (tmp_path / "hgan-warm" / "run").mkdir(parents=True)
    (tmp_path / "hgan-warm" / "run" / "summary.json").write_text("{}")
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, GRID_DIR=str(grid),
             DEST=str(tmp_path / "dest"), SYSTEMS="two_body,pendulum", GRID_ARGS=grid_args,
             TRAIN_ARGS="--log-every 7", EVAL_ARGS="--probe-epochs 3", PYTHONUNBUFFERED="")
    assert r.returncode == 0, r.stderr + r.stdout
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    flags = grid_args.split()
    shape = " ".join(flags[:6] if flags[1] == "16" else flags[:3])   # batch, frames, resolution
    frames = "--frames 12" if flags[1] == "16" else "--frames=12"
    # the warm-up: 2 iterations of the first system at the grid's shapes, with its flags
    warm = [c for c in calls if c.startswith("train.py")]
    assert len(warm) == 1 and shape in warm[0] and "--train-traj" not in warm[0], warm
    assert "--system two_body " in warm[0] and "--iters 2 " in warm[0]
    assert "--log-every 7" in warm[0]
    assert f"--out {tmp_path}/hgan-warm/run " in warm[0]
    assert not (tmp_path / "hgan-warm").exists()       # the stub train.py leaves nothing
    # the data step and the grid get every grid flag, the grid the runs' flags too
    data = [c for c in calls if "--data-only" in c]
    grid_run = [c for c in calls if "--deadline" in c]
    assert len(data) == len(grid_run) == 1 and grid_args in data[0] and grid_args in grid_run[0]
    assert "--train-args --log-every 7 --eval-args --probe-epochs 3" in grid_run[0]
    # the lone evaluation: the grid's frames (not its training shapes), the runs' evaluation
    # flags, and a fresh copy of the data (exit 0: its --data file was there)
    evals = [c for c in calls if "-m hgan.evaluate" in c]
    assert len(evals) == 1 and frames in evals[0] and evals[0].endswith("--probe-epochs 3")
    assert "--resolution" not in evals[0] and "--batch-size" not in evals[0]
    assert str(grid) not in evals[0].split("--data ")[1]
    assert "exit 0," in (out / "eval-one.log").read_text().splitlines()[-1]
    assert not [c for c in calls if "--report-only" in c]        # the grid wrote its table
    # every step imports this tree, and prints its status lines as they come (tee'd)
    env = (tmp_path / "env.txt").read_text().splitlines()
    assert len(env) == len(calls)
    assert all(line.startswith(f"PYTHONPATH={repo}:") or line.startswith(f"PYTHONPATH={repo} ")
               for line in env), env[0]
    assert all(" PYTHONUNBUFFERED=1 " in line for line in env)


def test_table1_script_returns_its_eight_files_and_tarballs_that_unpack_where_documented(
        tmp_path):
    bin_dir = _table1_stub_bin(tmp_path, pack_check_passes=False)
    repo = _copy_tree(tmp_path)
    out, grid = tmp_path / "out", tmp_path / "grid"
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, PACK="15", GRID_DIR=str(grid),
             DEST=str(tmp_path / "dest"))
    assert r.returncode == 0, r.stderr + r.stdout
    # the script's header: at most 8 files, these
    assert sorted(os.listdir(out)) == sorted([
        "nvidia-smi.txt", "versions.txt", "pack-check.txt", "grid.log", "eval-one.log",
        "compare.md", "table1.tar.gz", "logs.tar.gz"])
    assert "Stub GPU" in (out / "nvidia-smi.txt").read_text()
    # the pack check: the packed-capture tests alone; its failure's tail in versions.txt
    checks = [c for c in (tmp_path / "calls.txt").read_text().splitlines() if "-m pytest" in c]
    assert len(checks) == 1 and checks[0].endswith(
        "-m cuda tests/test_train_capture.py -k packed"), checks
    assert "1 failed" in (out / "pack-check.txt").read_text()
    assert "1 failed" in (out / "versions.txt").read_text()
    # `tar xzf table1.tar.gz -C docs/results` makes docs/results/table1, with the versions and
    # the lone evaluation's line beside the table
    with tarfile.open(out / "table1.tar.gz") as tar:
        names = set(tar.getnames())
        assert {"table1/compare.md", "table1/versions.txt", "table1/eval-one.txt"} <= names
        assert all(n == "table1" or n.startswith("table1/") for n in names), names
        one = tar.extractfile("table1/eval-one.txt").read().decode()
    assert one == (out / "eval-one.log").read_text().splitlines()[-1] + "\n"
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"grid.json", "runs/pendulum-hgan-s0/train.log", "dmon.txt"} <= set(
            tar.getnames())
        dmon = tar.extractfile("dmon.txt").read().decode().splitlines()
    # the card's monitor: power, utilisation, clocks, violations every 10 s, with the time;
    # it ran through the script and was stopped at its end
    assert (tmp_path / "dmon.args").read_text().split() == [
        "dmon", "-s", "pucv", "-d", "10", "-o", "T"]
    assert dmon[0] == "#Time gpu pwr gtemp" and dmon[1] == "12:00:00 0 612 71"
    assert _ends(int((tmp_path / "dmon.pid").read_text()))


def test_table1_script_makes_the_table_of_a_grid_cut_short_from_its_runs(tmp_path):
    # a grid killed (timeout's -k) before it wrote compare.md: the table is written from what
    # is on disk, comes back, and the committed results stay
    bin_dir = _table1_stub_bin(tmp_path, grid_fails=True, grid_writes_table=False)
    repo = _copy_tree(tmp_path)
    out, grid, dest = tmp_path / "out", tmp_path / "grid", tmp_path / "dest" / "table1"
    dest.mkdir(parents=True)
    (dest / "compare.md").write_text("committed table\n")
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, GRID_DIR=str(grid), DEST=str(dest))
    assert r.returncode == 1
    reports = [c for c in (tmp_path / "calls.txt").read_text().splitlines()
               if "--report-only" in c]
    assert len(reports) == 1 and f"--out {grid} " in reports[0]
    assert (out / "compare.md").read_text() == "| from the runs on disk |\n"
    assert (dest / "compare.md").read_text() == "committed table\n"
    assert (out / "table1.tar.gz").exists()


def test_table1_script_stops_the_grid_jobs_left_behind_before_it_times_an_evaluation(tmp_path):
    # A grid killed by timeout's -k leaves its jobs running: they are asked to stop (TERM: a
    # run checkpoints), and killed if they do not, before the lone evaluation is timed.
    bin_dir = _table1_stub_bin(tmp_path, leftovers=True)
    repo = _copy_tree(tmp_path)
    out, grid = tmp_path / "out", tmp_path / "grid"
    try:
        r = _run("bench/gpu/table1.sh", repo, bin_dir, out, GRID_DIR=str(grid),
                 DEST=str(tmp_path / "dest"))
        assert r.returncode == 0, r.stderr + r.stdout
        assert "stopping the grid's leftover jobs" in (out / "grid.log").read_text()
        assert (grid / "leftover-term.stopped").exists()          # asked, not killed
        for _ in range(50):   # the KILL is sent; give the kernel a moment
            left = subprocess.run(["pgrep", "-f", "--", f"{grid}/"], capture_output=True,
                                  text=True).stdout.split()
            if not left:
                break
            subprocess.run(["sleep", "0.1"])
        assert not left, left
    finally:
        for name in ("leftover-term.pid", "leftover-stubborn.pid"):
            try:
                os.kill(int((grid / name).read_text()), 9)
            except (OSError, ValueError):
                pass


@pytest.mark.parametrize("mps", ["absent", "client fails", "on"])
def test_table1_script_runs_without_mps_when_it_cannot_start(tmp_path, mps):
    if mps == "absent" and shutil.which("nvidia-cuda-mps-control"):
        pytest.skip("this machine has an MPS control daemon")
    bin_dir = _table1_stub_bin(tmp_path, mps_client_ok=mps == "on")
    if mps != "absent":   # logs its arguments (-d) or what it reads (quit)
        ctl = bin_dir / "nvidia-cuda-mps-control"
        ctl.write_text(f'#!/usr/bin/env bash\nif [ $# -gt 0 ]; then echo "$*"; else cat; fi'
                       f' >> "{tmp_path}/mps.txt"\n')
        ctl.chmod(0o755)
    repo = _copy_tree(tmp_path)
    out = tmp_path / "out"
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, MPS="1", GRID_DIR=str(tmp_path / "grid"),
             DEST=str(tmp_path / "dest"))
    assert r.returncode == 0, r.stderr + r.stdout
    versions = (out / "versions.txt").read_text()
    grid_env = [line for line in (tmp_path / "env.txt").read_text().splitlines()
                if "--deadline" in line]
    assert len(grid_env) == 1
    if mps == "absent":
        assert ("MPS: asked for, but nvidia-cuda-mps-control is not here; running without"
                in versions)
    else:
        # the daemon is stopped either way: at once when a client failed under it, at exit
        assert (tmp_path / "mps.txt").read_text().splitlines() == ["-d", "quit"]
    if mps == "client fails":
        assert "MPS: asked for, but a CUDA client failed under it; running without" in versions
    if mps == "on":
        # the daemon's pipe and log in the script's scratch folder ($TMPDIR), not a fixed path
        pipe = tmp_path / "hgan-mps" / "pipe"
        assert "MPS: on" in versions and f" MPS_PIPE={pipe} " in grid_env[0]
        assert pipe.is_dir() and (tmp_path / "hgan-mps" / "log").is_dir()
    else:   # the grid's processes are not pointed at a daemon that is not there
        assert " MPS_PIPE= " in grid_env[0]


def test_table1_script_names_the_commit_and_the_device(tmp_path):
    # the versions step itself (the other tests' stub skips it), on a torch stand-in
    if not shutil.which("git"):
        pytest.skip("no git")
    bin_dir = _table1_stub_bin(tmp_path, fake_torch=_fake_torch(tmp_path))
    repo = _copy_tree(tmp_path)
    for commit, want in (("abc1234", "commit abc1234"), ("", "commit unknown (no git here)")):
        out = tmp_path / f"out{commit}"
        r = _run("bench/gpu/table1.sh", repo, bin_dir, out, HGAN_COMMIT=commit, FAKE_CUDA="1",
                 GIT_CEILING_DIRECTORIES=str(tmp_path), GRID_DIR=str(tmp_path / "grid"),
                 DEST=str(tmp_path / "dest"))
        assert r.returncode == 0, r.stderr + r.stdout
        lines = (out / "versions.txt").read_text().splitlines()
        assert lines[0] == "torch 0.0-stub cuda 12.stub device Stub H200", lines
        assert want in lines, lines


_TRAINSTEP_STAGES = [("prep", 120), ("capture-32", 100), ("eager-32", 50), ("capture-64", 60),
                     ("eager-64", 40), ("pack-32", 90), ("pack-32-conn32", 60),
                     ("mocogan-32", 80), ("compile-32", 90), ("compile-64", 90)]


def _trainstep_stages(tmp_path, budget, **env):
    """trainstep.sh with the stand-ins and the logging `timeout`: [(stage, its limit or None
    where it was skipped, the seconds its log line says were left)] in the log's order, each
    stage call's command line and environment line, and the limits `timeout` was given."""
    bin_dir = _stub_bin(tmp_path)
    _timeout_stub(bin_dir, tmp_path / "timeouts.txt")
    repo = _copy_tree(tmp_path)
    out = tmp_path / "out"
    r = _run("bench/gpu/trainstep.sh", repo, bin_dir, out, **env)
    assert r.returncode == 0, r.stderr
    seen = []
    for line in (out / "trainstep.txt").read_text().splitlines():
        ran = re.fullmatch(r"== (\S+) \(limit (\d+)s, at (\d+)s\)", line)
        skipped = re.fullmatch(r"== (\S+): skipped, (-?\d+)s left of (\d+)s", line)
        if ran:
            seen.append((ran[1], int(ran[2]), budget - int(ran[3])))
        elif skipped:
            assert int(skipped[3]) == budget, line
            seen.append((skipped[1], None, int(skipped[2])))
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    env_lines = (tmp_path / "env.txt").read_text().splitlines()
    assert len(env_lines) == len(calls)
    assert all(e.startswith(f"PYTHONPATH={repo}:") or e.startswith(f"PYTHONPATH={repo} ")
               for e in env_lines), env_lines          # every call imports this tree
    stages = [(c, e) for c, e in zip(calls, env_lines)
              if "trainstep_table.py" in c and "--summary" not in c]
    timeouts = tmp_path / "timeouts.txt"    # none where every stage was skipped
    limits = [t[0] for t in _timeouts(timeouts)] if timeouts.exists() else []
    return seen, stages, limits


@pytest.mark.parametrize("env, budget", [({"TRAINSTEP_BUDGET_S": "1000"}, 1000),
                                         ({"SECONDS": "250"}, 340)],
                         ids=["budget-1000", "default-90s-left"])
def test_trainstep_script_runs_its_stages_in_order_each_within_what_is_left(
        tmp_path, env, budget):
    # The runbook: a budget skips the last stages, torch.compile first, then the pack, then
    # 64 px; the default budget is 340 s; a stage runs under its own limit or what is left,
    # whichever is less. bash's SECONDS stands for the time gone.
    data = tmp_path / "data"
    seen, stages, limits = _trainstep_stages(tmp_path, budget, TRAINSTEP_DATA=str(data), **env)
    assert [s[0] for s in seen] == [name for name, _ in _TRAINSTEP_STAGES]
    for (name, limit, left), (_, own) in zip(seen, _TRAINSTEP_STAGES):
        assert limit == min(own, left), (name, limit, left)
    assert limits == [s[1] for s in seen] and len(stages) == len(_TRAINSTEP_STAGES)
    assert all(f" --data {data} " in c for c, _ in stages), stages
    # each stage's results come back as soon as it ends (a call cut off keeps them)
    assert [e.endswith("results_in_out=1") for _, e in stages] == \
        [False] + [True] * (len(_TRAINSTEP_STAGES) - 1)
    if budget == 1000:
        # what each stage measures (docs/gpu-runbook.md): eager and captured, each of bf16,
        # channels-last, torch.compile and fused Adam on the captured step, at 32 and 64 px,
        # the device-busy share, then 4 and 15 captured runs in one process
        args = dict(zip([n for n, _ in _TRAINSTEP_STAGES], [c for c, _ in stages]))
        variants = {32: set(), 64: set()}
        for c in args.values():
            if "--variants" in c:
                px = int(c.split("--resolution ")[1].split()[0])
                variants[px] |= set(c.split("--variants ")[1].split("--")[0].split())
        assert {"baseline", "fused", "capture", "capture_bf16", "capture_channels_last",
                "capture_compile", "capture_fused_adam"} <= variants[32], variants
        assert {"baseline", "fused", "capture", "capture_bf16", "capture_channels_last",
                "capture_compile"} <= variants[64], variants
        assert "--busy capture" in args["capture-32"] and "--busy fused" in args["eager-32"]
        assert args["pack-32"].endswith("--pack 4 15")
        assert args["pack-32-conn32"].endswith("--pack 15 --connections 32")


def test_trainstep_script_starts_a_stage_with_20_s_left(tmp_path):
    # 20 s left is enough (under 20 is not). bash's SECONDS (320 of the default 340 s gone)
    # may tick before the first stage: then no stage sees exactly 20 s, so try again.
    for attempt in range(5):
        (tmp_path / str(attempt)).mkdir()
        seen, stages, limits = _trainstep_stages(tmp_path / str(attempt), 340, SECONDS="320")
        assert [s[0] for s in seen] == [name for name, _ in _TRAINSTEP_STAGES]
        for name, limit, left in seen:
            assert (left < 20) if limit is None else (left >= 20 and limit == left), seen
        assert limits == [s[1] for s in seen if s[1] is not None] and len(stages) == len(limits)
        if any(left == 20 for _, _, left in seen):
            return
    pytest.skip("bash's clock ticked before the first stage in every attempt")


def test_trainstep_script_fails_the_call_for_one_failed_stage(tmp_path):
    bin_dir = _stub_bin(tmp_path, fail_on="--pack 4 15")
    repo = _copy_tree(tmp_path)
    out = tmp_path / "out"
    r = _run("bench/gpu/trainstep.sh", repo, bin_dir, out)
    assert r.returncode == 1 and "1 stage(s) failed" in r.stderr, r.stderr
    assert "== pack-32: rc 3" in (out / "trainstep.txt").read_text()
    assert "RuntimeError: stub" in r.stdout          # the failing stage's error on the console


@pytest.mark.parametrize("script,args", [("trainstep.sh", []), ("cuda_tests.sh", []),
                                         ("table1.sh", []), ("run.sh", ["check"])])
def test_gpu_scripts_stop_when_need_cuda_sh_is_missing(tmp_path, script, args):
    # without the check every stage would run unchecked (on a CPU: each fails in its log)
    bin_dir = _stub_bin(tmp_path)
    repo = _copy_tree(tmp_path)
    (repo / "bench" / "gpu" / "need_cuda.sh").unlink()
    r = subprocess.run(["bash", f"bench/gpu/{script}", *args], cwd=repo, capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, OUT=str(tmp_path / "out"),
                                                       PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert r.returncode == 2 and "need_cuda.sh" in r.stderr, r.stderr
    assert not (tmp_path / "calls.txt").exists()


@pytest.mark.parametrize("cuda", ["1", "0", "no torch"])
def test_need_cuda_asks_torch_and_says_why_it_stops_in_one_line(tmp_path, cuda):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    script = tmp_path / "measure.sh"
    script.write_text(f'PY=python3\n. "{ROOT}/bench/gpu/need_cuda.sh"\nneed_cuda\necho measuring\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
               PYTHONPATH=str(_fake_torch(tmp_path)))
    env.pop("FAKE_CUDA", None)
    if cuda != "no torch":
        env["FAKE_CUDA"] = cuda
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, env=env)
    if cuda == "1":
        assert (r.returncode, r.stdout, r.stderr) == (0, "measuring\n", "")
    else:   # no device, or no torch at all (its traceback is not the message)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr == ("measure.sh: no CUDA device here (torch.cuda.is_available() is "
                            "False): this script measures a GPU\n")


def _cuda_tests_stub(tmp_path, other_rc=0):
    """python3 for cuda_tests.sh: the capture run waits (up to 5 s) for the other run to have
    started, failing if it never does (the two run side by side), and ends 0.3 s after it; the
    other run exits `other_rc`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    started = tmp_path / "other-started"
    (bin_dir / "python3").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$*" >> "{tmp_path}/calls.txt"
        case "$*" in
          *"-m cuda tests/test_train_capture.py")
            for _ in $(seq 100); do [ -f "{started}" ] && break; command -p sleep 0.05; done
            [ -f "{started}" ] || {{ echo "the other run never started beside this one"; exit 1; }}
            command -p sleep 0.3; echo "capture tests passed" ;;
          *"-m pytest"*) touch "{started}"; echo "other tests ran"; exit {other_rc} ;;
          *) echo "stub $*" ;;
        esac
        """))
    (bin_dir / "python3").chmod(0o755)
    return bin_dir


def test_cuda_tests_script_runs_both_files_side_by_side_within_its_limit(tmp_path):
    bin_dir = _cuda_tests_stub(tmp_path)
    _timeout_stub(bin_dir, tmp_path / "timeouts.txt")
    repo = _copy_tree(tmp_path)
    out = tmp_path / "out"
    r = _run("bench/gpu/cuda_tests.sh", repo, bin_dir, out)
    assert r.returncode == 0, r.stderr
    log = (out / "cuda-tests.txt").read_text()
    assert log.count("== rc 0") == 2 and "capture tests passed" in log   # waited for both
    # "in at most ~135 s" (the header), within the runbook's < 2.5 min, each with its kill
    limits = _timeouts(tmp_path / "timeouts.txt")
    assert len(limits) == 2 and all(kill and lim + kill <= 135 for lim, kill, _ in limits), limits
    # -v: a run cut off by its timeout still says which tests passed
    assert all(" -v " in cmd for _, _, cmd in limits)


@pytest.mark.parametrize("rc", [2, 124], ids=["interrupted", "cut-off"])
def test_cuda_tests_script_fails_when_the_other_run_is_cut_off_or_interrupted(tmp_path, rc):
    bin_dir = _cuda_tests_stub(tmp_path, other_rc=rc)
    repo = _copy_tree(tmp_path)
    out = tmp_path / "out"
    r = _run("bench/gpu/cuda_tests.sh", repo, bin_dir, out)
    assert r.returncode == 1, r.stderr
    log = (out / "cuda-tests.txt").read_text()
    assert f"== rc {rc}" in log and "== rc 0" in log


def test_table1_script_split_over_two_calls(tmp_path):
    # PREP_ONLY=1: the data and the kernel warm-ups, nothing else (no pack check, no grid, no
    # export); the second call (PACK_CHECK=0 EVAL_ONE=0 WARM=0) spends its time on the grid:
    # no pack check, no warm-up, no lone evaluation, 30 s kept after the grid instead of 120.
    bin_dir = _table1_stub_bin(tmp_path)
    _timeout_stub(bin_dir, tmp_path / "timeouts.txt")
    repo = _copy_tree(tmp_path)
    out, grid, dest = tmp_path / "out", tmp_path / "grid", tmp_path / "dest" / "table1"
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, PACK="15", PREP_ONLY="1",
             LIMIT_S="450", GRID_DIR=str(grid), DEST=str(dest))
    assert r.returncode == 0, r.stderr + r.stdout
    steps = [cmd for _, _, cmd in _timeouts(tmp_path / "timeouts.txt")]
    # the data, then the kernels of hgan (the fused integrator) and of mocogan (its GRU)
    assert len(steps) == 3 and "--data-only --probes --eval-args" in steps[0], steps
    assert all(s.startswith("python3 train.py") for s in steps[1:])
    assert "--model hgan " in steps[1] and "--model mocogan " in steps[2]
    assert f"--out {tmp_path}/hgan-warm-mocogan/run" in steps[2]
    assert "prep only (PREP_ONLY=1)" in (out / "grid.log").read_text()
    assert not (out / "table1.tar.gz").exists() and not dest.exists()
    (tmp_path / "timeouts.txt").unlink()
    r = _run("bench/gpu/table1.sh", repo, bin_dir, out, PACK="15", PACK_CHECK="0", EVAL_ONE="0",
             WARM="0", LIMIT_S="585", GRID_DIR=str(grid), DEST=str(dest))
    assert r.returncode == 0, r.stderr + r.stdout
    got = {("pack" if "-m pytest" in c else "data" if "--data-only" in c else
            "warm" if c.startswith("python3 train.py") else "grid" if "--deadline" in c else
            "evaluates" if "hgan.evaluate" in c else c): (limit, c)
           for limit, _, c in _timeouts(tmp_path / "timeouts.txt")}
    assert "pack" not in got and "evaluates" not in got and "eval-one.log" not in os.listdir(out)
    assert "warm" not in got and "kernel warm-up skipped: WARM=0" in (out / "grid.log").read_text()
    assert "--probes" not in got["data"][1]
    assert 585 - 30 - 5 <= got["grid"][0] <= 585 - 30 and "--pack 15" in got["grid"][1]
    assert "packed-capture test skipped: PACK_CHECK=0" in (out / "versions.txt").read_text()
    assert (out / "table1.tar.gz").exists() and (dest / "compare.md").exists()
