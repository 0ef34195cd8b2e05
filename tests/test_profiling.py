"""step_profiler writes TensorBoard and Chrome traces that parse and name every stage."""
import glob
import json
import os
import warnings

import pytest
import torch

from hgan.train.profiling import STAGES, load_trace, stage, step_profiler


def tiny_steps(run_dir, n_steps, enabled=True):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 1, 3, padding=1))
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    with step_profiler(str(run_dir), enabled, wait=1, warmup=1, active=2) as prof:
        for _ in range(n_steps):
            with stage("data"):
                x = torch.randn(2, 3, 8, 8)
            with stage("motion"):
                x = x * 0.5
            with stage("generator"):
                y = net(x)
            with stage("D_I"):
                loss_i = y.square().mean()
            with stage("D_V"):
                loss_v = y.abs().mean()
            with stage("backward"):
                (loss_i + loss_v).backward()
            with stage("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            prof.step()


@pytest.mark.parametrize("plugin", [False, True])
def test_traces_are_written_and_parse(tmp_path, capsys, monkeypatch, plugin):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        (object() if plugin else None) if name == "torch_tb_profiler" else find_spec(name, *a)))
    with warnings.catch_warnings():
        # torch's deprecated event attributes (self_cuda_time_total) warn on every read
        warnings.simplefilter("error", FutureWarning)
        tiny_steps(tmp_path, 5)
    prof_dir = tmp_path / "profile"
    tb = glob.glob(str(prof_dir / "*.pt.trace.json"))
    assert len(tb) == 1, "torch-tb-profiler globs <worker>.<ts>.pt.trace.json"
    # trace.json is the same file under a fixed name, not a second copy of tens of MB
    assert os.path.samefile(tb[0], prof_dir / "trace.json")
    # without the plugin (not in .[dev]), TensorBoard shows no trace: the line says where it is
    hint = "" if plugin else ' (with the profiler plugin: pip install -e ".[profile]")'
    assert capsys.readouterr().err == (f"[hgan] --profile: 2 steps recorded (after 1 skipped "
                                       f"and 1 warm-up) in {prof_dir}: tensorboard --logdir "
                                       f"{prof_dir}{hint}, or trace.json in ui.perfetto.dev\n")
    for path in (tb[0], prof_dir / "trace.json"):
        trace = load_trace(str(path))
        names = {e.get("name") for e in trace["traceEvents"]}
        assert set(STAGES) <= names
        # Exactly the `active` steps were recorded.
        assert sum(1 for n in names if n and n.startswith("ProfilerStep#")) == 2

    with open(prof_dir / "stages.json") as f:
        shares = json.load(f)
    assert shares["steps"] == 2 and shares["step_us"] > 0
    # Device time only where CUDA activity was traced; on CPU it would be all zeros.
    assert ("stage_device_us" in shares) == torch.cuda.is_available()
    assert set(shares["share"]) == set(STAGES)
    assert all(0 < s < 1 for s in shares["share"].values())
    # Stages are disjoint sub-ranges of a step: together at most the whole step.
    assert sum(shares["share"].values()) <= 1.0


@pytest.mark.parametrize("n_steps", [0, 2, 3])
def test_run_shorter_than_the_schedule_records_nothing_and_says_so(tmp_path, capsys, n_steps):
    # The schedule of tiny_steps: 1 skipped + 1 warm-up + 2 recorded = 4 steps.
    tiny_steps(tmp_path, n_steps)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"made {n_steps} steps" in err[0] and "needs 4" in err[0] and "2 recorded" in err[0]
    assert not os.path.exists(tmp_path / "profile" / "stages.json")
    assert not glob.glob(str(tmp_path / "profile" / "*.json"))


def test_full_schedule_prints_only_where_it_wrote(tmp_path, capsys):
    tiny_steps(tmp_path, 4)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("[hgan] --profile: 2 steps recorded"), err
    with open(tmp_path / "profile" / "stages.json") as f:
        assert json.load(f)["steps"] == 2


def test_disabled_profiler_writes_nothing(tmp_path):
    tiny_steps(tmp_path, 3, enabled=False)
    assert not os.path.exists(tmp_path / "profile")


def test_bad_schedule_and_bad_trace_are_named(tmp_path):
    with pytest.raises(ValueError, match="active >= 1"):
        step_profiler(str(tmp_path), True, active=0)
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a Chrome trace"):
        load_trace(str(bad))


def test_train_profile_flag_writes_stage_traces(tiny_pendulum_h5, tmp_path):
    """`train.py --profile` on CPU: the trainer's own stages land in both trace files."""
    from hgan.train import config_from_args, train

    data = tmp_path / "data" / "pendulum"
    data.mkdir(parents=True)
    os.symlink(tiny_pendulum_h5, data / "train.h5")
    out = tmp_path / "run"
    cfg, _ = config_from_args([
        "--system", "pendulum", "--data", str(tmp_path / "data"), "--out", str(out),
        # the profiler's default schedule needs 6 steps; what it records grows with the
        # shapes (a 4 x 8-frame batch with a 10-frame rollout: an 8 MB trace, 2x the time)
        "--iters", "6", "--batch-size", "2", "--frames", "2", "--clip-frames", "2",
        "--rollout-frames", "2",
        "--ngf", "4", "--ndf", "4", "--loader", "torch", "--num-workers", "0", "--device", "cpu",
        "--log-every", "100", "--sample-every", "100", "--ckpt-every", "100", "--no-progress",
        "--profile"])
    train(cfg)
    assert glob.glob(str(out / "profile" / "*.pt.trace.json"))
    names = {e.get("name") for e in load_trace(str(out / "profile" / "trace.json"))["traceEvents"]}
    assert set(STAGES) <= names
    with open(out / "profile" / "stages.json") as f:
        shares = json.load(f)["share"]
    assert set(shares) == set(STAGES) and 0 < sum(shares.values()) <= 1.0


def _evt(name, start, end, device_us=0.0, kind=torch.autograd.DeviceType.CPU, thread=1):
    """A profiler event as stage_shares_from_events reads it (built by hand: no GPU here)."""
    from types import SimpleNamespace
    return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end),
                           device_type=kind, self_device_time_total=device_us, thread=thread)


def test_device_time_goes_to_the_stage_open_at_launch_whatever_the_thread():
    # What a CUDA profile looks like (no GPU here, so the events are built by hand): the
    # autograd engine launches the backward's kernels from its own thread, whose ops no range
    # of the training thread encloses; a stage's own gpu_user_annotation is a device event.
    from hgan.train.profiling import stage_shares_from_events
    cuda_kind = torch.autograd.DeviceType.CUDA
    evt = _evt

    events = [
        evt("ProfilerStep#3", 0, 100),
        evt("generator", 0, 40), evt("motion", 5, 15),         # motion nested in generator
        evt("aten::addmm", 6, 7, device_us=3.0),                # -> motion (innermost)
        evt("aten::conv2d", 20, 22, device_us=5.0),             # -> generator
        evt("backward", 50, 90),
        evt("aten::mm", 60, 61, device_us=7.0, thread=2),       # autograd thread -> backward
        evt("aten::mul", 95, 96, device_us=11.0),               # in no stage: not counted
        evt("backward", 50, 90, device_us=40.0, kind=cuda_kind),  # annotation: skipped
    ]
    shares = stage_shares_from_events(events)
    assert shares["steps"] == 1 and shares["step_us"] == 100
    assert shares["stage_device_us"] == {"motion": 3.0, "generator": 5.0, "backward": 7.0}
    assert shares["stage_cpu_us"] == {"generator": 40, "motion": 10, "backward": 40}
    assert shares["share"]["backward"] == pytest.approx(0.4)


def steps_with(run_dir, n_steps, **schedule):
    """n_steps trivial training-like steps under step_profiler(run_dir, True, **schedule)."""
    with step_profiler(str(run_dir), True, **schedule) as prof:
        for _ in range(n_steps):
            with stage("data"):
                torch.ones(4).sum()
            prof.step()


def recorded_steps(run_dir):
    names = {e.get("name") for e in load_trace(str(run_dir / "profile" / "trace.json"))["traceEvents"]}
    return sorted(int(n.split("#")[1]) for n in names if n and n.startswith("ProfilerStep#"))


def test_default_schedule_is_one_skipped_two_warmup_three_recorded(tmp_path, capsys):
    # What docs/fast-training.md says --profile does (train.py uses the defaults): steps 0-2
    # stay out of the trace, 3-5 are recorded, and a run of 5 steps records nothing.
    steps_with(tmp_path / "six", 6)
    assert recorded_steps(tmp_path / "six") == [3, 4, 5]
    with open(tmp_path / "six" / "profile" / "stages.json") as f:
        assert json.load(f)["steps"] == 3
    assert capsys.readouterr().err.startswith(
        "[hgan] --profile: 3 steps recorded (after 1 skipped and 2 warm-up) in ")
    steps_with(tmp_path / "five", 5)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["[hgan] --profile: the run made 5 steps, a profile needs 6 (1 skipped + "
                   "2 warm-up + 3 recorded); nothing was recorded"], err
    assert not (tmp_path / "five" / "profile").exists() or not os.listdir(tmp_path / "five" / "profile")


def test_a_long_run_records_its_steps_once(tmp_path):
    # 3 schedules' worth of steps: one trace (one span in TensorBoard) of the first active steps.
    steps_with(tmp_path, 13, wait=1, warmup=1, active=2)
    assert len(glob.glob(str(tmp_path / "profile" / "*.pt.trace.json"))) == 1
    assert recorded_steps(tmp_path) == [2, 3]
    with open(tmp_path / "profile" / "stages.json") as f:
        assert json.load(f)["steps"] == 2


def test_an_op_starting_with_its_stage_counts_for_that_stage():
    # Timestamps are whole microseconds: a stage's first op often starts at the stage's start.
    from hgan.train.profiling import stage_shares_from_events
    evt = _evt

    events = [evt("ProfilerStep#3", 0, 100), evt("data", 0, 10), evt("motion", 10, 30),
              evt("aten::mm", 10, 12, device_us=4.0), evt("aten::add", 0, 1, device_us=2.0)]
    shares = stage_shares_from_events(events)
    assert shares["stage_device_us"] == {"data": 2.0, "motion": 4.0}


def test_a_negative_wait_or_warmup_is_named(tmp_path):
    for schedule in ({"wait": -1}, {"warmup": -1}):
        with pytest.raises(ValueError) as exc:
            step_profiler(str(tmp_path), True, **schedule)
        assert str(exc.value).startswith("profiler schedule needs wait, warmup >= 0 and "
                                         "active >= 1, got wait="), schedule
    assert not (tmp_path / "profile").exists()


def test_a_run_of_one_step_says_one_step(tmp_path, capsys):
    steps_with(tmp_path, 1)
    assert capsys.readouterr().err == ("[hgan] --profile: the run made 1 step, a profile needs "
                                       "6 (1 skipped + 2 warm-up + 3 recorded); nothing was "
                                       "recorded\n")


def test_a_second_profile_in_one_run_directory_relinks_trace_json(tmp_path, monkeypatch):
    # A resumed run profiled again: trace.json is then the new trace's second name (a hard
    # link, not a copy of tens of MB), and the first trace stays beside it.
    from hgan.train import profiling
    clock = iter([1000.0, 2000.0])
    monkeypatch.setattr(profiling.time, "time", lambda: next(clock))
    steps_with(tmp_path, 6)
    steps_with(tmp_path, 6)
    traces = sorted(glob.glob(str(tmp_path / "profile" / "*.pt.trace.json")))
    assert [t.rsplit(".", 4)[-4] for t in traces] == ["1000000", "2000000"]
    assert os.path.samefile(traces[1], tmp_path / "profile" / "trace.json")


def test_an_op_starting_as_its_stage_ends_is_not_that_stages():
    # Windows are half-open, [start, end): an op at a stage's end belongs to a stage that
    # starts there (test above), and to none when none does.
    from hgan.train.profiling import stage_shares_from_events
    evt = _evt

    events = [evt("ProfilerStep#3", 0, 100), evt("data", 0, 10),
              evt("aten::mm", 10, 12, device_us=4.0), evt("aten::add", 9, 10, device_us=2.0)]
    assert stage_shares_from_events(events)["stage_device_us"] == {"data": 2.0}


def test_device_time_goes_by_time_whatever_order_the_events_come_in():
    from hgan.train.profiling import stage_shares_from_events
    evt = _evt

    # the later stage listed first, as a profiler's events need not be in start order
    events = [evt("ProfilerStep#3", 0, 100), evt("motion", 10, 30), evt("data", 0, 10),
              evt("aten::add", 5, 6, device_us=2.0), evt("aten::mm", 20, 22, device_us=4.0)]
    assert stage_shares_from_events(events)["stage_device_us"] == {"data": 2.0, "motion": 4.0}


def test_a_run_that_fails_keeps_its_error_alone(tmp_path, capsys):
    # A step that raises ends the run with its traceback: no "nothing was recorded" line
    # about a schedule the error cut short.
    with pytest.raises(RuntimeError, match="boom"):
        with step_profiler(str(tmp_path), True) as prof:
            prof.step()
            raise RuntimeError("boom")
    assert capsys.readouterr().err == ""


def test_json_without_trace_events_is_named(tmp_path):
    other = tmp_path / "stages.json"
    other.write_text('{"steps": 3}')
    with pytest.raises(ValueError, match=f"^{other} has no traceEvents; not a Chrome trace$"):
        load_trace(str(other))
