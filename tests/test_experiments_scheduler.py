"""The grid's scheduler with stand-in jobs (small Python scripts, no torch): K at a time,
the training deadline, a failing run, and evaluation after training."""
import json
import os
import sys

import pytest

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
run_dir, metrics = sys.argv[1], sys.argv[2].split(",")
it = json.load(open(os.path.join(run_dir, "summary.json")))["iteration"]
os.makedirs(os.path.join(run_dir, "eval"), exist_ok=True)
json.dump({"iteration": it, "metrics": metrics}, open(os.path.join(run_dir, "eval", "results.json"), "w"))
"""


@pytest.fixture
def fake_jobs(monkeypatch):
    failing = set()
    monkeypatch.setattr(Run, "train_command", lambda self: [
        sys.executable, "-c", FAKE_TRAIN, self.dir, str(self.spec.iters),
        "1" if self.name in failing else "0"])
    monkeypatch.setattr(Run, "eval_command", lambda self: [
        sys.executable, "-c", FAKE_EVAL, self.dir, self.spec.eval_metrics])
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
