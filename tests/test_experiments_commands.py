"""hgan.experiments: the command lines the grid gives its jobs, the settings it refuses or
accepts before any data, and the flags of `table1` itself (no subprocess, no training)."""
import os
import re

import pytest

from hgan.experiments import cli, datasets
from hgan.experiments.grid import GridError, GridSpec, check_flags, resumable_args


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


def test_a_run_with_a_summary_but_no_checkpoint_is_neither_done_nor_resumed(tmp_path):
    # checkpoints/ deleted (to save space, say): nothing to evaluate or resume from
    import json
    run, = _spec(tmp_path).runs()
    os.makedirs(run.dir)
    with open(run.path("summary.json"), "w") as f:
        json.dump({"iteration": 10}, f)
    assert run.iteration() == 10
    assert not run.trained() and not run.resumable() and not run.evaluated()
    assert "--resume" not in run.train_command()


@pytest.mark.parametrize("device, want", [("cpu", "cpu"), ("cuda:1", "cuda:1"), ("auto", None)])
def test_evaluations_run_on_the_grids_device(tmp_path, device, want):
    run, = _spec(tmp_path, device=device).runs()
    flags = run.eval_flags()
    if want is None:   # hgan.evaluate's own default: auto
        assert "--device" not in flags
    else:
        assert flags[flags.index("--device") + 1] == want


def test_a_detector_adds_fvd_to_the_metrics_evaluated_and_required(tmp_path):
    from hgan.experiments.grid import metric_list
    spec = _spec(tmp_path, eval_metrics="physics,cyclic", i3d=__file__)
    assert metric_list(spec) == ["fvd", "physics", "cyclic"]
    run, = spec.runs()
    flags = run.eval_flags()
    assert flags[flags.index("--metrics") + 1] == "fvd,physics,cyclic"
    assert flags[flags.index("--i3d") + 1] == __file__
    assert metric_list(_spec(tmp_path, eval_metrics="physics,fvd", i3d=__file__)) == [
        "physics", "fvd"]
    assert metric_list(_spec(tmp_path, eval_metrics=" physics, ,cyclic")) == ["physics", "cyclic"]


# -- settings checked before any data ------------------------------------------------------

def _fvd_spec(tmp_path, **kw):
    # any existing file stands in for the I3D detector: check_flags only looks for it
    return _spec(tmp_path, eval_metrics="physics", i3d=__file__, **kw)


def test_the_paper_protocols_fvd_fits_the_papers_test_split(tmp_path, monkeypatch):
    # --paper-sizes --i3d: 2048 FVD videos (hgan.evaluate's default) from 2048 held-out
    # trajectories, one clip each: exactly enough.
    monkeypatch.delenv("HGAN_I3D", raising=False)
    check_flags(_fvd_spec(tmp_path, test_traj=2048))
    with pytest.raises(GridError, match="FVD over --fvd-videos 2048 needs as many held-out "
                                        "trajectories, and the grid makes --test-traj 2047"):
        check_flags(_fvd_spec(tmp_path, test_traj=2047))
    check_flags(_fvd_spec(tmp_path, test_traj=8, eval_args=("--fvd-videos", "8")))


def test_fvd_takes_clips_of_exactly_its_minimum_length(tmp_path, monkeypatch):
    from hgan.evaluate.fvd import MIN_FRAMES
    monkeypatch.delenv("HGAN_I3D", raising=False)
    kw = dict(test_traj=2048)
    check_flags(_fvd_spec(tmp_path, frames=MIN_FRAMES, **kw))
    with pytest.raises(GridError, match=f"--frames {MIN_FRAMES - 1}: FVD's I3D"):
        check_flags(_fvd_spec(tmp_path, frames=MIN_FRAMES - 1, **kw))


def test_clips_as_long_as_the_trajectories_are_accepted(tmp_path):
    # --frames 16 --traj-frames 16: every clip is a whole trajectory, for training and for
    # evaluation; one frame more is refused before any data.
    spec = _spec(tmp_path, frames=16, traj_frames=16)
    check_flags(spec)
    assert datasets.missing_splits(spec, "pendulum") == ["train", "test"]
    with pytest.raises(GridError, match=re.escape(
            "evaluation with --frames 17 is longer than the held-out trajectories "
            "(--traj-frames 16)")):
        check_flags(_spec(tmp_path, frames=16, traj_frames=16, eval_args=("--frames", "17")))
    with pytest.raises(GridError, match=re.escape("--traj-frames 15 is shorter than the "
                                                  "training clips (--frames 16)")):
        datasets.missing_splits(_spec(tmp_path, frames=16, traj_frames=15), "pendulum")


def test_a_batch_takes_at_most_the_training_trajectories(tmp_path):
    # --train-traj 2 --batch-size 4: the data was generated, then every run failed on it
    # ("batch size 4 exceeds the 2 windows per epoch"); refused before any data now
    check_flags(_spec(tmp_path, batch_size=4, train_traj=4))
    with pytest.raises(GridError, match=re.escape("--train-traj 3 is fewer than a batch "
                                                  "(--batch-size 4)")):
        check_flags(_spec(tmp_path, batch_size=4, train_traj=3))
    assert not os.path.exists(tmp_path / "data")


@pytest.mark.parametrize("change, message", [
    (dict(traj_frames=7), "has frames = 6, the grid asks for 7"),
    (dict(resolution=64), "has resolution = 32, the grid asks for 64"),
    (dict(data_seed=1), "has seed = 0, the grid asks for 1"),
    (dict(test_traj=3), "test.h5 has n_trajectories = 2, the grid asks for 3"),
])
def test_an_existing_dataset_of_other_frames_resolution_or_seed_is_an_error(tmp_path, change,
                                                                            message):
    kw = dict(train_traj=3, test_traj=2, traj_frames=6, frames=4)
    spec = _spec(tmp_path, **kw)
    datasets.generate(spec, "pendulum", ["train", "test"])
    assert datasets.missing_splits(spec, "pendulum") == []
    with pytest.raises(GridError, match=re.escape(message)):
        datasets.missing_splits(_spec(tmp_path, **{**kw, **change}), "pendulum")


# -- table1's own flags -------------------------------------------------------------------

def _parse(*flags):
    return cli.spec_from_args(cli.build_parser().parse_args(["table1", "--out", "g", *flags]))


def test_paper_sizes_are_the_papers_data_sizes():
    spec = _parse("--paper-sizes")
    assert (spec.train_traj, spec.test_traj, spec.traj_frames) == (50_000, 2_048, 512)
    spec = _parse("--train-traj", "7", "--test-traj", "5", "--traj-frames", "20")
    assert (spec.train_traj, spec.test_traj, spec.traj_frames) == (7, 5, 20)
    assert (_parse().train_traj, _parse().test_traj, _parse().traj_frames) == (1_000, 256, 128)


def test_a_pack_of_sixteen_runs_is_accepted():
    # the documented limit: a pack holds at most 16 runs (torch's pool of CUDA streams)
    assert _parse("--pack", "16").runs()
    with pytest.raises(GridError, match="--pack 17: at most 16"):
        _parse("--pack", "17")


@pytest.mark.parametrize("flag, value, repeated", [
    ("--seeds", "0,1,0", "0"), ("--seeds", "0,00", "0"), ("--systems", "pendulum,pendulum", "pendulum"),
    ("--models", "hgan, mocogan,hgan", "hgan")])
def test_a_repeated_system_model_or_seed_is_one_error(capsys, flag, value, repeated):
    # Each repeat was a second run training at once in the same directory, counted twice in
    # compare.md.
    with pytest.raises(SystemExit) as e:
        _parse(flag, value)
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"hgan.experiments: error: argument {flag}: {repeated} "
                                       f"is repeated in {value!r}\n")


@pytest.mark.parametrize("flag, value", [("--deadline", "-1"), ("--deadline", "0"),
                                         ("--status-every", "0"), ("--status-every", "nan")])
def test_seconds_that_are_not_positive_are_one_error(tmp_path, capsys, flag, value):
    # --deadline -1 stopped training at once ("deadline (-1 s) reached"); --status-every 0
    # printed a status line at every poll, four a second
    out = tmp_path / "grid"
    assert cli.main(["table1", "--out", str(out), "--systems", "pendulum", "--models", "hgan",
                     "--device", "cpu", flag, value]) == 2
    assert capsys.readouterr().err == (f"hgan.experiments: error: {flag} must be a number of "
                                       f"seconds > 0, got {float(value):g}\n")
    assert not out.exists()


def test_the_commit_named_in_compare_md_is_hgan_commit_where_set(monkeypatch):
    # bench/gpu/table1.sh copies the tree without .git and names the commit this way
    monkeypatch.setenv("HGAN_COMMIT", "abc1234")
    assert cli._commit() == "abc1234"


def test_an_installed_copy_inside_another_repository_names_no_commit(tmp_path, monkeypatch):
    # site-packages of a venv inside the user's own git project: git would name that
    # project's commit as the grid's
    import subprocess

    import hgan
    monkeypatch.delenv("HGAN_COMMIT", raising=False)
    here = os.path.dirname(os.path.dirname(os.path.abspath(hgan.__file__)))
    assert cli._commit() == subprocess.run(["git", "-C", here, "describe", "--always",
                                            "--dirty"], capture_output=True, text=True
                                           ).stdout.strip()     # this checkout's
    project = tmp_path / "myproject"
    site = project / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    for c in (["init", "-q"], ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q",
                               "--allow-empty", "-m", "theirs"]):
        subprocess.run(["git", "-C", str(project)] + c, check=True)
    theirs = subprocess.run(["git", "-C", str(project), "describe", "--always"],
                            capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(hgan, "__file__", str(site / "hgan" / "__init__.py"))
    got = cli._commit()
    assert theirs not in got and got == f"unknown (installed hgan {hgan.__version__})"
    # a source tree of this project copied without its .git: unknown, not "installed"
    tree = tmp_path / "copied"
    (tree / "hgan").mkdir(parents=True)
    (tree / "pyproject.toml").write_text('[project]\nname = "hgan"\n')
    monkeypatch.setattr(hgan, "__file__", str(tree / "hgan" / "__init__.py"))
    assert cli._commit() == "unknown"


@pytest.mark.parametrize("flag", ["--train-traj", "--test-traj", "--traj-frames"])
def test_no_trajectories_or_frames_is_one_error_before_any_data(tmp_path, capsys, flag):
    # --train-traj 0 or --test-traj 0 used to pass every check; then each system's data
    # generation failed in its thread with h5py's "Chunk shape must not be greater than data
    # shape", and the command exited 1 with a table of runs never started
    out = tmp_path / "grid"
    assert cli.main(["table1", "--out", str(out), "--systems", "pendulum", "--models", "hgan",
                     "--device", "cpu", flag, "0"]) == 2
    assert capsys.readouterr().err == f"hgan.experiments: error: {flag} must be >= 1, got 0\n"
    assert not out.exists()


def test_physics_metrics_with_fewer_than_two_held_out_videos_are_refused_before_training(tmp_path):
    # hgan.evaluate refuses them (a Frechet distance needs a covariance), but only after the
    # grid had trained every run; two are enough
    check_flags(_spec(tmp_path, test_traj=2))
    with pytest.raises(GridError, match=r"physics metrics need at least 2 held-out videos; the "
                                        r"grid would give 1 \(--test-traj 1, --physics-videos 256"):
        check_flags(_spec(tmp_path, test_traj=1))
    with pytest.raises(GridError, match=r"would give 1 \(--test-traj 8, --physics-videos 1\)"):
        check_flags(_spec(tmp_path, test_traj=8, eval_args=("--physics-videos", "1")))
    check_flags(_spec(tmp_path, test_traj=1, eval_metrics="cyclic"))  # no physics: no limit


@pytest.mark.parametrize("what, extra, flag, option", [
    ("train_args", ("--out", "elsewhere"), "--out", "--out"),
    ("train_args", ("--batch-size=4",), "--batch-size", "--batch-size"),
    ("train_args", ("--batch", "4"), "--batch-size", "--batch-size"),  # an abbreviation
    ("train_args", ("--system", "two_body"), "--system", "--systems"),
    ("train_args", ("--seed", "3"), "--seed", "--seeds"),
    ("train_args", ("--resolution", "64"), "--resolution", "--resolution"),
    ("eval_args", ("--out", "elsewhere"), "--out", "--out"),
    ("eval_args", ("--metrics", "cyclic"), "--metrics", "--eval-metrics"),
    ("eval_args", ("--checkpoint", "other.pt"), "--checkpoint", "--out"),
    ("train_args", ("--frames", "8"), "--frames", "--frames"),
    ("train_args", ("--iters", "3"), "--iters", "--iters"),
    ("train_args", ("--data", "elsewhere"), "--data", "--out"),
    ("eval_args", ("--data", "other.h5"), "--data", "--out"),
])
def test_extra_flags_may_not_override_the_grids_own(tmp_path, what, extra, flag, option):
    # `--train-args '--out X --batch-size 4'` trained into X with batch 4 while compare.md
    # said batch 16, and the grid logged "0 it" for the run it had asked for.
    kind = "--train-args" if what == "train_args" else "--eval-args"
    with pytest.raises(GridError, match=rf"^{kind} {flag}: the grid sets it for every run; use "
                                        rf"the grid's own {option}$"):
        check_flags(_spec(tmp_path, **{what: extra}))


def test_extra_flags_the_grid_does_not_set_or_that_repeat_its_value_are_accepted(tmp_path):
    check_flags(_spec(tmp_path, train_args=("--amp", "--batch-size", "16", "--lr", "1e-4"),
                      eval_args=("--frames", "12", "--physics-videos", "64")))
    with pytest.raises(GridError, match="grid resumes its own runs"):
        check_flags(_spec(tmp_path, train_args=("--resume", str(tmp_path))))


def test_autocast_flags_that_no_run_can_train_with_are_refused_before_any_data(tmp_path):
    # train.py's setup refuses them, not its parser: the grid generated every system's data,
    # then failed every run on them
    with pytest.raises(GridError, match=r"^--train-args: --amp-dtype fp16 is for CUDA"):
        check_flags(_spec(tmp_path, device="cpu", train_args=("--amp", "--amp-dtype", "fp16")))
    with pytest.raises(GridError, match=r"^--train-args: --amp-dtype chooses autocast's dtype "
                                        r"and autocast is off: add --amp$"):
        check_flags(_spec(tmp_path, device="cpu", train_args=("--amp-dtype", "bf16")))
    check_flags(_spec(tmp_path, device="cpu", train_args=("--amp", "--amp-dtype", "bf16")))
    assert not os.listdir(tmp_path)


def test_a_grid_evaluating_physics_on_two_frame_clips_is_refused_before_training(tmp_path):
    with pytest.raises(GridError, match=r"--frames 2: the physics metrics need at least 3"):
        check_flags(_spec(tmp_path, frames=2))
    check_flags(_spec(tmp_path, frames=2, eval_args=("--frames", "3")))
    check_flags(_spec(tmp_path, frames=2, eval_metrics="cyclic"))


def test_an_extra_seed_is_refused_whichever_run_it_matches(tmp_path):
    # Checked on one run per system and model, `--seeds 1,0 --train-args '--seed 0'` passed
    # (the run checked had seed 0) and would have trained both runs with seed 0.
    for seeds in ((0, 1), (1, 0)):
        with pytest.raises(GridError, match="--train-args --seed"):
            check_flags(_spec(tmp_path, seeds=seeds, train_args=("--seed", "0")))


def test_grid_settings_train_py_refuses_are_named_with_extra_flags_given(tmp_path):
    # The check of the grid's own flags without the extra ones crashed with a TypeError.
    with pytest.raises(GridError, match="refuses the grid's own settings"):
        check_flags(_spec(tmp_path, resolution=40, train_args=("--resolution", "32")))


def test_an_installed_package_trains_through_hgan_train(monkeypatch, tmp_path):
    # `pip install .` installs hgan but not the checkout's train.py: the grid's runs then use
    # the hgan-train console script beside this interpreter (train.py's flags, its entry)
    import sysconfig

    from hgan.experiments import grid
    monkeypatch.setattr(grid, "__file__", str(tmp_path / "site-packages" / "hgan" / "experiments"
                                              / "grid.py"))
    script = os.path.join(sysconfig.get_path("scripts"), "hgan-train")
    if not os.path.exists(script):
        pytest.skip("hgan-train is not installed beside this interpreter")
    assert grid.train_script() == script
    with open(script) as f:
        assert "hgan.train.cli" in f.read()  # the same entry as train.py's


def test_hgan_train_of_a_user_install_and_a_foreign_train_py(monkeypatch, tmp_path):
    # `pip install --user .` puts hgan-train in the user scheme's scripts (~/.local/bin), not
    # in sysconfig's default scripts folder: the grid refused it ('... not found'). And a
    # train.py beside the installed package that is not this project's (a top-level module
    # another distribution installed into site-packages) was run as the grid's trainer.
    import sysconfig

    from hgan.experiments import grid
    site = tmp_path / "site-packages"
    monkeypatch.setattr(grid, "__file__", str(site / "hgan" / "experiments" / "grid.py"))
    (site / "hgan" / "experiments").mkdir(parents=True)
    (site / "train.py").write_text("print('another project')\n")
    default, user = tmp_path / "bin", tmp_path / "user-bin"
    default.mkdir()
    user.mkdir()
    name = "hgan-train.exe" if os.name == "nt" else "hgan-train"
    (user / name).write_text("from hgan.train.cli import entry\n")
    real = sysconfig.get_path
    monkeypatch.setattr(sysconfig, "get_path", lambda key, scheme=None, *a, **k: str(
        user if scheme and scheme.endswith("_user") else default) if key == "scripts"
        else real(key, scheme, *a, **k))
    assert grid.train_script() == str(user / name)
    (default / name).write_text("from hgan.train.cli import entry\n")
    assert grid.train_script() == str(default / name)


@pytest.mark.parametrize("device, index", [("cuda:1", 1), ("cuda", 0), ("auto", 0)])
def test_compare_md_names_the_gpu_the_grid_ran_on(monkeypatch, device, index):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"GPU number {i}")
    assert cli._device_name(device).startswith(f"GPU number {index} (torch ")


def test_the_runs_read_their_data_where_the_grid_writes_it(tmp_path):
    # docs/experiments.md: the grid writes <out>/data/<system>/{train,test}.h5; train.py reads
    # <--data>/<system>/train.h5
    from hgan.train.config import parse_command_line
    run, = _spec(tmp_path, systems=("mass_spring",)).runs()
    cfg = parse_command_line(run.train_flags())[0]
    assert cfg.data_path == os.path.join(str(tmp_path), "data", "mass_spring", "train.h5")


def test_fvd_alone_is_refused_without_a_detector_and_accepted_with_one(tmp_path, monkeypatch):
    # hgan.evaluate exits 2 on --metrics fvd with no detector: every evaluation would fail
    monkeypatch.delenv("HGAN_I3D", raising=False)
    with pytest.raises(GridError, match=r"^--eval-metrics fvd alone needs the I3D detector: "
                                        r"pass --i3d PATH \(or set \$HGAN_I3D\)$"):
        check_flags(_spec(tmp_path, eval_metrics="fvd"))
    check_flags(_spec(tmp_path, eval_metrics="fvd", i3d=__file__, test_traj=2048))


def test_evaluation_against_a_real_file_of_its_own_is_not_limited_by_the_grids_test_split(
        tmp_path, monkeypatch):
    # --eval-args '--real FILE': the held-out videos are FILE's, not the grid's test.h5, so
    # neither --traj-frames nor --test-traj bounds the clips or the FVD videos
    monkeypatch.delenv("HGAN_I3D", raising=False)
    real = ("--real", str(tmp_path / "real.h5"))
    check_flags(_spec(tmp_path, frames=16, traj_frames=16, eval_args=("--frames", "17") + real))
    check_flags(_fvd_spec(tmp_path, test_traj=8, eval_args=real))
    check_flags(_spec(tmp_path, test_traj=1, eval_args=real))


def test_an_unknown_extra_flag_is_named_in_one_line(tmp_path):
    # train.py's own one-line reason, without argparse's "usage: ... error:" prefix
    with pytest.raises(GridError, match=r"^--train-args: unrecognized arguments: --ngff 8 \(see "
                                        r"python train.py --help\)$"):
        check_flags(_spec(tmp_path, train_args=("--ngff", "8")))
    with pytest.raises(GridError, match=r"^--eval-args: unrecognized arguments: --probe-stepz 5 "
                                        r"\(see python -m hgan.evaluate --help\)$"):
        check_flags(_spec(tmp_path, eval_args=("--probe-stepz", "5")))


def test_extra_flags_whose_quotes_do_not_close_are_named(tmp_path):
    from hgan.experiments.grid import split_args
    assert split_args("--lr 1e-3 --note 'a b'", "--train-args") == ("--lr", "1e-3", "--note", "a b")
    with pytest.raises(GridError) as e:
        split_args("'unclosed", "--train-args")
    assert str(e.value) == "--train-args \"'unclosed\": no closing quotation"


def test_a_grid_of_no_iterations_or_a_missing_detector_is_refused(tmp_path, capsys):
    # docs/experiments.md: a missing --i3d file stops the command before any data
    from hgan.experiments.runner import check_ready
    with pytest.raises(GridError, match=r"^--iters must be >= 1, got 0$"):
        check_ready(_spec(tmp_path, iters=0))
    missing = tmp_path / "i3d_torchscript.pt"
    out = tmp_path / "grid"
    assert cli.main(["table1", "--out", str(out), "--systems", "pendulum", "--models", "hgan",
                     "--device", "cpu", "--i3d", str(missing)]) == 2
    assert capsys.readouterr().err == f"hgan.experiments: error: --i3d {missing} does not exist\n"
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (("--parallel", "0"), "--parallel must be >= 1, got 0"),
    (("--pack", "0"), "--pack must be >= 1, got 0"),
    (("--data-only", "--report-only"), "--data-only and --report-only: choose one"),
    (("--probes",), "--probes goes with --data-only (a grid's first evaluation of a system "
                    "trains its probe anyway)"),
    (("--seeds", ","), "--systems, --models and --seeds need at least one entry each"),
    # docs/experiments.md: --compile and --profile are refused with --pack > 1
    (("--pack", "2", "--train-args=--profile"),
     "--pack > 1 with --train-args --profile: packed runs cannot use them (hgan.train.pack); "
     "use --pack 1"),
])
def test_table1_flags_that_cannot_work_together_are_refused(flags, message):
    with pytest.raises(GridError, match=f"^{re.escape(message)}$"):
        _parse(*flags)


def test_report_only_with_paper_sizes_states_the_papers_data_sizes(tmp_path):
    # `--report-only --paper-sizes`: the flag given beside it wins over grid.json's sizes
    saved = {"spec": _spec(tmp_path, train_traj=6, test_traj=4, traj_frames=8).to_dict()}
    argv = ["table1", "--out", str(tmp_path), "--report-only", "--paper-sizes"]
    a = cli.build_parser().parse_args(argv)
    spec = cli._report_spec(saved, cli.spec_from_args(a), cli._given(argv))
    assert (spec.train_traj, spec.test_traj, spec.traj_frames) == (50_000, 2_048, 512)
    assert (spec.systems, spec.iters) == (("pendulum",), 10)      # the rest: grid.json's


def test_seeds_that_are_not_integers_are_one_error(capsys):
    with pytest.raises(SystemExit) as e:
        _parse("--seeds", "0,a")
    assert e.value.code == 2
    assert capsys.readouterr().err == ("hgan.experiments: error: argument --seeds: expected "
                                       "comma-separated integers, got '0,a'\n")
