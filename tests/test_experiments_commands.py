"""hgan.experiments: the command lines the grid gives its jobs, the settings it refuses or
accepts before any data, and the flags of `table1` itself (no subprocess, no training)."""
import os

from hgan.experiments.grid import GridSpec, resumable_args


def _spec(tmp_path, **kw):
    base = dict(out=str(tmp_path), systems=("pendulum",), models=("hgan",), seeds=(0,),
                iters=10, eval_metrics="physics,cyclic")
    base.update(kw)
    return GridSpec(**base)


def _interrupted(run):
    """A run with a checkpoint: the grid resumes it."""
    os.makedirs(run.path("checkpoints"), exist_ok=True)
    open(run.checkpoint, "wb").close()


def test_a_resumed_run_is_asked_for_the_grids_iterations_on_the_grids_device(tmp_path):
    run, = _spec(tmp_path, iters=10, device="cpu",
                 train_args=("--amp", "--log-every", "5", "--ngf", "8")).runs()
    _interrupted(run)
    # written out by hand: train.py, the run, the grid's --iters and --device, then only the
    # --train-args a resumed run takes (--amp and --ngf are the checkpoint's to keep)
    assert run.train_command(python="py")[2:] == [
        "--resume", run.dir, "--iters", "10", "--device", "cpu", "--log-every", "5"]


def _train_flags_of(field):
    """train.py's flags for a RunConfig field: --name VALUE, or --name / --no-name for a
    switch (argparse.BooleanOptionalAction)."""
    from dataclasses import fields

    from hgan.train.config import RunConfig
    f = next(f for f in fields(RunConfig) if f.name == field)
    flag = "--" + field.replace("_", "-")
    default = getattr(RunConfig(), field)
    if f.type is bool:
        return [[flag], ["--no-" + flag[2:]]]
    value = {"device": "cpu", "loader": "torch"}.get(field, str(default + 1)
                                                       if isinstance(default, int) else default)
    return [[flag, value], [f"{flag}={value}"]]


def test_every_flag_train_py_lets_a_resumed_run_change_reaches_the_resumed_run(tmp_path):
    # The grid accepts a change of these flags between two commands (check_config skips the
    # fields train.py lets a resume change); a resumed run must then get them, or the table's
    # header states --train-args a resumed segment never had (e.g. --no-cuda-graph, added
    # because capture failed, silently dropped: the resumed run captured again).
    from hgan.train.config import parse_command_line, resumable_fields
    # --data: the grid's own (a resumed run keeps the data its checkpoint names)
    fields_ = [f for f in resumable_fields() if f != "data"]
    assert {"iters", "device", "cuda_graph", "n_samples", "progress", "log_every"} <= set(fields_)
    for field in fields_:
        for flags in _train_flags_of(field):
            assert resumable_args(tuple(flags) + ("--ngf", "8")) == flags, flags
            # and train.py's own parser reads the resumed command as that change
            run, = _spec(tmp_path, train_args=tuple(flags)).runs()
            _interrupted(run)
            cmd = run.train_command()
            given = parse_command_line(cmd[2:])[2]
            want = parse_command_line(["--resume", run.dir] + flags)[2]
            assert given[field] == want[field], (flags, cmd)


def test_a_resumed_command_holds_only_flags_train_py_accepts_on_resume(tmp_path):
    from hgan.train.config import parse_command_line, resumable_fields
    run, = _spec(tmp_path, train_args=("--amp", "--lr", "0.001", "--no-cuda-graph", "--ngf", "8",
                                       "--num-workers", "0")).runs()
    _interrupted(run)
    given = parse_command_line(run.train_command()[2:])[2]
    # a flag outside these would have to repeat the checkpoint's value, or train.py refuses
    assert set(given) <= set(resumable_fields()) | {"out"}, given
    assert (given["iters"], given["cuda_graph"], given["num_workers"]) == (10, False, 0)
