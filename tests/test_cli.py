"""Command lines: train.py's flags come from the config dataclasses, bad values end in one
line with exit code 2, and the console scripts resolve to callables."""
import argparse
import os
import subprocess
import sys
from dataclasses import fields

import pytest

from hgan.models import ModelConfig
from hgan.train import RunConfig, config_from_args
from hgan.train.config import build_parser, resumable_fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("command,name", [
    ([os.path.join(ROOT, "train.py")], "train.py"),
    (["-m", "hgan.train.cli"], "python -m hgan.train.cli"),  # it said train.py
])
def test_train_rejects_a_bad_value_in_one_line_with_exit_2(command, name):
    r = subprocess.run([sys.executable, *command, "--batch-size", "0"],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [f"{name}: error: --batch-size must be >= 1, got 0"], r.stderr


@pytest.mark.parametrize("argv,needle", [
    (["--k", "0"], "error: --k must be a positive integer, got 0"),
    (["--hidden", "0"], "error: --hidden must be a positive integer, got 0"),
    (["--frames", "0"], "error: --frames must be >= 2, got 0"),   # not D_V's clip_frames
    (["--frames", "1"], "error: --frames must be >= 2, got 1"),   # a still image: no motion
    (["--rollout-frames", "-1"], "error: --rollout-frames must be >= 0, got -1"),
    (["--model", "hnn_gan", "--motion-dim", "5"], "error: hnn_gan uses eps_m as (q0, p0)"),
    (["--model", "hnn_gan", "--motion-dim", "5"], "must equal 2*k"),
    (["--resolution", "40"], "unsupported resolution 40"),
    (["--num-workers", "-1"], "--num-workers must be >= 0"),
    (["--loader", "ftp"], "invalid choice: 'ftp'"),
])
def test_invalid_values_exit_2_naming_the_problem(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        config_from_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_every_config_field_is_a_flag_and_reaches_its_config():
    flags = {a.dest for a in build_parser()._actions}
    for f in fields(RunConfig) + fields(ModelConfig):
        if f.metadata.get("cli", True):
            assert f.name in flags and f.metadata["help"], f.name
    cfg, _ = config_from_args(["--k", "3", "--hidden", "24", "--depth", "3", "--motion-dim", "7",
                               "--content-dim", "9", "--n-samples", "2", "--no-progress"])
    m = cfg.model
    assert (m.k, m.hidden, m.depth, m.motion_dim, m.content_dim) == (3, 24, 3, 7, 9)
    assert (cfg.n_samples, cfg.progress) == (2, False)
    assert m.latent_dim == 9 + 2 * 3


def test_resumable_fields_are_declared_on_the_fields():
    assert set(resumable_fields()) == {
        "iters", "device", "log_every", "sample_every", "ckpt_every", "keep_every",
        "n_samples", "profile", "loader", "num_workers", "progress", "cuda_graph", "data"}
    assert "batch_size" not in resumable_fields() and "seed" not in resumable_fields()


def test_console_scripts_resolve_to_callables():
    from importlib.metadata import entry_points
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts")
               if ep.name.startswith("hgan-")}
    assert set(scripts) == {"hgan-train", "hgan-data", "hgan-evaluate", "hgan-sample"}
    for name, ep in scripts.items():
        assert callable(ep.load()), name


def test_hnn_gan_motion_dim_defaults_to_2k():
    cfg, _ = config_from_args(["--model", "hnn_gan", "--k", "4"])
    assert (cfg.model.k, cfg.model.motion_dim) == (4, 8)
    assert config_from_args(["--model", "hnn_gan"])[0].model.motion_dim == 20
    assert config_from_args(["--model", "hgan", "--k", "4"])[0].model.motion_dim == 20
    # an explicit value is taken as given, and a wrong one is still an error
    cfg, _ = config_from_args(["--model", "hnn_gan", "--k", "4", "--motion-dim", "8"])
    assert cfg.model.motion_dim == 8
    with pytest.raises(SystemExit):
        config_from_args(["--model", "hnn_gan", "--k", "4", "--motion-dim", "20"])


def test_parse_command_line_reports_the_flags_given():
    from hgan.train.config import parse_command_line
    cfg, resume, given = parse_command_line(["--resume", "r", "--iters", "7", "--no-progress",
                                             "--k", "3", "--batch-size", "16"])
    assert resume == "r"
    assert given == {"iters": 7, "progress": False, "k": 3, "batch_size": 16}  # 16: the default
    assert parse_command_line([])[2] == {}


def test_help_shows_no_empty_defaults():
    text = build_parser().format_help()
    assert "(default: )" not in text
    assert "(default: 100000)" in text  # the other defaults are still shown
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT, "COLUMNS": "200"})
    assert r.returncode == 0 and "(default: )" not in r.stdout
    assert "--resume RESUME" in r.stdout and "runs/<system>-<model>-<time>)" in r.stdout


def test_training_doc_lists_exactly_the_resumable_flags():
    import re
    with open(os.path.join(ROOT, "docs", "training.md")) as f:
        doc = f.read()
    sentence = doc[doc.index("only those marked\nresumable"):]
    sentence = sentence[:sentence.index(". ")]
    listed = set(re.findall(r"`--(?:no-)?([a-z-]+)`", sentence))
    assert listed == {name.replace("_", "-") for name in resumable_fields()}, sentence


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_option_of_every_command_says_what_it_is_for():
    # `python -m hgan.experiments export --help` listed grid_dir and --to with no word
    from hgan.data.cli import build_parser as data
    from hgan.evaluate.cli import build_parser as evaluate
    from hgan.experiments.cli import build_parser as experiments
    from hgan.sample import build_parser as sample
    from hgan.train.config import build_parser as train
    bare = []
    for build in (train, data, evaluate, sample, experiments):
        for p in _all_parsers(build()):
            bare += [f"{p.prog}: {'/'.join(a.option_strings) or a.dest}" for a in p._actions
                     if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
                     and not (a.help or "").strip()]
    assert bare == []


# The least value of each count and cadence: a run of 0 iterations, a cadence of 0
# iterations (a division by zero later), 0 videos per sample, no trajectories to train on.
# --keep-every 0 and --gen-test 0 mean "never" and "no test split".
@pytest.mark.parametrize("flag,least", [
    ("--iters", 1), ("--log-every", 1), ("--sample-every", 1), ("--ckpt-every", 1),
    ("--keep-every", 0), ("--n-samples", 1), ("--gen-train", 1), ("--gen-test", 0)])
def test_each_count_has_its_least_value(capsys, flag, least):
    cfg, _ = config_from_args([flag, str(least)])
    assert getattr(cfg, flag[2:].replace("-", "_")) == least
    with pytest.raises(SystemExit) as exc:
        config_from_args([flag, str(least - 1)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        f"error: {flag} must be >= {least}, got {least - 1}"), err


@pytest.mark.parametrize("argv,line", [
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--adam-eps=-1e-8"], "--adam-eps must be > 0, got -1e-08"),
    (["--dt", "0"], "--dt must be a finite number > 0, got 0.0"),
    (["--dt", "inf"], "--dt must be a finite number > 0, got inf"),
])
def test_a_step_size_must_be_positive_and_finite(capsys, argv, line):
    with pytest.raises(SystemExit) as exc:
        config_from_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("error: " + line), err


def test_d_v_clips_are_capped_at_the_video_length():
    # --clip-frames (16 by default) is capped at --frames (docs/training.md)
    assert config_from_args(["--frames", "8"])[0].model.clip_frames == 8
    assert config_from_args(["--frames", "8", "--clip-frames", "4"])[0].model.clip_frames == 4
    assert config_from_args(["--frames", "20"])[0].model.clip_frames == 16


def test_the_default_run_directory_names_system_model_and_second():
    # runs/<system>-<model>-<time>, as runs/three_body-hgan-20261125-064754
    import re
    out = config_from_args(["--system", "three_body", "--model", "mocogan"])[0].out
    assert re.fullmatch(re.escape(os.path.join("runs", "three_body-mocogan-")) + r"\d{8}-\d{6}",
                        out), out


# hgan.cli_args on its own: the console script's name, one-line errors, integer bounds.

@pytest.mark.parametrize("argv0, want", [("/usr/local/bin/hgan-data", "hgan-data"),
                                         ("hgan-data", "hgan-data"),
                                         ("/usr/local/bin/hgan-data-x", "python -m hgan.data"),
                                         ("", "python -m hgan.data")])
def test_prog_is_the_console_script_only_when_run_as_it(monkeypatch, argv0, want):
    from hgan.cli_args import prog
    monkeypatch.setattr(sys, "argv", [argv0])
    assert prog("hgan-data", "python -m hgan.data") == want


@pytest.mark.parametrize("script, module, argv", [
    ("hgan-data", "hgan.data", ["generate", "--system", "four_body"]),
    ("hgan-sample", "hgan.sample", ["--checkpoint", "x.pt", "--n", "0"]),
    ("hgan-sample", "hgan.sample", ["--checkpoint", "/missing/x.pt"]),       # the run's own
    ("hgan-evaluate", "hgan.evaluate", ["--checkpoint", "x", "--out", "o", "--metrics", "x"]),
])
@pytest.mark.parametrize("as_script", [True, False])
def test_errors_are_named_after_the_console_script_when_run_as_it(monkeypatch, capsys, script,
                                                                  module, argv, as_script):
    # `hgan-sample --n 0` said `hgan.sample: error: ...` (hgan-train said `hgan-train`)
    import importlib
    main = importlib.import_module(module if module == "hgan.sample" else module + ".cli").main
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/{script}" if as_script else "-m"])
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"{script if as_script else module}: error: "), err


def test_one_line_parser_errors_name_the_command_in_one_line_with_exit_2(capsys):
    from hgan.cli_args import OneLineParser

    class Named(OneLineParser):
        error_name = "hgan-x"
    for parser_class, name in ((OneLineParser, "tool sub"), (Named, "hgan-x")):
        p = parser_class(prog="tool")
        p.add_subparsers(parser_class=parser_class).add_parser("sub").add_argument("--n", type=int)
        with pytest.raises(SystemExit) as e:
            p.parse_args(["sub", "--n", "x"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"{name}: error: ") and err.endswith("\n") and err.count("\n") == 1


def test_int_at_least_takes_the_bound_and_refuses_below_it_naming_why():
    from hgan.cli_args import int_at_least
    parse = int_at_least(3, " (a reason)")
    assert parse("3") == 3 and type(parse("3")) is int and parse("10") == 10
    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse("2")
    assert str(e.value) == "expected an integer >= 3 (a reason), got 2"
    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse("2.5")
    assert str(e.value) == "expected an integer, got '2.5'"
    assert int_at_least(0)("0") == 0 and int_at_least(-1)("-1") == -1
