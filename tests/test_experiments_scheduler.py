"""The grid's scheduler with stand-in jobs (small Python scripts, no torch): K at a time,
the training deadline, a failing run, and evaluation after training."""
import json
import os
import sys

import pytest

from hgan.evaluate.cli import build_parser, settings
from hgan.experiments import runner
from hgan.experiments.grid import GridSpec, Run

# A stand-in for train.py: tqdm-like progress on stderr, SIGTERM -> checkpoint and exit 0.
FAKE_TRAIN = r"""
import json, os, signal, sys, time
run_dir, iters, fail = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
with open(os.path.join(run_dir, "spans.txt"), "a") as f:
    f.write(f"start {time.time()}\n")
it = 0
while it < iters and not stop:
    time.sleep(0.02)
    it += 1
    sys.stderr.write(f"\rtrain: {it}/{iters} [00:00<00:01, 50.00it/s]")
    sys.stderr.flush()
    if fail and it == 3:
        sys.exit(3)
open(os.path.join(run_dir, "checkpoints", "last.pt"), "wb").close()
json.dump({"iteration": it, "stopped": "SIGTERM" if stop else None,
           "stats": {"speed/it_per_s": 50.0}}, open(os.path.join(run_dir, "summary.json"), "w"))
with open(os.path.join(run_dir, "spans.txt"), "a") as f:
    f.write(f"end {time.time()}\n")
"""
FAKE_EVAL = r"""
import json, os, sys
run_dir, metrics, settings = sys.argv[1], sys.argv[2].split(","), json.loads(sys.argv[3])
it = json.load(open(os.path.join(run_dir, "summary.json")))["iteration"]
os.makedirs(os.path.join(run_dir, "eval"), exist_ok=True)
json.dump({"iteration": it, "metrics": metrics, "settings": settings},
          open(os.path.join(run_dir, "eval", "results.json"), "w"))
"""


@pytest.fixture
def fake_jobs(monkeypatch):
    failing = set()
    monkeypatch.setattr(Run, "train_command", lambda self: [
        sys.executable, "-c", FAKE_TRAIN, self.dir, str(self.spec.iters),
        "1" if self.name in failing else "0"])
    monkeypatch.setattr(Run, "eval_command", lambda self: [
        sys.executable, "-c", FAKE_EVAL, self.dir, self.spec.eval_metrics,
        json.dumps(settings(build_parser().parse_args(self.eval_flags())))])
    monkeypatch.setattr(runner.datasets, "missing_splits", lambda spec, system: [])
    return failing


def _spans(run):
    times = [float(line.split()[1]) for line in open(run.path("spans.txt"))]
    return times[0], times[-1]


def test_k_at_a_time_then_evaluated(tmp_path, fake_jobs):
    spec = GridSpec(out=str(tmp_path), systems=("pendulum", "mass_spring"),
                    models=("hgan", "mocogan"), iters=15, eval_metrics="physics")
    grid = runner.GridRunner(spec, parallel=2, progress=False, log=lambda m: None)
    jobs = grid.plan()
    assert [j.kind for j in jobs].count("train") == 4 and [j.kind for j in jobs].count("eval") == 4
    grid.execute()
    assert all(j.state == "done" for j in jobs)
    spans = [_spans(r) for r in spec.runs()]
    for t, _ in spans:  # no more than 2 training runs overlap at any start
        assert sum(a <= t < b for a, b in spans) <= 2
    for run in spec.runs():
        assert run.trained() and run.evaluated()
        seg = run.record()["segments"]
        assert seg[0]["from"] == 0 and seg[0]["to"] == 15 and seg[0]["it_per_s_logged"] == 50.0
        assert "train: 15/15" in open(run.path("train.log")).read()
    assert runner.GridRunner(spec, parallel=2).plan() == []  # nothing left to do


def test_deadline_stops_training_and_evaluates_where_runs_stopped(tmp_path, fake_jobs):
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"),
                    iters=100_000, eval_metrics="physics")
    grid = runner.GridRunner(spec, parallel=4, deadline_s=1.0, progress=False, log=lambda m: None)
    grid.plan()
    grid.execute()      # returns: the deadline stopped 100,000-iteration runs (asserted below)
    for run in spec.runs():
        it = run.iteration()
        assert 0 < it < 100_000 and run.summary()["stopped"] == "SIGTERM"
        assert run.results()["iteration"] == it and run.evaluated()


def test_a_run_still_queued_at_the_deadline_is_skipped_not_waited_for(tmp_path, fake_jobs):
    # One slot: mocogan waits behind hgan when the deadline comes. It must be skipped (never
    # started, "not run"), and the grid end; a queued run that was neither skipped nor
    # started kept the grid looping ("1/4 jobs done, 0 running") past the deadline for good.
    import threading
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"),
                    iters=100_000, eval_metrics="physics")
    grid = runner.GridRunner(spec, parallel=1, deadline_s=1.0, progress=False, log=lambda m: None)
    jobs = {(j.kind, j.name): j for j in grid.plan()}
    hung = []

    def watchdog():          # ends a hung grid, so that the test fails instead of hanging
        hung.append(grid.status_line())
        grid.stopping = True
    timer = threading.Timer(60, watchdog)
    timer.start()
    try:
        grid.execute()
    finally:
        timer.cancel()
    assert not hung, hung
    hgan, moco = spec.runs()
    assert 0 < hgan.iteration() < 100_000 and hgan.evaluated()
    assert jobs["train", "pendulum-mocogan-s0"].state == "skipped"
    assert jobs["eval", "pendulum-mocogan-s0"].state == "skipped"
    assert not os.path.exists(moco.dir)


# A run the deadline's SIGTERM reaches before it has set up: hgan.train.pack's "SIGTERM
# before this run was set up: not started" (exit 143), or a train.py still importing torch
# (killed by the signal, -15). Nothing of it is written.
NOT_STARTED = r"""
import signal, sys, time
if sys.argv[1] == "exit":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(128 + signal.SIGTERM))
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["exit", "killed"])
def test_a_run_the_deadline_stops_before_it_starts_is_stopped_not_failed(tmp_path, fake_jobs,
                                                                         monkeypatch, how):
    # With --pack, runs are set up one at a time; one still waiting at the deadline never
    # trained. The deadline stopped it as it stopped the others: not a failure of the grid
    # (which would exit 1 and, in bench/gpu/table1.sh, keep the committed results).
    train = Run.train_command
    monkeypatch.setattr(Run, "train_command", lambda self: (
        [sys.executable, "-c", NOT_STARTED, how] if self.model == "mocogan" else train(self)))
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"),
                    iters=100_000, eval_metrics="physics")
    grid = runner.GridRunner(spec, parallel=4, deadline_s=1.0, progress=False, log=lambda m: None)
    jobs = {(j.kind, j.name): j for j in grid.plan()}
    grid.execute()
    assert jobs["train", "pendulum-mocogan-s0"].state == "stopped"
    assert jobs["eval", "pendulum-mocogan-s0"].state == "skipped"   # nothing to evaluate
    assert not any(j.state == "failed" for j in jobs.values())
    seg = spec.runs()[1].record()["segments"][-1]
    assert seg["interrupted"] and seg["to"] == 0
    hgan = spec.runs()[0]    # the run the deadline stopped mid-training: evaluated there
    assert 0 < hgan.iteration() < 100_000 and hgan.evaluated()


def test_a_failing_run_skips_its_evaluation_only(tmp_path, fake_jobs):
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"),
                    iters=10, eval_metrics="physics")
    fake_jobs.add("pendulum-hgan-s0")
    grid = runner.GridRunner(spec, parallel=2, progress=False, log=lambda m: None)
    jobs = {(j.kind, j.name): j for j in grid.plan()}
    grid.execute()
    assert jobs["train", "pendulum-hgan-s0"].state == "failed"
    assert jobs["eval", "pendulum-hgan-s0"].state == "skipped"
    assert jobs["eval", "pendulum-mocogan-s0"].state == "done"
    rec = spec.runs()[0].record()
    assert rec["segments"][-1]["returncode"] == 3
    assert not os.path.exists(spec.runs()[0].path("eval", "results.json"))
    json.loads(open(spec.runs()[1].path("eval", "results.json")).read())


def test_an_inline_evaluation_logs_why_its_input_was_refused(tmp_path):
    # In-process evaluation ends bad input with SystemExit(2); the job's log must keep the
    # one-line reason, not only "SystemExit: 2".
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=1)
    grid = runner.GridRunner(spec, parallel=1, progress=False, log=lambda m: None,
                             inline_eval=True)
    job, log = runner.Job("eval", "pendulum"), tmp_path / "eval.log"
    missing = tmp_path / "no-such-run" / "last.pt"
    grid._eval_inline(job, [sys.executable, "-m", "hgan.evaluate", "--checkpoint", str(missing),
                            "--out", str(tmp_path / "eval")], str(log))
    job.thread.join()
    assert job.error is not None and str(missing) in str(job.error)
    assert str(missing) in log.read_text() and "SystemExit" not in log.read_text()


# A stand-in for `python -m hgan.train.pack --tagged`: each run in a thread, its output
# tagged by index, its exit code last; SIGTERM stops every run with a checkpoint.
FAKE_PACK = r"""
import json, os, signal, sys, threading, time
argv, runs = sys.argv[1:], []
for a in argv:
    if a == "--":
        runs.append([])
    else:
        runs[-1].append(a)
stop, lock, capture_failed = [], threading.Lock(), []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
def say(i, text):
    with lock:
        sys.stdout.write(f"\x1e{i}{text}\n")
        sys.stdout.flush()
def one(i, run_dir, iters, fail):
    iters = int(iters)
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    with open(os.path.join(run_dir, "spans.txt"), "a") as f:
        f.write(f"start {time.time()}\n")
    say(i, f"n[hgan] run directory {run_dir}")
    it = 0
    while it < iters and not stop and not capture_failed:
        time.sleep(0.02)
        it += 1
        say(i, f"rtrain: {it}/{iters} [00:00<00:01, 50.00it/s]")
        if fail == "1" and it == 3:
            say(i, "x3")
            return
        if fail == "capture" and it == 3:  # the others stop with a checkpoint, exit 75
            capture_failed.append(1)
            say(i, "x1")
            return
    say(i, f"ntrain: {it}/{iters} [00:01<00:00, 50.00it/s]")  # tqdm's close: the last bar
    open(os.path.join(run_dir, "checkpoints", "last.pt"), "wb").close()
    stopped = "capture failed" if capture_failed else "SIGTERM" if stop else None
    json.dump({"iteration": it, "stopped": stopped,
               "stats": {"speed/it_per_s": 50.0}}, open(os.path.join(run_dir, "summary.json"), "w"))
    with open(os.path.join(run_dir, "spans.txt"), "a") as f:
        f.write(f"end {time.time()}\n")
    say(i, "x75" if capture_failed else "x0")
sys.stdout.write("a line of the process itself\n")
sys.stdout.write("a C++ warning without its newline")  # glued before the next tagged line
threads = [threading.Thread(target=one, args=(i, *r)) for i, r in enumerate(runs)]
[t.start() for t in threads]
while any(t.is_alive() for t in threads):
    time.sleep(0.01)
time.sleep(float(os.environ.get("FAKE_PACK_LINGER", "0")))  # tearing down after its runs
with open(os.environ.get("FAKE_PACK_EXITS", os.devnull), "a") as f:
    f.write(f"{time.time()}\n")
"""


@pytest.fixture
def fake_packs(fake_jobs, monkeypatch):
    launched = []

    def command(train_commands):
        launched.append(len(train_commands))
        cmd = [sys.executable, "-c", FAKE_PACK]
        for c in train_commands:  # c = [python, -c, FAKE_TRAIN, run_dir, iters, fail]
            cmd += ["--", *c[3:]]
        return cmd
    monkeypatch.setattr(runner, "pack_command", command)
    return fake_jobs, launched


def test_packs_take_one_slot_each_and_split_their_output_per_run(tmp_path, fake_packs):
    failing, launched = fake_packs
    failing.add("pendulum-mocogan-s0")
    spec = GridSpec(out=str(tmp_path), systems=("pendulum", "mass_spring"),
                    models=("hgan", "mocogan"), iters=15, eval_metrics="physics")
    grid = runner.GridRunner(spec, parallel=1, pack=2, progress=False, log=lambda m: None)
    jobs = {(j.kind, j.name): j for j in grid.plan()}
    grid.execute()
    assert launched == [2, 2]                         # two packs of two, one at a time
    spans = {r.name: _spans(r) for r in spec.runs()}
    starts = sorted(a for a, _ in spans.values())
    for t in starts:  # one slot: the two runs of one pack overlap, never three
        assert sum(a <= t < b for a, b in spans.values()) <= 2
    assert jobs["train", "pendulum-mocogan-s0"].state == "failed"
    assert jobs["eval", "pendulum-mocogan-s0"].state == "skipped"
    assert spec.runs()[1].record()["segments"][-1]["returncode"] == 3
    for run in spec.runs():
        if run.name == "pendulum-mocogan-s0":
            continue
        assert jobs["train", run.name].state == "done" and run.evaluated()
        log = open(run.path("train.log")).read()
        # its own lines, tqdm's updates collapsed to the last, the process's line too
        assert "train: 15/15" in log and "train: 14/15" not in log
        assert f"[hgan] run directory {run.dir}" in log and "a line of the process itself" in log
        assert "a C++ warning without its newline\n" in log
        others = [r.dir for r in spec.runs() if r.name != run.name]
        assert not any(f"run directory {d}\n" in log for d in others)
        assert run.record()["segments"][0]["it_per_s_logged"] == 50.0


@pytest.fixture
def slow_data(monkeypatch):
    """Each system's data is generated in the grid: mass_spring's takes longer."""
    import time
    monkeypatch.setattr(runner.datasets, "missing_splits", lambda spec, system: ["train"])
    monkeypatch.setattr(runner.datasets, "generate", lambda spec, system, splits, stop: time.sleep(
        1.0 if system == "mass_spring" else 0.05))


@pytest.mark.parametrize("deadline, packs", [(None, [2]), (30.0, [1, 1])])
def test_a_pack_waits_for_its_runs_data_unless_a_deadline_runs(tmp_path, fake_packs, slow_data,
                                                               deadline, packs):
    # Without a deadline both runs share one process, whichever system's data comes first;
    # with one (its clock started with the grid), a run starts as soon as its data is ready.
    _, launched = fake_packs
    spec = GridSpec(out=str(tmp_path), systems=("pendulum", "mass_spring"),
                    models=("hgan",), iters=5, eval_metrics="physics")
    grid = runner.GridRunner(spec, parallel=4, pack=4, deadline_s=deadline, progress=False,
                             log=lambda m: None)
    grid.plan()
    grid.execute()
    assert launched == packs
    assert all(r.evaluated() for r in spec.runs())


def test_a_packed_run_is_evaluated_when_it_ends_not_when_its_process_does(
        tmp_path, fake_packs, monkeypatch):
    # hgan trains 5 iterations, mocogan 100 (0.02 s each) in one process.
    monkeypatch.setattr(Run, "train_command", lambda self: [
        sys.executable, "-c", "", self.dir, "5" if self.model == "hgan" else "100", "0"])
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"),
                    iters=100, eval_metrics="physics")
    grid = runner.GridRunner(spec, parallel=2, pack=2, progress=False, log=lambda m: None)
    grid.plan()
    grid.execute()
    hgan, mocogan = spec.runs()
    assert hgan.evaluated() and mocogan.evaluated()
    assert os.path.getmtime(hgan.path("eval", "results.json")) < _spans(mocogan)[1]


def test_a_deadline_stops_every_run_of_a_pack(tmp_path, fake_packs):
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"),
                    iters=100_000, eval_metrics="physics")
    grid = runner.GridRunner(spec, parallel=1, pack=2, deadline_s=1.0, progress=False,
                             log=lambda m: None)
    grid.plan()
    grid.execute()
    for run in spec.runs():
        assert 0 < run.iteration() < 100_000 and run.summary()["stopped"] == "SIGTERM"
        assert run.evaluated()


def test_a_pack_keeps_its_slot_until_its_process_exits(tmp_path, fake_packs, monkeypatch):
    # Its runs are reaped (and evaluated) as they end, but the process may still hold the
    # GPU while it tears down: the next pack waits for it to exit.
    _, launched = fake_packs
    exits = tmp_path / "exits.txt"
    monkeypatch.setenv("FAKE_PACK_LINGER", "1.0")
    monkeypatch.setenv("FAKE_PACK_EXITS", str(exits))
    spec = GridSpec(out=str(tmp_path / "g"), systems=("pendulum", "mass_spring"),
                    models=("hgan", "mocogan"), iters=3, eval_metrics="physics")
    grid = runner.GridRunner(spec, parallel=1, pack=2, progress=False, log=lambda m: None)
    grid.plan()
    grid.execute()
    assert launched == [2, 2]
    first_exit = min(float(t) for t in exits.read_text().split())
    second_start = max(_spans(r)[0] for r in spec.runs())
    assert second_start > first_exit
    assert len(exits.read_text().split()) == 2  # both processes waited for, none left behind


def test_runs_stopped_by_a_failed_capture_in_their_pack_are_resumed_not_evaluated(
        tmp_path, fake_packs, monkeypatch):
    # hgan's capture fails at its third iteration; mocogan (alone it would train 100,000)
    # stops with a checkpoint, exit 75: not evaluated as if finished, and the next grid
    # command resumes it.
    monkeypatch.setattr(Run, "train_command", lambda self: [
        sys.executable, "-c", "", self.dir, str(self.spec.iters),
        "capture" if self.model == "hgan" else "0"])
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"),
                    iters=100_000, eval_metrics="physics")
    lines = []
    grid = runner.GridRunner(spec, parallel=1, pack=2, progress=False, log=lines.append)
    jobs = {(j.kind, j.name): j for j in grid.plan()}
    grid.execute()
    hgan, mocogan = spec.runs()
    assert jobs["train", hgan.name].state == jobs["train", mocogan.name].state == "failed"
    assert jobs["eval", mocogan.name].state == "skipped" and not mocogan.evaluated()
    assert 0 < mocogan.iteration() < 100_000 and mocogan.resumable()
    assert mocogan.record()["segments"][-1]["returncode"] == runner.PEER_FAILED_CODE
    assert any(f"train {mocogan.name}: stopped after" in m and "resumes it" in m for m in lines)
    again = runner.GridRunner(spec, parallel=1, pack=2, progress=False, log=lambda m: None)
    assert ("train", mocogan.name) in {(j.kind, j.name) for j in again.plan()}


def test_evaluations_of_a_system_wait_for_its_probe_unless_a_fitting_one_is_cached(tmp_path):
    # Side by side, evaluations that each trained the probe anew could score the models of one
    # system with different probes (GPU training is not bit-reproducible).
    import torch
    from hgan.data import get_system
    from hgan.evaluate import probe
    from hgan.evaluate.cli import build_parser, probe_settings
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"),
                    iters=2, eval_metrics="physics")
    data = spec.data_path("pendulum")
    os.makedirs(os.path.dirname(data))
    open(data, "wb").write(b"stand-in data")
    grid = runner.GridRunner(spec, parallel=2, progress=False, log=lambda m: None)
    grid.jobs = [runner.Job("eval", "pendulum", r) for r in spec.runs()]
    grid.jobs[0].state = "running"
    assert not grid._ready(grid.jobs[1])        # the running one trains and caches the probe
    args = build_parser().parse_args(spec.runs()[0].eval_flags())
    kw = probe_settings(get_system("pendulum"), args.probe_steps, args.probe_width)
    torch.save({"key": probe._data_key(data, **{**kw, "steps": 1})}, probe.probe_cache_path(data))
    assert not grid._ready(grid.jobs[1])        # a probe of other settings is retrained
    torch.save({"key": probe._data_key(data, **kw)}, probe.probe_cache_path(data))
    assert grid._ready(grid.jobs[1])


def test_each_child_gets_its_share_of_the_cores(tmp_path, monkeypatch):
    # OMP_NUM_THREADS = cores / (K x pack) for training, cores / K for evaluation, at least 1,
    # and a value the user set is kept.
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",))
    grid = runner.GridRunner(spec, parallel=2, pack=4, progress=False, log=lambda m: None)
    assert (grid.train_env["OMP_NUM_THREADS"], grid.env["OMP_NUM_THREADS"]) == ("2", "8")
    grid = runner.GridRunner(spec, parallel=32, progress=False, log=lambda m: None)
    assert (grid.train_env["OMP_NUM_THREADS"], grid.env["OMP_NUM_THREADS"]) == ("1", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    grid = runner.GridRunner(spec, parallel=2, pack=4, progress=False, log=lambda m: None)
    assert (grid.train_env["OMP_NUM_THREADS"], grid.env["OMP_NUM_THREADS"]) == ("3", "3")


def test_training_children_are_told_how_many_runs_share_the_gpu(tmp_path, monkeypatch):
    # K processes of `pack` runs each: K x pack runs weigh their frames against one GPU
    # (hgan.data.loader.runs_sharing_gpu); evaluations train nothing; a user's value is kept
    monkeypatch.delenv("HGAN_GPU_RUNS", raising=False)
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",))
    grid = runner.GridRunner(spec, parallel=3, pack=5, progress=False, log=lambda m: None)
    assert grid.train_env["HGAN_GPU_RUNS"] == "15" and "HGAN_GPU_RUNS" not in grid.env
    monkeypatch.setenv("HGAN_GPU_RUNS", "2")
    grid = runner.GridRunner(spec, parallel=3, pack=5, progress=False, log=lambda m: None)
    assert grid.train_env["HGAN_GPU_RUNS"] == "2"


def test_no_more_runs_share_the_gpu_than_the_grid_trains(tmp_path, monkeypatch):
    # --parallel 15 --pack 15 (the README's command) trains 15 runs at most, not 225: told
    # 225, each kept its frames on the GPU only within 1/225 of the resident quarter
    # (hgan.data.loader.auto_kind), and 15 paper-size datasets fell back to another loader.
    monkeypatch.delenv("HGAN_GPU_RUNS", raising=False)
    spec = GridSpec(out=str(tmp_path), systems=("pendulum", "mass_spring"),
                    models=("hgan", "mocogan"))
    grid = runner.GridRunner(spec, parallel=3, pack=5, progress=False, log=lambda m: None)
    grid.plan()
    assert sum(j.kind == "train" for j in grid.jobs) == 4
    assert grid.train_env["HGAN_GPU_RUNS"] == "4"
    grid = runner.GridRunner(spec, parallel=1, pack=2, progress=False, log=lambda m: None)
    grid.plan()
    assert grid.train_env["HGAN_GPU_RUNS"] == "2"   # fewer slots than runs: K x pack
    monkeypatch.setenv("HGAN_GPU_RUNS", "40")       # a user's value is kept
    grid = runner.GridRunner(spec, parallel=3, pack=5, progress=False, log=lambda m: None)
    grid.plan()
    assert grid.train_env["HGAN_GPU_RUNS"] == "40"


# Prepended to a stand-in job: appends "<kind> <run name>" to $ORDER_LOG as it starts.
_NOTE = ("import os, sys\nopen(os.environ['ORDER_LOG'], 'a').write('{kind} ' + "
         "os.path.basename(sys.argv[1]) + '\\n')\n")


def test_a_freed_slot_evaluates_a_finished_run_before_training_the_next(tmp_path, fake_jobs,
                                                                         monkeypatch):
    # Evaluations go first: their results are what people wait for.
    order = tmp_path / "order.txt"
    monkeypatch.setenv("ORDER_LOG", str(order))
    train, evaluate = Run.train_command, Run.eval_command    # fake_jobs' stand-ins
    monkeypatch.setattr(Run, "train_command", lambda self: [
        *train(self)[:2], _NOTE.format(kind="train") + FAKE_TRAIN, *train(self)[3:]])
    monkeypatch.setattr(Run, "eval_command", lambda self: [
        *evaluate(self)[:2], _NOTE.format(kind="eval") + FAKE_EVAL, *evaluate(self)[3:]])
    spec = GridSpec(out=str(tmp_path / "g"), systems=("pendulum",), models=("hgan", "mocogan"),
                    iters=3, eval_metrics="physics")
    grid = runner.GridRunner(spec, parallel=1, progress=False, log=lambda m: None)
    grid.plan()
    grid.execute()
    assert order.read_text().splitlines() == [
        "train pendulum-hgan-s0", "eval pendulum-hgan-s0",
        "train pendulum-mocogan-s0", "eval pendulum-mocogan-s0"]


def test_a_dataset_that_failed_skips_the_training_and_evaluation_of_its_runs_only(
        tmp_path, monkeypatch):
    monkeypatch.setattr(runner.datasets, "missing_splits", lambda spec, system: ["train"])
    spec = GridSpec(out=str(tmp_path), systems=("pendulum", "mass_spring"), models=("hgan",),
                    iters=3, eval_metrics="physics")
    grid = runner.GridRunner(spec, parallel=1, progress=False, log=lambda m: None)
    jobs = {(j.kind, j.name): j for j in grid.plan()}
    jobs["data", "pendulum"].state = "failed"
    grid._skip_blocked()
    # the evaluation waits on a skipped training: skipped too, or the grid would wait forever
    assert jobs["train", "pendulum-hgan-s0"].state == jobs["eval", "pendulum-hgan-s0"].state \
        == "skipped"
    assert {jobs[k].state for k in jobs if "mass_spring" in k[1]} == {"queued"}


def _ctrl_c_once(started, *then):
    """SIGINT to this process (the grid's handler) once `started` (an Event, or a function
    that says so) is true, and again after each pause in `then` (seconds)."""
    import signal
    import threading
    import time
    ready = started.is_set if hasattr(started, "is_set") else started

    def send():
        for _ in range(6000):
            if ready():
                for pause in (0, *then):
                    time.sleep(pause)
                    os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.01)
    threading.Thread(target=send, daemon=True).start()


def _no_keyboard_interrupt(call):
    try:
        return call()
    except KeyboardInterrupt:
        pytest.fail("a second Ctrl-C came out of the grid as a KeyboardInterrupt")


def test_a_ctrl_c_delivered_twice_is_one_stop_that_keeps_the_records_and_compare_md(
        tmp_path, fake_jobs, capsys):
    # `timeout -s INT` delivers a SIGINT twice; the second one raised KeyboardInterrupt in the
    # wait for the stopping jobs: a traceback, no compare.md, no record of the segment.
    out = tmp_path / "g"
    _ctrl_c_once((out / "runs" / "pendulum-hgan-s0" / "spans.txt").exists, 0.05)
    assert _no_keyboard_interrupt(lambda: _table1(out, "--iters", "500")) == 130
    run = GridSpec(out=str(out), systems=("pendulum",), models=("hgan",), iters=500).runs()[0]
    seg, = run.record()["segments"]
    assert seg["to"] == run.iteration() < 500 and seg["stopped"] == "SIGTERM"
    assert "**Interrupted**" in open(out / "compare.md").read()
    assert "Traceback" not in capsys.readouterr().err


def test_a_second_ctrl_c_later_kills_the_jobs_still_stopping_and_records_them(
        tmp_path, fake_jobs, monkeypatch):
    import sys
    monkeypatch.setattr(runner, "SECOND_AFTER_S", 0.2)
    monkeypatch.setattr(runner, "STOP_GRACE_S", 60)
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    monkeypatch.setattr(Run, "train_command", lambda self: [sys.executable, "-c", deaf])
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=5,
                    eval_metrics="physics")
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None)
    train = grid.plan()[0]
    _ctrl_c_once(lambda: train.proc is not None, 0.5)
    _no_keyboard_interrupt(grid.execute)
    assert grid.aborting and train.proc.returncode == -9
    seg, = spec.runs()[0].record()["segments"]
    assert seg["returncode"] == -9
    # ended by the grid's stop: stopped, not a failure (it read "FAILED (exit -9)")
    assert train.state == "stopped" and seg["interrupted"]


def test_ctrl_c_stops_data_generation_and_waits_for_it(tmp_path, monkeypatch):
    # A generating thread left running at exit hung the interpreter's finalization on h5py's
    # lock: the grid stops it (generate's stop event) and joins it before returning.
    import threading
    from hgan.data import GenerationInterrupted
    started, seen = threading.Event(), []

    def generate(spec, system, splits, stop_event):
        started.set()
        seen.append(stop_event.wait(30))
        raise GenerationInterrupted(2)
    monkeypatch.setattr(runner.datasets, "missing_splits", lambda spec, system: ["train"])
    monkeypatch.setattr(runner.datasets, "generate", generate)
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=3,
                    eval_metrics="physics")
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None)
    data = grid.plan()[0]
    _ctrl_c_once(started)
    grid.execute()
    assert grid.stopping and seen == [True]
    assert not data.thread.is_alive() and data.state == "stopped"


def test_ctrl_c_lets_an_inline_evaluation_finish_and_waits_for_it(tmp_path, monkeypatch):
    # An evaluation thread left running at exit ended the grid with C++'s "terminate called
    # without an active exception" (exit 134): it is joined. It is not interrupted: an
    # exception raised into a thread could land inside a library's lock (tqdm's: the grid
    # hung on it), so the evaluation finishes and counts.
    import threading
    import time

    from hgan.evaluate import cli as evaluate_cli
    started, seen = threading.Event(), []

    def evaluate(argv):
        started.set()
        try:
            time.sleep(1.0)
        except KeyboardInterrupt:
            seen.append("interrupted")
            raise
        seen.append("finished")
    monkeypatch.setattr(evaluate_cli, "main", evaluate)
    # past the grace for processes too: a thread is still waited for (given up, its job was
    # left running, unrecorded, while compare.md was written)
    monkeypatch.setattr(runner, "STOP_GRACE_S", 0.2)
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=3,
                    eval_metrics="physics")
    run, = spec.runs()
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None, inline_eval=True)
    grid.jobs = [runner.Job("eval", "pendulum", run)]
    _ctrl_c_once(started)
    grid.execute()
    assert grid.stopping and seen == ["finished"]
    assert not grid.jobs[0].thread.is_alive() and grid.jobs[0].state == "done"
    assert not run.record()["eval"]["interrupted"]


def test_during_a_stop_only_a_stops_own_exit_reads_as_stopped(tmp_path):
    # Any failure reaped during the stop read "stopped" (a crash while saving, an evaluation's
    # bad input), and an evaluation that had written its results read "interrupted".
    from types import SimpleNamespace
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=3)
    run, = spec.runs()
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None)
    grid.stopping = True
    for code, state in ((143, "stopped"), (130, "stopped"), (-9, "stopped"), (1, "failed"),
                        (2, "failed")):
        job = runner.Job("train", "pendulum", run)
        job.proc = SimpleNamespace(returncode=code)
        job.returncode = code
        assert grid._ended(job, "failed") == state, code
    data = runner.Job("data", "pendulum")
    data.error = RuntimeError("disk full")
    assert grid._ended(data, "failed") == "failed"
    from hgan.data import GenerationInterrupted
    data.error = GenerationInterrupted(2)
    assert grid._ended(data, "failed") == "stopped"


def test_data_only_generates_whatever_the_runs_hold(tmp_path, monkeypatch):
    # a run trained past --iters refused --data-only, which trains nothing
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=3)
    monkeypatch.setattr(runner.datasets, "missing_splits", lambda spec, system: ["train"])
    monkeypatch.setattr(type(spec.runs()[0]), "check_length",
                        lambda self: (_ for _ in ()).throw(AssertionError("checked")))
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None)
    assert [j.kind for j in grid.plan(data_only=True)] == ["data"]


def _table1(out, *flags):
    from hgan.experiments import cli
    return cli.main(["table1", "--out", str(out), "--systems", "pendulum", "--models",
                     "hgan,mocogan", "--device", "cpu", "--no-progress", "--eval-metrics",
                     "physics", *flags])


def _runs_rows(out):
    text = open(os.path.join(out, "compare.md")).read()
    return text, {line.split(" | ")[1]: line for line in text.splitlines()
                  if line.startswith("| pendulum | ")}


def test_ctrl_c_stops_every_job_with_a_checkpoint_and_still_writes_compare_md(
        tmp_path, fake_jobs, capsys):
    import signal
    import threading
    import time
    out = tmp_path / "g"
    started = out / "runs" / "pendulum-hgan-s0" / "spans.txt"

    def ctrl_c():  # once the first training has started (the grid's handler is in place)
        for _ in range(6000):
            if started.exists():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.01)
    threading.Thread(target=ctrl_c, daemon=True).start()
    assert _table1(out, "--iters", "500") == 130
    hgan, mocogan = GridSpec(out=str(out), systems=("pendulum",), models=("hgan", "mocogan"),
                             iters=500).runs()
    assert hgan.summary()["stopped"] == "SIGTERM" and hgan.iteration() < 500
    assert hgan.resumable() and not os.path.exists(hgan.path("eval"))
    assert not os.path.exists(mocogan.dir)     # queued (one job at a time): never started
    text, rows = _runs_rows(out)
    assert "**Interrupted**: the command was stopped; run it again to resume." in text
    assert rows["mocogan"].startswith("| pendulum | mocogan | 0 | 0 / 500 |")
    assert rows["mocogan"].endswith("| not run |")


def test_a_failed_run_is_exit_code_1_and_failed_in_compare_md(tmp_path, fake_jobs, capsys):
    fake_jobs.add("pendulum-hgan-s0")
    out = tmp_path / "g"
    assert _table1(out, "--iters", "10", "--parallel", "2") == 1
    assert "failed: train pendulum-hgan-s0" in capsys.readouterr().err
    _, rows = _runs_rows(out)
    assert rows["hgan"].startswith("| pendulum | hgan | 0 | 0 / 10 |")
    assert rows["hgan"].endswith("| failed |")
    assert rows["mocogan"].startswith("| pendulum | mocogan | 0 | 10 / 10 |")
    assert rows["mocogan"].endswith("| evaluated |")


def test_report_only_rewrites_the_table_of_the_grid_that_trained(tmp_path, capsys):
    # `table1 --report-only --out DIR` without the grid's flags: the saved grid, not the defaults
    from hgan.experiments import cli
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=7,
                    eval_metrics="physics")
    with open(tmp_path / "grid.json", "w") as f:
        json.dump({"spec": spec.to_dict(), "command": "python -m hgan.experiments table1 -x",
                   "commit": "c0ffee", "device": "CPU test", "wall_s": 12.0}, f)
    run, = spec.runs()
    os.makedirs(run.path("checkpoints"))
    open(run.checkpoint, "wb").close()
    json.dump({"iteration": 7}, open(run.path("summary.json"), "w"))
    assert cli.main(["table1", "--report-only", "--out", str(tmp_path)]) == 0
    text = open(tmp_path / "compare.md").read()
    assert text.startswith("# Table 1 grid: 1 system x 1 model x 1 seed\n")
    assert "| pendulum | hgan | 0 | 7 / 7 |" in text
    assert "- command: `python -m hgan.experiments table1 -x (table rewritten with " \
           "--report-only)`" in text
    assert "commit c0ffee" in text and "wall time of the invocation: 12 s" in text


def test_report_only_takes_the_selection_given_and_the_rest_from_the_saved_grid(tmp_path):
    # grid.json holds the last invocation's subset: `--report-only --systems` reported only it
    from hgan.experiments import cli
    spec = GridSpec(out=str(tmp_path), systems=("pendulum", "mass_spring"), models=("hgan",),
                    iters=7, eval_metrics="physics")
    with open(tmp_path / "grid.json", "w") as f:
        json.dump({"spec": {**spec.to_dict(), "systems": ["mass_spring"]}, "command": "x"}, f)
    for run in spec.runs():
        os.makedirs(run.path("checkpoints"))
        open(run.checkpoint, "wb").close()
        json.dump({"iteration": 7}, open(run.path("summary.json"), "w"))
    assert cli.main(["table1", "--report-only", "--out", str(tmp_path), "--systems",
                     "pendulum,mass_spring"]) == 0
    _, rows = _runs_rows(tmp_path)
    assert rows["hgan"].startswith("| pendulum | hgan | 0 | 7 / 7 |")
    assert "| mass_spring | hgan | 0 | 7 / 7 |" in open(tmp_path / "compare.md").read()


def test_report_only_on_a_folder_without_grid_json_is_one_error(tmp_path, capsys):
    # it wrote a table of the default 5 x 3 runs, all "not run"
    from hgan.experiments import cli
    assert cli.main(["table1", "--report-only", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"hgan.experiments: error: --report-only: no grid at "
                                       f"{tmp_path} (no readable grid.json)\n")
    assert not os.listdir(tmp_path)


def test_export_keeps_each_runs_summary_and_training_times_but_no_checkpoint(tmp_path):
    from hgan.experiments import cli
    grid, dest = tmp_path / "g", tmp_path / "copy"
    files = ["compare.md", "grid.json", "figures/fvd.png", "runs/r/config.json",
             "runs/r/summary.json", "runs/r/experiment.json", "runs/r/eval/results.json",
             "runs/r/eval/report.md", "runs/r/eval/tsne.png"]
    left = ["runs/r/checkpoints/last.pt", "runs/r/train.log", "runs/r/eval/samples.gif",
            "runs/r/tb/events.out", "data/pendulum/train.h5"]
    for f in files + left:
        os.makedirs(os.path.dirname(grid / f), exist_ok=True)
        (grid / f).write_text(f)
    assert sorted(cli.export(str(grid), str(dest))) == sorted(files)
    assert (dest / "runs/r/experiment.json").read_text() == "runs/r/experiment.json"


def test_export_makes_paths_into_the_grid_relative_to_it(tmp_path):
    # A grid's configs, summaries and command line name its absolute folder; committed
    # results must not (tests/test_eval_cli.py checks docs/results/).
    from hgan.experiments import cli
    grid, dest = tmp_path / "table1", tmp_path / "copy"
    g = str(grid)
    texts = {
        "compare.md": f"- command: `table1 --out {g} --pack 15`\nsee {g}/runs/r\n",
        "runs/r/config.json": json.dumps({"data": f"{g}/data/pendulum/train.h5",
                                          "out": f"{g}/runs/r", "other": f"{g}-dmon.txt"}),
    }
    for f, text in texts.items():
        os.makedirs(os.path.dirname(grid / f), exist_ok=True)
        (grid / f).write_text(text)
    (grid / "figures").mkdir()
    png = bytes(range(256)) + g.encode()          # binary files are copied as they are
    (grid / "figures" / "a.png").write_bytes(png)
    cli.export(g, str(dest))
    assert (dest / "compare.md").read_text() == ("- command: `table1 --out . --pack 15`\n"
                                                 "see runs/r\n")
    assert json.loads((dest / "runs/r/config.json").read_text()) == {
        "data": "data/pendulum/train.h5", "out": "runs/r", "other": f"{g}-dmon.txt"}
    assert (dest / "figures" / "a.png").read_bytes() == png


def test_export_and_the_grid_refuse_an_output_that_is_a_file_or_an_export_into_a_full_folder(
        tmp_path, capsys):
    # Exporting a second grid into the first one's copy kept the first grid's runs beside the
    # second's compare.md; a file as --out or --to was a FileExistsError traceback.
    from hgan.experiments import cli
    grid = tmp_path / "g"
    (grid / "runs" / "r").mkdir(parents=True)
    (grid / "compare.md").write_text("table")
    a_file = tmp_path / "strip.png"
    a_file.write_text("")
    full = tmp_path / "full"
    (full / "runs" / "old").mkdir(parents=True)
    for argv, words in (
            (["export", str(grid), "--to", str(a_file)], f"--to {a_file} is a file"),
            (["export", str(grid), "--to", str(a_file / "x")], f"export to {a_file / 'x'}: Not a directory"),
            (["export", str(grid), "--to", str(full)], f"--to {full} is not empty"),
            (["table1", "--out", str(a_file), "--device", "cpu"], f"--out {a_file} is a file"),
            (["table1", "--out", str(a_file / "g"), "--device", "cpu", "--systems", "pendulum",
              "--models", "hgan", "--iters", "1"], f"--out {a_file / 'g'}: Not a directory")):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("hgan.experiments: error: ") and words in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert cli.main(["export", str(grid), "--to", str(tmp_path / "empty")]) == 0


def test_a_run_trained_past_the_grids_iterations_is_an_error_not_done(tmp_path, fake_jobs):
    # A grid trained to 5 and asked for --iters 3 counted its runs done ("5 / 3 evaluated")
    # and averaged them with seeds trained to 3.
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=5,
                    eval_metrics="physics")
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None)
    grid.plan()
    grid.execute()
    shorter = GridSpec(**{**spec.to_dict(), "iters": 3})
    run, = shorter.runs()
    with pytest.raises(runner.GridError, match=f"^{run.dir} was trained to 5 iterations, the "
                       f"grid asks for --iters 3: use --iters 5 or another --out$"):
        runner.GridRunner(shorter, progress=False, log=lambda m: None).plan()
    assert not run.trained()


def test_a_grid_asked_for_more_iterations_trains_on_and_records_each_segment(tmp_path,
                                                                             fake_jobs):
    # (the stand-in trains from 0 again; the segments record where the run's summary stood)
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=3,
                    eval_metrics="physics")
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None)
    grid.plan()
    grid.execute()
    longer = GridSpec(**{**spec.to_dict(), "iters": 5})
    grid = runner.GridRunner(longer, progress=False, log=lambda m: None)
    assert [(j.kind, j.name) for j in grid.plan()] == [("train", "pendulum-hgan-s0"),
                                                        ("eval", "pendulum-hgan-s0")]
    grid.execute()
    run, = longer.runs()
    assert [(s["from"], s["to"]) for s in run.record()["segments"]] == [(0, 3), (3, 5)]
    assert run.evaluated() and run.results()["iteration"] == 5


def test_planning_again_plans_the_same_jobs_and_gpu_share(tmp_path, monkeypatch):
    # plan() appended to the jobs of an earlier plan(): a second call held every run twice
    # (and its data job twice), and told HGAN_GPU_RUNS twice the runs to train.
    monkeypatch.delenv("HGAN_GPU_RUNS", raising=False)
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"))
    grid = runner.GridRunner(spec, parallel=3, pack=5, progress=False, log=lambda m: None)
    first = [(j.kind, j.name) for j in grid.plan()]
    assert [(j.kind, j.name) for j in grid.plan()] == first
    assert grid.train_env["HGAN_GPU_RUNS"] == "2"
    assert [j.kind for j in grid.plan(data_only=True)] == ["data"]
    assert [(j.kind, j.name) for j in grid.plan()] == first


def _trained(run, iteration):
    os.makedirs(run.path("checkpoints"), exist_ok=True)
    open(run.checkpoint, "wb").close()
    with open(run.path("summary.json"), "w") as f:
        json.dump({"iteration": iteration}, f)


def test_a_plan_orders_each_job_after_what_it_needs(tmp_path, monkeypatch):
    # A hand-made grid state: pendulum's test split is missing; of its runs one is trained
    # but not evaluated, one stopped half way, one never started. mass_spring's data is there.
    spec = GridSpec(out=str(tmp_path), systems=("pendulum", "mass_spring"),
                    models=("hgan", "mocogan", "hnn_gan"), iters=10, eval_metrics="physics")
    missing = {"pendulum": ["test"], "mass_spring": []}
    monkeypatch.setattr(runner.datasets, "missing_splits", lambda spec, system: missing[system])
    runs = {r.name: r for r in spec.runs()}
    _trained(runs["pendulum-hgan-s0"], 10)
    _trained(runs["pendulum-mocogan-s0"], 4)
    _trained(runs["mass_spring-hgan-s0"], 10)
    jobs = runner.GridRunner(spec, parallel=2, progress=False, log=lambda m: None).plan()
    by = {(j.kind, j.name): j for j in jobs}
    data = by["data", "pendulum"]
    assert data.splits == ["test"] and jobs[0] is data and ("data", "mass_spring") not in by
    # the trained run is only evaluated, and on its system's test split: after the data
    assert ("train", "pendulum-hgan-s0") not in by
    assert by["eval", "pendulum-hgan-s0"].deps == [data]
    for name in ("pendulum-mocogan-s0", "pendulum-hnn_gan-s0"):  # resumed / started: after data
        assert by["train", name].deps == [data]
        assert by["eval", name].deps == [by["train", name]]
    assert by["eval", "mass_spring-hgan-s0"].deps == []
    assert by["train", "mass_spring-mocogan-s0"].deps == []
    assert len(jobs) == 1 + 1 + 2 * 2 + 1 + 2 * 2


def test_exit_codes_read_as_done_stopped_or_failed_outside_a_stop_too(tmp_path):
    # Outside a stop, a job killed by a signal (the OOM killer's -9) failed: read as
    # "stopped", its evaluation would be skipped silently and no failure reported. An
    # evaluation whose results are written is done whatever its exit code. A packed run whose
    # process ended before the run's own exit line (a crash, exit 0 or not) failed.
    from types import SimpleNamespace
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=3,
                    eval_metrics="samples")
    run, = spec.runs()
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None)
    for code in (-9, -15, 143, 1):
        job = runner.Job("train", "pendulum", run)
        job.proc, job.returncode = SimpleNamespace(returncode=code), code
        assert grid._ended(job, "failed") == "failed", code
    os.makedirs(run.path("checkpoints"))
    open(run.checkpoint, "wb").close()
    with open(run.path("summary.json"), "w") as f:
        json.dump({"iteration": 3}, f)
    ev = runner.Job("eval", "pendulum", run)
    ev.proc, ev.returncode = SimpleNamespace(returncode=1), 1
    assert grid._ended(ev, "failed") == "failed"  # no results yet
    os.makedirs(run.path("eval"))
    with open(run.path("eval", "results.json"), "w") as f:
        json.dump({"iteration": 3, "metrics": ["samples"],
                   "settings": settings(build_parser().parse_args(run.eval_flags()), run.system)}, f)
    assert run.evaluated()
    for stopping in (False, True):
        grid.stopping = stopping
        assert grid._ended(ev, "failed") == "done", stopping
    grid.stopping = False
    for process_code in (0, 1, -11):
        job = runner.Job("train", "pendulum", run)
        job.packed, job.state, job.started, job.iter_before = True, "running", 0.0, 0
        job.proc = SimpleNamespace(poll=lambda: process_code, returncode=process_code)
        job.thread = SimpleNamespace(join=lambda: None)
        assert grid._reap(job) and job.state == "failed" and job.returncode != 0, process_code


def test_the_deadline_counts_from_the_start_and_stops_training_only(tmp_path, fake_jobs,
                                                                     monkeypatch):
    # Status lines more often than the deadline must not push it back (its clock is the
    # grid's), and the deadline stops training runs, not an evaluation under way.
    spec = GridSpec(out=str(tmp_path), systems=("pendulum", "mass_spring"), models=("hgan",),
                    iters=300, eval_metrics="physics")
    stopped_run, done_run = spec.runs()
    os.makedirs(done_run.path("checkpoints"))
    open(done_run.checkpoint, "wb").close()
    with open(done_run.path("summary.json"), "w") as f:
        json.dump({"iteration": 300}, f)
    fake_eval = Run.eval_command
    monkeypatch.setattr(Run, "eval_command", lambda self: (
        lambda c: c[:2] + ["import time; time.sleep(1.5)\n" + c[2]] + c[3:])(fake_eval(self)))
    grid = runner.GridRunner(spec, parallel=2, deadline_s=1.0, status_every_s=0.2,
                             progress=False, log=lambda m: None)
    jobs = {(j.kind, j.name): j for j in grid.plan()}
    assert set(jobs) == {("train", stopped_run.name), ("eval", stopped_run.name),
                         ("eval", done_run.name)}
    grid.execute()
    assert grid.deadline_hit and 0 < stopped_run.iteration() < 300
    assert all(j.state == "done" for j in jobs.values())
    assert done_run.evaluated() and stopped_run.evaluated()


def test_status_lines_come_every_status_every_seconds_not_at_every_poll(tmp_path, fake_jobs,
                                                                       monkeypatch):
    # The loop polls every 0.25 s; a status line every 0.6 s is at most one per two polls (a
    # line at every poll would match the polls). The stand-in run sleeps 2 s in all, so the
    # grid polls at least 8 times and passes 0.6 s at least once: one line or more.
    import time
    from types import SimpleNamespace
    polls = []

    def sleep(s):
        polls.append(s)
        time.sleep(s)
    monkeypatch.setattr(runner, "time", SimpleNamespace(time=time.time, monotonic=time.monotonic,
                                                        sleep=sleep))
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=100,
                    eval_metrics="physics")
    lines = []
    grid = runner.GridRunner(spec, status_every_s=0.6, progress=False, log=lines.append)
    grid.plan()
    grid.execute()
    status = [m for m in lines if "jobs done" in m]
    n_polls = polls.count(0.25)
    assert n_polls >= 8 and 1 <= len(status) <= n_polls // 2, (n_polls, status)


def test_only_a_later_second_ctrl_c_aborts_not_a_repeated_sigterm(tmp_path):
    import signal
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=3)
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None)
    grid._on_signal(signal.SIGTERM, None)
    assert grid.stopping and not grid.aborting
    grid._stopped_at -= 10 * runner.SECOND_AFTER_S  # long after the first
    grid._on_signal(signal.SIGTERM, None)  # a supervisor repeating its TERM: still a stop
    assert not grid.aborting
    grid._on_signal(signal.SIGINT, None)
    assert grid.aborting


def test_a_run_one_iteration_past_the_grids_is_refused_one_short_is_resumed(tmp_path):
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=10,
                    eval_metrics="physics")
    run, = spec.runs()
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None)
    import hgan.experiments.datasets as ds
    for n, kinds in ((9, ["train", "eval"]), (10, ["eval"]), (11, None)):
        os.makedirs(run.path("checkpoints"), exist_ok=True)
        open(run.checkpoint, "wb").close()
        with open(run.path("summary.json"), "w") as f:
            json.dump({"iteration": n}, f)
        if kinds is None:
            with pytest.raises(runner.GridError, match="trained to 11 iterations"):
                grid.plan()
        else:
            import unittest.mock
            with unittest.mock.patch.object(ds, "missing_splits", lambda spec, system: []):
                assert [j.kind for j in grid.plan()] == kinds, n


def test_grid_json_holds_the_whole_grid_for_report_only(tmp_path):
    # --report-only rebuilds the grid from grid.json's spec: a field lost or altered there
    # (seeds, say) would report another grid than the one trained.
    from hgan.experiments import cli
    spec = GridSpec(out=str(tmp_path), systems=("pendulum", "two_body"), models=("mocogan",),
                    seeds=(3, 5), iters=7, batch_size=4, frames=8, resolution=16, device="cpu",
                    train_traj=9, test_traj=6, traj_frames=20, data_seed=2,
                    train_args=("--lr", "1e-3"), eval_metrics="physics", eval_args=("--frames", "8"),
                    i3d="/x/i3d.pt")
    cli._save_grid(spec, {"command": "c", "commit": "abc"})
    saved = json.load(open(tmp_path / "grid.json"))
    assert saved["command"] == "c" and saved["commit"] == "abc"
    assert GridSpec(**saved["spec"]) == spec


def test_inline_evaluations_run_one_at_a_time_and_others_after_a_systems_first(tmp_path):
    # --inline-eval: one evaluation at a time, whatever the system (threads of one process).
    # In processes: once a system's first evaluation is done (its probe cached), the others of
    # that system start side by side, with no probe file needed to say so.
    spec = GridSpec(out=str(tmp_path), systems=("pendulum", "mass_spring"),
                    models=("hgan", "mocogan", "hnn_gan"), iters=2, eval_metrics="physics")
    runs = spec.runs()
    inline = runner.GridRunner(spec, parallel=4, progress=False, log=lambda m: None,
                               inline_eval=True)
    inline.jobs = [runner.Job("eval", r.system, r) for r in (runs[0], runs[3])]
    inline.jobs[0].state = "running"                       # pendulum's
    assert not inline._ready(inline.jobs[1])               # mass_spring's waits for it
    inline.jobs[0].state = "done"
    assert inline._ready(inline.jobs[1])
    grid = runner.GridRunner(spec, parallel=4, progress=False, log=lambda m: None)
    grid.jobs = [runner.Job("eval", "pendulum", r) for r in runs[:3]]
    grid.jobs[0].state, grid.jobs[1].state = "done", "running"
    assert not os.path.exists(spec.data_path("pendulum"))  # no data, no cached probe
    assert grid._ready(grid.jobs[2])


def test_a_runs_log_keeps_the_output_of_every_segment(tmp_path):
    # a resumed run's train.log: the first segment's command is still there after the second
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=2)
    run, = spec.runs()
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None)
    for cmd in (["train.py", "--system", "pendulum"], ["train.py", "--resume", run.dir]):
        grid._begin(runner.Job("train", "pendulum", run), cmd)
    assert open(run.path("train.log")).read() == (
        f"\n$ train.py --system pendulum\n\n$ train.py --resume {run.dir}\n")


def test_a_pack_process_gets_each_runs_train_py_flags_tagged(tmp_path):
    # docs/experiments.md: `python -m hgan.train.pack -- <flags of run 1> -- <flags of run 2>`,
    # with --tagged first so that the runner can split the output per run
    from hgan.train.pack import split_runs
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"),
                    iters=2, device="cpu")
    fresh, resumed = spec.runs()
    os.makedirs(resumed.path("checkpoints"))
    open(resumed.checkpoint, "wb").close()
    cmd = runner.pack_command([fresh.train_command(), resumed.train_command()], python="py")
    assert cmd[:4] == ["py", "-m", "hgan.train.pack", "--tagged"]
    assert split_runs(cmd[4:]) == [fresh.train_flags(), ["--resume", resumed.dir, "--iters", "2",
                                                         "--device", "cpu"]]


def test_an_inline_evaluation_not_begun_before_a_stop_does_not_begin():
    # and one that ends with SystemExit(0) (its --help, say) succeeded: no error
    import threading
    calls = []
    halt = threading.Event()
    assert runner._inline_evaluation(lambda argv: calls.append(argv), ["a"], halt) is None
    halt.set()
    assert isinstance(runner._inline_evaluation(lambda argv: calls.append(argv), ["b"], halt),
                      KeyboardInterrupt)
    assert calls == [["a"]]

    def exits(code):
        def evaluate(argv):
            raise SystemExit(code)
        return evaluate
    go = threading.Event()
    assert runner._inline_evaluation(exits(0), [], go) is None
    assert runner._inline_evaluation(exits(None), [], go) is None
    assert str(runner._inline_evaluation(exits(3), [], go)) == "exit code 3"


def test_a_process_that_ignores_the_stop_is_killed_after_the_grace(tmp_path, monkeypatch):
    # docs/experiments.md: after a stop a process gets STOP_GRACE_S (120 s), then is killed.
    # A stand-in process that never ends on SIGTERM (it would end by itself after 5 s).
    import time
    from types import SimpleNamespace
    monkeypatch.setattr(runner, "STOP_GRACE_S", 0.2)
    spec = GridSpec(out=str(tmp_path), systems=("pendulum",), models=("hgan",), iters=2)
    run, = spec.runs()
    give_up = time.time() + 5
    signals = []

    class Deaf:
        returncode = None

        def poll(self):
            if self.returncode is None and time.time() > give_up:
                self.returncode = 0
            return self.returncode

        def send_signal(self, sig):
            signals.append(sig)

        def kill(self):
            signals.append("kill")
            self.returncode = -9
    grid = runner.GridRunner(spec, progress=False, log=lambda m: None)
    job = runner.Job("train", "pendulum", run)
    job.state, job.started, job.iter_before = "running", time.time(), 0
    job.proc, job.thread = Deaf(), SimpleNamespace(join=lambda: None)
    grid.jobs, grid.stopping = [job], True
    grid._wait_all()
    assert signals == ["kill"] and job.returncode == -9 and job.state == "stopped"
    assert run.record()["segments"][-1]["returncode"] == -9


def test_a_rerun_with_nothing_to_do_adds_its_time_to_every_earlier_invocations(tmp_path,
                                                                              fake_jobs):
    # grid.json: earlier invocations took 100 s in all, the last one 5 s. A rerun whose runs
    # are all done and evaluated adds its own wall time to the 100 s, not to the 5 s.
    out = tmp_path / "g"
    spec = GridSpec(out=str(out), systems=("pendulum",), models=("hgan", "mocogan"), iters=3,
                    device="cpu", eval_metrics="physics")
    for run in spec.runs():
        _trained(run, 3)
        os.makedirs(run.path("eval"))
        with open(run.path("eval", "results.json"), "w") as f:
            json.dump({"iteration": 3, "metrics": ["physics"], "settings": settings(
                build_parser().parse_args(run.eval_flags()), run.system)}, f)
    with open(out / "grid.json", "w") as f:
        json.dump({"spec": spec.to_dict(), "wall_s": 5.0, "wall_s_total": 100.0}, f)
    assert _table1(out, "--iters", "3") == 0
    meta = json.load(open(out / "grid.json"))
    assert meta["wall_s_total"] == pytest.approx(100.0 + meta["wall_s"]) and meta["wall_s"] < 60


def test_data_only_whose_generation_failed_exits_1_naming_the_system(tmp_path, monkeypatch,
                                                                      capsys):
    from hgan.experiments import cli

    def broken(spec, system, splits, stop):
        raise OSError("disk full")
    monkeypatch.setattr(runner.datasets, "missing_splits", lambda spec, system: ["train"])
    monkeypatch.setattr(runner.datasets, "generate", broken)
    assert cli.main(["table1", "--out", str(tmp_path / "g"), "--data-only", "--systems",
                     "pendulum", "--models", "hgan", "--device", "cpu", "--no-progress"]) == 1
    assert "[grid] data not generated: pendulum" in capsys.readouterr().err


def test_export_into_an_existing_empty_folder(tmp_path):
    # docs/experiments.md: "into a new or empty folder"
    from hgan.experiments import cli
    grid, dest = tmp_path / "g", tmp_path / "empty"
    grid.mkdir()
    (grid / "compare.md").write_text("table")
    dest.mkdir()
    assert cli.main(["export", str(grid), "--to", str(dest)]) == 0
    assert os.listdir(dest) == ["compare.md"]


def test_export_of_a_folder_without_compare_md_is_one_error(tmp_path, capsys):
    # a mistyped grid folder (or a grid never reported): nothing to export, nothing created
    from hgan.experiments import cli
    grid, dest = tmp_path / "g", tmp_path / "copy"
    (grid / "runs" / "r").mkdir(parents=True)
    (grid / "runs" / "r" / "summary.json").write_text("{}")
    assert cli.main(["export", str(grid), "--to", str(dest)]) == 2
    assert capsys.readouterr().err == (f"hgan.experiments: error: {grid} has no compare.md: run "
                                       f"table1 first\n")
    assert not dest.exists()


def test_a_grid_that_dies_while_it_runs_leaves_its_grid_json(tmp_path, fake_jobs, monkeypatch):
    # grid.json is written before the jobs start: an invocation killed on the way still
    # leaves the settings --report-only reads, and the earlier invocations' wall time
    out = tmp_path / "g"
    out.mkdir()
    with open(out / "grid.json", "w") as f:
        json.dump({"spec": {}, "wall_s": 5.0, "wall_s_total": 100.0}, f)

    def dies(self):
        raise RuntimeError("the machine went away")
    monkeypatch.setattr(runner.GridRunner, "execute", dies)
    with pytest.raises(RuntimeError, match="went away"):
        _table1(out, "--iters", "3", "--seeds", "4")
    saved = json.load(open(out / "grid.json"))
    assert (saved["spec"]["seeds"], saved["spec"]["iters"]) == ([4], 3)
    assert saved["wall_s_total"] == 100.0
