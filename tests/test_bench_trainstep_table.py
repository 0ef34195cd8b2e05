"""The GPU train-step table's host-side pieces: interval union (device-busy share) and the
Markdown summary, on synthetic inputs."""
import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import _trainstep  # noqa: E402
import trainstep_table  # noqa: E402


def test_union_of_device_intervals_matches_a_sampled_oracle():
    rng = np.random.default_rng(0)
    starts = rng.uniform(0, 1000, 40)
    spans = [(float(a), float(a + d)) for a, d in zip(starts, rng.uniform(0, 60, 40))]
    # Oracle: mark a fine grid of integer microseconds (interval ends on the grid).
    spans = [(round(a), round(b)) for a, b in spans]
    grid = np.zeros(1100, bool)
    for a, b in spans:
        grid[a:b] = True
    assert _trainstep._union_us(spans) == grid.sum()
    assert _trainstep._union_us([]) == 0


def test_summary_table_reports_speedup_and_errors(tmp_path):
    rows = {"baseline_32px": {"videos_per_s": 100.0, "median_step_s": 0.16, "data_wait_share": 0.02},
            "capture_32px": {"videos_per_s": 2500.0, "median_step_s": 0.0064,
                             "data_wait_share": 0.01, "device_busy": {"share": 0.85}},
            "capture_compile_32px": {"error": "RuntimeError: boom"},
            "capture_bf16_32px": {"videos_per_s": 3000.0, "median_step_s": 0.005,
                                  "data_wait_share": 0.07, "loader_share": 0.04,
                                  "data_cost_share": 0.011}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"device": "GPU-X", "torch": "2.11", "commit": "c",
                                "results": {"trainstep_table": rows}}))
    table = trainstep_table.summary(str(path)).splitlines()
    assert "| capture | 32 | 2500 | 6.40 | 25.0 | 1.0% | 85% |" in table
    assert "| capture_bf16 | 32 | 3000 | 5.00 | 30.0 | 7.0% (loader 4.0%, cost 1.1%) |  |" in table
    assert "| baseline | 32 | 100 | 160.00 | 1.0 | 2.0% |  |" in table
    assert any(line.startswith("| capture_compile | 32 | failed: RuntimeError: boom") for line in table)


def test_a_ratio_against_a_baseline_of_another_commit_names_that_commit(tmp_path):
    # a later run may re-measure one variant alone: its "x baseline" then compares commits
    rows = {"baseline_32px": {"videos_per_s": 100.0, "median_step_s": 0.16,
                              "data_wait_share": 0.02, "commit": "old1"},
            "capture_32px": {"videos_per_s": 2500.0, "median_step_s": 0.0064,
                             "data_wait_share": 0.01, "commit": "new2"},
            "capture_64px": {"videos_per_s": 900.0, "median_step_s": 0.0178,
                             "data_wait_share": 0.01, "commit": "new2"},
            "baseline_64px": {"videos_per_s": 30.0, "median_step_s": 0.53,
                              "data_wait_share": 0.02, "commit": "new2"}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"device": "GPU-X", "torch": "2.11", "commit": "new2",
                                "results": {"trainstep_table": rows}}))
    table = trainstep_table.summary(str(path)).splitlines()
    assert "| capture | 32 | 2500 | 6.40 | 25.0 (baseline at old1) | 1.0% |  |" in table
    assert "| capture | 64 | 900 | 17.80 | 30.0 | 1.0% |  |" in table


def test_verdicts_keep_a_change_only_where_it_is_faster_everywhere():
    rows = {"capture_32px": {"videos_per_s": 4000.0, "data_wait_share": 0.01,
                             "device_busy": {"share": 0.75}},
            "capture_64px": {"videos_per_s": 1000.0, "data_wait_share": 0.01},
            "capture_bf16_32px": {"videos_per_s": 4400.0},
            "capture_bf16_64px": {"videos_per_s": 900.0},
            "capture_channels_last_32px": {"videos_per_s": 4200.0},
            "capture_channels_last_64px": {"videos_per_s": 1100.0},
            "capture_compile_32px": {"error": "RuntimeError: boom"}}
    lines = trainstep_table.verdicts(rows)
    assert "| bf16 | +10.0% | -10.0% | no |" in lines
    assert "| channels_last | +5.0% | +10.0% | yes |" in lines
    assert "| compile | failed |  | no |" in lines        # a failed change is said, not kept
    assert lines[-1] == ("captured step, 32 px: 4000 videos/s (target >= 3200): met; data wait "
                         "1.0% (target < 5%): met; device busy 75% (target >= 80%): not met")
    assert trainstep_table.verdicts({})[-1] == "|---|---|---|---|"


def test_pack_rows_compare_all_runs_with_one_run_alone():
    rows = {"capture_32px": {"videos_per_s": 3000.0},
            "capture_pack4_32px": {"runs_in_process": 4, "videos_per_s": 9000.0,
                                   "videos_per_s_per_run": 2250.0},
            "capture_pack15_32px": {"runs_in_process": 15, "videos_per_s": 12000.0,
                                    "videos_per_s_per_run": 800.0},
            "capture_pack4_64px": {"error": "RuntimeError: boom"}}
    lines = trainstep_table.pack_lines(rows)
    assert lines[3:] == ["| 4 | 32 | 9000 | 2250 | 3.00 |", "| 15 | 32 | 12000 | 800 | 4.00 |",
                         "| 4 | 64 | failed: RuntimeError: boom | | |"]
    assert trainstep_table.pack_lines({"capture_32px": {"videos_per_s": 1.0}}) == []


def test_pack_rows_with_more_hardware_queues_are_their_own_rows():
    rows = {"capture_32px": {"videos_per_s": 3000.0},
            "capture_pack15_32px": {"runs_in_process": 15, "videos_per_s": 12000.0,
                                    "videos_per_s_per_run": 800.0},
            "capture_pack15_conn32_32px": {"runs_in_process": 15, "videos_per_s": 15000.0,
                                           "videos_per_s_per_run": 1000.0,
                                           "cuda_device_max_connections": "32"},
            "capture_pack15_conn32_64px": {"error": "RuntimeError: boom"}}
    assert trainstep_table.pack_lines(rows)[3:] == [
        "| 15 | 32 | 12000 | 800 | 4.00 |",
        "| 15, CUDA_DEVICE_MAX_CONNECTIONS=32 | 32 | 15000 | 1000 | 5.00 |",
        "| 15, CUDA_DEVICE_MAX_CONNECTIONS=32 | 64 | failed: RuntimeError: boom | | |"]


def test_connections_set_the_environment_before_cuda_and_name_the_rows(monkeypatch):
    recorded = {}
    monkeypatch.setattr(trainstep_table, "record",
                        lambda section, name, payload, device: recorded.__setitem__(name, payload))
    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
    seen = []
    monkeypatch.setattr(trainstep_table, "measure_pack", lambda data, res, n: seen.append(
        os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS")) or {"videos_per_s": 1.0})
    try:
        assert trainstep_table.main(["--cpu", "--pack", "15", "--connections", "32"]) == 0
    finally:
        os.environ.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    assert seen == ["32"] and "capture_pack15_conn32_32px" in recorded
    with pytest.raises(SystemExit):
        trainstep_table.main(["--cpu", "--pack", "15", "--connections", "33"])
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in os.environ


def test_pack_measurement_runs_its_threads_in_step(tmp_path, monkeypatch):
    # On CPU the steps are eager (no capture), but the threads, the per-round gates and the
    # arithmetic are the GPU's. Tiny shapes: batch 2, 4 frames.
    monkeypatch.setattr(_trainstep, "BATCH", 2)
    monkeypatch.setattr(_trainstep, "FRAMES", 4)
    monkeypatch.setattr(trainstep_table, "BATCH", 2)
    monkeypatch.setattr(trainstep_table, "PACK_STEPS", 2)
    monkeypatch.setattr(trainstep_table, "ROUNDS", 2)
    calls, real_run = {}, _trainstep.TrainStep.run

    def run(self):                       # every step of every run, with when it ran
        t0 = time.perf_counter()
        real_run(self)
        calls.setdefault(id(self), []).append((t0, time.perf_counter(), self.warmup_steps))
    monkeypatch.setattr(_trainstep.TrainStep, "run", run)
    r = trainstep_table.measure_pack(str(tmp_path), 32, 2)
    assert r["runs_in_process"] == 2 and r["steps_per_run"] == 2 and not r["captured"]
    assert r["videos_per_s"] == 2 * 2 * 2 / r["median_round_s"]
    assert r["videos_per_s_per_run"] == r["videos_per_s"] / 2
    # each run took its warm-up, then 2 rounds of 2 steps; no run began round 2 before every
    # run had ended round 1 (the rounds' gates)
    assert len(calls) == 2
    rounds = []
    for steps in calls.values():
        warm = steps[0][2]
        assert len(steps) == warm + 2 * 2, steps
        rounds.append((steps[warm:warm + 2], steps[warm + 2:]))
    assert max(s[1] for first, _ in rounds for s in first) < min(
        s[0] for _, second in rounds for s in second)


def test_a_busy_share_the_profiler_could_not_give_is_said_so(tmp_path):
    note = {"share": None, "note": "the profiler reported no device activity"}
    rows = {"capture_32px": {"videos_per_s": 4000.0, "median_step_s": 0.004,
                             "data_wait_share": 0.01, "device_busy": note}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"results": {"trainstep_table": rows}}))
    table = trainstep_table.summary(str(path)).splitlines()
    assert "| capture | 32 | 4000 | 4.00 |  | 1.0% | the profiler reported no device activity |" in table
    assert trainstep_table.verdicts(rows)[-1].endswith(
        "device busy not measured (the profiler reported no device activity)")


def test_stages_record_each_variant_and_skip_captures_after_a_failed_one(tmp_path, monkeypatch):
    # main() with the measurement stubbed: a capture that fails leaves (on torch < 2.13) the
    # process unable to capture again, so later variants say so instead of failing obscurely.
    from hgan.train import capture as hcapture
    recorded = {}
    monkeypatch.setattr(trainstep_table, "record",
                        lambda section, name, payload, device: recorded.__setitem__(name, payload))

    def measure(data, resolution, variant, busy):
        if variant == "capture_fused_adam":
            hcapture.CAPTURE_FAILED.set()
            raise hcapture.CaptureFailed("capturing the training step into CUDA graphs failed")
        return {"videos_per_s": 1000.0, "median_step_s": 0.016, "data_wait_share": 0.0}
    monkeypatch.setattr(trainstep_table, "measure", measure)
    try:
        status = trainstep_table.main(["--cpu", "--data", str(tmp_path), "--variants", "capture",
                                       "capture_fused_adam", "capture_bf16"])
    finally:
        hcapture.CAPTURE_FAILED.clear()
    assert status == 1
    assert recorded["capture_32px"]["videos_per_s"] == 1000.0
    assert recorded["capture_fused_adam_32px"]["error"].startswith("CaptureFailed")
    assert recorded["capture_bf16_32px"] == {"error": "not measured: the capture of "
                                             "capture_fused_adam_32px failed earlier in this process"}


def test_a_stage_measures_on_this_machine(tmp_path, monkeypatch):
    # The real measurement at tiny shapes (on CPU the captured variant runs eager).
    recorded = {}
    monkeypatch.setattr(trainstep_table, "record",
                        lambda section, name, payload, device: recorded.__setitem__(name, payload))
    monkeypatch.setattr(_trainstep, "BATCH", 2)
    monkeypatch.setattr(_trainstep, "FRAMES", 4)
    monkeypatch.setattr(trainstep_table, "BATCH", 2)
    monkeypatch.setattr(trainstep_table, "ROUNDS", 1)
    monkeypatch.setattr(trainstep_table, "RUN_S", 0.01)
    assert trainstep_table.main(["--cpu", "--data", str(tmp_path), "--variants", "capture",
                                 "capture_mocogan", "--busy", "capture"]) == 0
    r = recorded["capture_32px"]
    assert r["batch"] == 2 and r["videos_per_s"] > 0 and 0 <= r["data_wait_share"] < 1
    assert r["losses_finite_after"] and r["captured"] is False and r["device_busy"] is None
    # the mocogan row trains mocogan (the grid's slowest model), as the trainer runs it
    m = recorded["capture_mocogan_32px"]
    assert m["model"] == "mocogan" and m["videos_per_s"] > 0 and m["losses_finite_after"]
    step = _trainstep.TrainStep(_trainstep.frames_file(str(tmp_path), 32), 32,
                                _trainstep.TABLE["capture_mocogan"])
    try:
        assert step.trainer.cfg.model.model == "mocogan"
        assert step.trainer.G.motion_module.gru_backend == "auto"
    finally:
        step.close()
    # its twin rows roll the GRU out frame by frame: the node's loops, autograd's
    for variant, backend in (("capture_mocogan_cells", "cells"),
                             ("capture_mocogan_autograd", "autograd")):
        step = _trainstep.TrainStep(_trainstep.frames_file(str(tmp_path), 32), 32,
                                    _trainstep.TABLE[variant])
        try:
            assert step.trainer.G.motion_module.gru_backend == backend
        finally:
            step.close()


def _fake_step_class(clock, step_s):
    """A TrainStep stand-in: each synchronised step moves the fake clock by step_s."""
    class Step:
        warmup_steps = 2
        trainer = SimpleNamespace(captured=True, amp_dtype="torch.bfloat16")
        stream = SimpleNamespace(kind="gpu-resident")

        def __init__(self, path, resolution, opts):
            pass

        def __call__(self):
            clock[0] += step_s
            return 1.0

        def close(self):
            pass
    return Step


@pytest.mark.parametrize("step_s, steps", [(2 ** -6, 32), (1.0, 5), (2 ** -14, 400)])
def test_measure_reports_the_median_run_and_its_own_data_wait(monkeypatch, step_s, steps):
    # RUN_S 0.5 s of steps per run, 5 to 400 of them; three runs, the median by wall time
    clock = [0.0]
    monkeypatch.setattr(trainstep_table, "TrainStep", _fake_step_class(clock, step_s))
    monkeypatch.setattr(trainstep_table, "frames_file", lambda data, res: "train.h5")
    monkeypatch.setattr(trainstep_table, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    runs = iter([(3.0, 0.3), (1.0, 0.0), (2.0, 0.1)])
    asked = []
    monkeypatch.setattr(trainstep_table, "run_of_steps",
                        lambda step, n: asked.append(n) or next(runs))
    monkeypatch.setattr(trainstep_table, "loader_cost", lambda step, n: 0.01 * 2.0 / steps)
    monkeypatch.setattr(trainstep_table, "data_cost", lambda step, n, rounds: (0.5, 0.48))
    assert trainstep_table.BATCH == 16 and trainstep_table.ROUNDS == 3
    r = trainstep_table.measure("data", 32, "capture", busy=False)
    assert asked == [steps] * 3 and r["steps_per_run"] == steps
    assert r["median_step_s"] == pytest.approx(2.0 / steps)
    assert r["videos_per_s"] == pytest.approx(16 * steps / 2.0)
    assert r["data_wait_share"] == pytest.approx(0.05)          # the median run's own wait
    assert r["loader_share"] == pytest.approx(0.01)             # over the median step
    assert r["data_cost_share"] == pytest.approx(0.04)          # 1 - 0.48 / 0.5
    assert r["round_spread"] == pytest.approx((3.0 - 1.0) / 2.0)  # walls' range / the median
    assert r["warmup_s"] == pytest.approx(2 * step_s) and r["losses_finite_after"]
    assert "device_busy" not in r


def test_run_of_steps_times_n_steps_and_only_their_data_wait(monkeypatch):
    clock = [0.0]

    class Step:
        data_wait = [99.0]        # left over from the warm-up steps

        def run(self):
            clock[0] += 0.5
            self.data_wait.append(0.1)

    monkeypatch.setattr(_trainstep, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    wall, wait = _trainstep.run_of_steps(Step(), 4)
    assert wall == pytest.approx(2.0) and wait == pytest.approx(0.4)


def test_loader_cost_times_next_alone_after_draining_the_queue(monkeypatch):
    # A fake clock: next() takes 0.2 s, the step 3 s, the sync 1 s more. Only next() counts,
    # and every next() comes after a sync (the queue drained), then its step.
    clock, events = [0.0], []

    def advance(dt, what):
        def f(*a, **k):
            clock[0] += dt
            events.append(what)
        return f

    def batches():
        while True:
            advance(0.2, "next")()
            yield "batch"
    trainer = SimpleNamespace(iteration=0, step=lambda real: advance(3.0, "step")() or {})
    step = SimpleNamespace(batches=batches(), trainer=trainer, stats=None)
    monkeypatch.setattr(_trainstep, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(_trainstep, "sync", advance(1.0, "sync"))
    assert _trainstep.loader_cost(step, 3) == pytest.approx(0.2)
    assert events == ["sync", "next", "step"] * 3 + ["sync"] and trainer.iteration == 3


def test_data_cost_times_the_fed_and_the_fixed_batch_steps_and_restores_the_stream(monkeypatch):
    # Fed steps take 1.0 s of a round, fixed-batch ones 0.9 s (three rounds each, the
    # median); the fixed batch is a copy of one real batch, and the stream feeds again after.
    walls = iter([(3.0, 0), (1.0, 0), (2.0, 0), (0.9, 0), (0.8, 0), (9.0, 0)])
    seen = []

    def run_of_steps(step, n):
        seen.append(step.fixed_batch)
        return next(walls)
    batch = torch.arange(6.0).view(2, 3)
    step = SimpleNamespace(fixed_batch=None, batches=iter([batch]))
    monkeypatch.setattr(_trainstep, "run_of_steps", run_of_steps)
    fed, fixed = _trainstep.data_cost(step, 2, 3)
    assert (fed, fixed) == (1.0, 0.45)                          # medians 2.0 and 0.9, per step
    assert seen[:3] == [None] * 3 and all(torch.equal(b, batch) for b in seen[3:])
    assert seen[3] is not batch and step.fixed_batch is None


def test_verdicts_judge_data_wait_by_what_data_costs_a_step_where_measured():
    rows = {"capture_32px": {"videos_per_s": 4000.0, "data_wait_share": 0.079,
                             "loader_share": 0.053, "data_cost_share": 0.012}}
    line = trainstep_table.verdicts(rows)[-1]
    assert ("data wait 1.2%, the step fed by the loader against one batch reused (target "
            "< 5%): met (the loader's own next() 5.3%") in line
    rows["capture_32px"]["data_cost_share"] = 0.05
    assert "reused (target < 5%): not met" in trainstep_table.verdicts(rows)[-1]


def test_verdicts_judge_data_wait_by_the_loaders_own_cost_where_measured():
    rows = {"capture_32px": {"videos_per_s": 4000.0, "data_wait_share": 0.079,
                             "loader_share": 0.031}}
    line = trainstep_table.verdicts(rows)[-1]
    assert "data wait 3.1%, the loader's own cost (target < 5%): met" in line
    assert "unsynchronised steps 7.9%" in line
    rows["capture_32px"]["loader_share"] = 0.051
    assert "cost (target < 5%): not met" in trainstep_table.verdicts(rows)[-1]


def test_device_busy_share_is_the_union_of_device_activity_over_wall_time(monkeypatch):
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA

    def ev(name, a, b, dev=cuda, annotation=False):
        return SimpleNamespace(name=name, time_range=SimpleNamespace(start=a, end=b),
                               device_type=dev, is_user_annotation=annotation)

    events = [ev("gemm", 0, 100), ev("gemm", 50, 150), ev("memcpy", 300, 400),
              # none of these is device work: a host op, a stage's range and a replay's on
              # the device, a profiler step, a user annotation
              ev("aten::mm", 0, 1000, dev=cpu), ev("generator", 0, 1000), ev("replay", 0, 1000),
              ev("ProfilerStep#3", 0, 1000), ev("my range", 0, 1000, annotation=True)]

    class Profile:
        def __init__(self, activities):
            assert activities == [torch.profiler.ProfilerActivity.CUDA]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def events(self):
            return events

    ran = []
    clock = iter([5.0, 5.001])             # 1000 us of wall time
    monkeypatch.setattr(_trainstep, "DEVICE", "cuda")
    monkeypatch.setattr(_trainstep, "sync", lambda: None)
    monkeypatch.setattr(_trainstep.torch.profiler, "profile", Profile)
    monkeypatch.setattr(_trainstep, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    r = _trainstep.device_busy_share(SimpleNamespace(run=lambda: ran.append(1)), 3)
    assert ran == [1, 1, 1]
    assert r["busy_us"] == 250 and r["steps"] == 3
    assert r["wall_us"] == pytest.approx(1000) and r["share"] == pytest.approx(0.25)
    # what the device ran, per step: 3 launches over 3 steps, gemm's 200 us first
    assert r["kernels_per_step"] == 1
    assert r["top_kernels"] == [["gemm", pytest.approx(200 / 3), pytest.approx(2 / 3)],
                                ["memcpy", pytest.approx(100 / 3), pytest.approx(1 / 3)]]
    events[:] = [ev("aten::mm", 0, 1000, dev=cpu)]
    clock = iter([5.0, 5.001])
    r = _trainstep.device_busy_share(SimpleNamespace(run=lambda: None), 3)
    assert r["share"] is None and "no device activity" in r["note"]


def test_each_variant_leaves_a_placeholder_and_a_plain_failure_spoils_nothing(tmp_path,
                                                                              monkeypatch):
    # killed by its stage's time limit, a variant leaves "did not finish" behind; an error
    # that is not a failed capture does not stop the later variants
    recorded, seen = {}, {}
    monkeypatch.setattr(trainstep_table, "record",
                        lambda section, name, payload, device: recorded.__setitem__(name, payload))

    def measure(data, resolution, variant, busy):
        seen[variant] = dict(recorded[f"{variant}_32px"])
        if variant == "capture":
            raise RuntimeError("out of memory")
        return {"videos_per_s": 1000.0}
    monkeypatch.setattr(trainstep_table, "measure", measure)
    status = trainstep_table.main(["--cpu", "--data", str(tmp_path), "--variants", "capture",
                                   "capture_bf16"])
    assert status == 1
    assert seen == {v: {"error": "did not finish within its stage's time limit"}
                    for v in ("capture", "capture_bf16")}
    assert recorded["capture_32px"] == {"error": "RuntimeError: out of memory"}
    assert recorded["capture_bf16_32px"] == {"videos_per_s": 1000.0}


def test_verdicts_targets_are_inclusive_where_the_issue_says_at_least():
    rows = {"capture_32px": {"videos_per_s": 3200.0, "data_wait_share": 0.05,
                             "device_busy": {"share": 0.80}}}
    assert trainstep_table.verdicts(rows)[-1] == (
        "captured step, 32 px: 3200 videos/s (target >= 3200): met; data wait 5.0% "
        "(target < 5%): not met; device busy 80% (target >= 80%): met")


def test_off_a_gpu_the_table_refuses_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainstep_table, "DEVICE", "cpu")
    monkeypatch.setattr(trainstep_table, "record", lambda *a, **k: pytest.fail("recorded"))
    for argv, needle in ((["--variants", "baseline"], "no CUDA device"),
                         (["--prep", "--data", str(tmp_path / "d")], "no CUDA device"),
                         ([], "nothing to do")):
        with pytest.raises(SystemExit) as e:
            trainstep_table.main(argv)
        assert e.value.code == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_a_summary_without_measurements_says_so(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"device": "cpu-X", "results": {"trainstep": {}}}))
    assert trainstep_table.summary(str(path)) == (
        f"no train-step table in {path} (section 'trainstep_table'): nothing measured yet")


def test_summary_reads_a_named_results_file_and_states_the_rows_commits(tmp_path, capsys):
    # --summary read only this machine's file: a GPU table merged into the repository could
    # not be printed anywhere else; its header gave the file's last writer's commit.
    rows = {"baseline_32px": {"videos_per_s": 100.0, "median_step_s": 0.16,
                              "data_wait_share": 0.02, "commit": "aaa", "torch": "2.11"},
            "capture_32px": {"videos_per_s": 2500.0, "median_step_s": 0.0064,
                             "data_wait_share": 0.01, "commit": "bbb", "torch": "2.11"}}
    path = tmp_path / "NVIDIA-H200.json"
    path.write_text(json.dumps({"device": "NVIDIA H200", "torch": "2.13", "commit": "zzz",
                                "results": {"trainstep_table": rows}}))
    assert trainstep_table.main(["--summary", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "device NVIDIA H200, torch 2.11, commit aaa, bbb"
    assert "| capture | 32 | 2500 | 6.40 | 25.0 (baseline at aaa) | 1.0% |  |" in out
    assert trainstep_table.main(["--summary", str(tmp_path / "none.json")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_measure_reports_the_median_run_wherever_it_comes_in_the_rounds(monkeypatch):
    # the median run by wall time is the first of the three here (the other test's is the
    # last): neither the first nor the last run stands for the median in general
    clock = [0.0]
    monkeypatch.setattr(trainstep_table, "TrainStep", _fake_step_class(clock, 2 ** -6))
    monkeypatch.setattr(trainstep_table, "frames_file", lambda data, res: "train.h5")
    monkeypatch.setattr(trainstep_table, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    for order in ([(2.0, 0.1), (3.0, 0.3), (1.0, 0.0)], [(1.0, 0.0), (2.0, 0.1), (3.0, 0.3)]):
        runs = iter(order)
        monkeypatch.setattr(trainstep_table, "run_of_steps", lambda step, n: next(runs))
        monkeypatch.setattr(trainstep_table, "loader_cost", lambda step, n: 0.0)
        monkeypatch.setattr(trainstep_table, "data_cost", lambda step, n, rounds: (1.0, 1.0))
        r = trainstep_table.measure("data", 32, "capture", busy=False)
        assert r["median_step_s"] == pytest.approx(2.0 / 32), order
        assert r["data_wait_share"] == pytest.approx(0.05), order


def test_verdicts_do_not_keep_a_change_that_measured_no_gain():
    # "keep on" only where the change measured faster: equal videos/s is no gain
    rows = {"capture_32px": {"videos_per_s": 4000.0, "data_wait_share": 0.01},
            "capture_64px": {"videos_per_s": 1000.0, "data_wait_share": 0.01},
            "capture_fused_adam_32px": {"videos_per_s": 4000.0},
            "capture_fused_adam_64px": {"videos_per_s": 1100.0},
            "capture_compile_32px": {"videos_per_s": 4000.0}}
    lines = trainstep_table.verdicts(rows)
    assert "| fused_adam | +0.0% (noise ±2.0%) | +10.0% | no |" in lines
    assert "| compile | +0.0% (noise ±2.0%) |  | no |" in lines


def test_verdicts_keep_no_change_that_failed_at_one_resolution():
    # An H200 run (commit fcd82da): torch.compile failed in the captured step at 32 px and
    # gained 8.5% at 64 px; the summary said "keep on: yes" from the 64 px row alone
    rows = {"capture_32px": {"videos_per_s": 3845.0, "data_wait_share": 0.06},
            "capture_64px": {"videos_per_s": 2057.86, "data_wait_share": 0.04},
            "capture_compile_32px": {"error": "AssertionError: expected size 128==128"},
            "capture_compile_64px": {"videos_per_s": 2233.62}}
    lines = trainstep_table.verdicts(rows)
    assert "| compile | failed | +8.5% | no |" in lines
    rows.pop("capture_compile_64px")
    assert "| compile | failed |  | no |" in trainstep_table.verdicts(rows)


def test_measure_refuses_a_diverged_warm_up_and_survives_a_failed_profiler(monkeypatch):
    # A variant whose losses went non-finite while warming up would time a broken step (NaN
    # training is not a speed); a profiler that fails costs the busy share, not the figures.
    clock = [0.0]
    Step = _fake_step_class(clock, 2 ** -6)
    monkeypatch.setattr(trainstep_table, "frames_file", lambda data, res: "train.h5")
    monkeypatch.setattr(trainstep_table, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(trainstep_table, "run_of_steps", lambda step, n: (1.0, 0.0))
    monkeypatch.setattr(trainstep_table, "loader_cost", lambda step, n: 0.0)
    monkeypatch.setattr(trainstep_table, "data_cost", lambda step, n, rounds: (1.0, 1.0))

    def no_profile(step, n):
        raise RuntimeError("CUPTI unavailable")
    monkeypatch.setattr(trainstep_table, "device_busy_share", no_profile)
    monkeypatch.setattr(trainstep_table, "TrainStep", Step)
    r = trainstep_table.measure("data", 32, "capture", busy=True)
    assert r["videos_per_s"] == pytest.approx(16 * 32 / 1.0)
    assert r["device_busy"] == {"share": None,
                                "note": "profiler failed: RuntimeError('CUPTI unavailable')"}
    monkeypatch.setattr(trainstep_table, "TrainStep",
                        type("Diverged", (Step,), {"__call__": lambda self: float("nan")}))
    with pytest.raises(RuntimeError, match="non-finite losses in the warm-up"):
        trainstep_table.measure("data", 32, "capture", busy=False)


def test_pack_measurement_takes_the_median_round(monkeypatch):
    # three rounds of 3, 1 and 2 s (by the main thread's clock): the median, 2 s, not the
    # fastest; videos/s counts every run's videos
    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])
    Step = _fake_step_class([0.0], 0.0)
    Step.run = Step.__call__
    monkeypatch.setattr(trainstep_table, "TrainStep", Step)
    monkeypatch.setattr(trainstep_table, "frames_file", lambda data, res: "train.h5")
    monkeypatch.setattr(trainstep_table, "DEVICE", "cpu")
    monkeypatch.setattr(trainstep_table, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    r = trainstep_table.measure_pack("data", 32, 3)
    assert r["median_round_s"] == 2.0 and r["captured"]
    assert r["videos_per_s"] == 3 * 16 * 60 / 2.0 and r["videos_per_s_per_run"] == 16 * 60 / 2.0


def test_summary_with_a_failed_baseline_leaves_the_ratio_blank(tmp_path):
    # the baseline is the first variant a stage runs: when it failed, the table still prints
    # every other row, with no "x baseline" to compare against
    rows = {"baseline_32px": {"error": "RuntimeError: out of memory"},
            "capture_32px": {"videos_per_s": 2500.0, "median_step_s": 0.0064,
                             "data_wait_share": 0.01}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"device": "GPU-X", "results": {"trainstep_table": rows}}))
    table = trainstep_table.summary(str(path)).splitlines()
    assert "| capture | 32 | 2500 | 6.40 |  | 1.0% |  |" in table
    assert "| baseline | 32 | failed: RuntimeError: out of memory | | | | |" in table


def test_verdicts_keep_no_change_whose_gain_is_within_the_noise():
    # A gain counts above the larger round spread of the two rows, and at least NOISE_FLOOR
    # (three rounds understate the spread): within it a change stays off, and its cell says so.
    floor = trainstep_table.NOISE_FLOOR
    rows = {"capture_32px": {"videos_per_s": 4000.0, "round_spread": 0.01,
                             "data_wait_share": 0.01},
            "capture_64px": {"videos_per_s": 1000.0, "round_spread": 0.05},
            "capture_bf16_32px": {"videos_per_s": 4000.0 * (1 + floor / 2)},   # under the floor
            "capture_bf16_64px": {"videos_per_s": 1200.0},
            "capture_channels_last_32px": {"videos_per_s": 4400.0},
            "capture_channels_last_64px": {"videos_per_s": 1040.0},            # under 5%
            "capture_fused_adam_32px": {"videos_per_s": 4400.0, "round_spread": 0.03},
            "capture_fused_adam_64px": {"videos_per_s": 1060.0, "round_spread": 0.01}}
    lines = trainstep_table.verdicts(rows)
    assert f"| bf16 | +1.0% (noise ±{floor:.1%}) | +20.0% | no |" in lines
    assert "| channels_last | +10.0% | +4.0% (noise ±5.0%) | no |" in lines
    assert "| fused_adam | +10.0% | +6.0% | yes |" in lines


def test_verdicts_say_what_the_gru_node_gains_mocogan():
    rows = {"capture_mocogan_32px": {"videos_per_s": 1500.0, "round_spread": 0.01},
            "capture_mocogan_autograd_32px": {"videos_per_s": 1000.0, "round_spread": 0.01}}
    text = "\n".join(trainstep_table.verdicts(rows))
    assert "mocogan, 32 px: its GRU as trained" in text and "+50.0%" in text
    assert "over autograd's GRUCell loop" in text and "cells" not in text
    rows["capture_mocogan_32px"]["videos_per_s"] = 1010.0
    assert "(within the noise, ±2.0%)" in "\n".join(trainstep_table.verdicts(rows))
    del rows["capture_mocogan_autograd_32px"]
    assert "mocogan" not in "\n".join(trainstep_table.verdicts(rows))


def test_summary_lists_each_profiled_rows_costliest_kernels():
    rows = {"capture_mocogan_32px": {"device_busy": {
        "share": 0.9, "kernels_per_step": 612.4,
        "top_kernels": [["gemm_a", 800.0, 12.0], ["gru_cell", 90.5, 16.0]]}},
            "capture_32px": {"device_busy": {"share": 0.8}}}      # an older row: no table
    lines = trainstep_table.kernel_lines(rows)
    assert lines[1] == "capture_mocogan_32px: 612 kernels and copies per step; the most device time:"
    assert lines[-2:] == ["| `gemm_a` | 800.0 | 12.0 |", "| `gru_cell` | 90.5 | 16.0 |"]
    assert not any("capture_32px" in line for line in lines)
