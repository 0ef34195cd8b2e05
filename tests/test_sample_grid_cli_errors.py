"""One name and one error line per command: hgan.sample and hgan.experiments table1."""
import re

import pytest
import torch


def _options(help_text):
    """{flag: its help entry on one line} of an argparse --help text."""
    return {e.split()[0]: " ".join(e.split())
            for e in re.split(r"\n(?=  -)", help_text) if e.startswith("  -")}


def test_sample_help_names_the_module_and_shows_defaults(capsys):
    from hgan.sample import main
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m hgan.sample ")
    opts = _options(out)
    for flag, default in {"--n": "16", "--frames": "64", "--seed": "0", "--device": "cpu",
                          "--fps": "20", "--out": "samples.gif"}.items():
        assert f"(default: {default})" in opts[flag], opts[flag]
    assert "None" not in out


def test_installed_commands_name_themselves_in_their_usage(monkeypatch, capsys):
    # pip's console scripts (pyproject.toml) run main() with argv[0] = .../bin/hgan-sample
    from hgan.data.cli import main as data_main
    from hgan.evaluate.cli import build_parser as evaluate_parser
    from hgan.sample import build_parser as sample_parser
    monkeypatch.setattr("sys.argv", ["/venv/bin/hgan-sample"])
    assert sample_parser().prog == "hgan-sample"
    monkeypatch.setattr("sys.argv", ["/venv/bin/hgan-evaluate"])
    assert evaluate_parser().prog == "hgan-evaluate"
    monkeypatch.setattr("sys.argv", ["/venv/bin/hgan-data"])
    with pytest.raises(SystemExit):
        data_main(["--help"])
    assert capsys.readouterr().out.startswith("usage: hgan-data ")
    monkeypatch.setattr("sys.argv", ["/usr/lib/python3/site-packages/hgan/sample.py"])
    assert sample_parser().prog == "python -m hgan.sample"


@pytest.mark.parametrize("argv,match", [
    (["--checkpoint", "x.pt", "--n", "0"], "--n"),
    (["--checkpoint", "x.pt", "--frames", "abc"], "--frames"),
    (["--checkpoint", "x.pt", "--fps", "0"], "--fps"),
    (["--checkpoint", "x.pt", "--device", "gpu"], "--device"),
    # GIF delays are hundredths of a second; browsers play under 2/100 s at 10 fps
    (["--checkpoint", "x.pt", "--fps", "51"], "--fps"),
    (["--checkpoint", "x.pt", "--dt", "nan"], "--dt"),
    (["--checkpoint", "x.pt", "--dt", "fast"], "--dt"),
    # an infinite step: a video of NaN frames (the nan case alone left inf unchecked)
    (["--checkpoint", "x.pt", "--dt", "inf"], "expected a finite number, got 'inf'"),
    (["--checkpoint", "x.pt", "--dt=-inf"], "expected a finite number, got '-inf'"),
    # an empty name: the files would be ".gif" and ".png", hidden, in the working folder
    (["--checkpoint", "x.pt", "--out", ""], "expected a file name such as samples.gif"),
    # it writes a GIF and a PNG: an .mp4 name would silently become samples.gif
    (["--checkpoint", "x.pt", "--out", "samples.mp4"], "expected a name ending in .gif or .png"),
    (["--checkpoint", "x.pt", "--dt", "0"], "a time step of 0 does not move"),
    # beyond 64 bits torch's manual_seed said only "Overflow when unpacking long long"
    (["--checkpoint", "x.pt", "--seed", str(2**64)], "--seed"),
    (["--checkpoint", "x.pt", "--seed", str(-2**63 - 1)], "--seed"),
    ([], "--checkpoint"),
])
def test_sample_argument_errors_are_one_prefixed_line(argv, match, capsys):
    from hgan.sample import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("hgan.sample: error:") and match in err, err


def test_sample_cuda_device_is_refused_where_there_is_none(capsys, monkeypatch):
    from hgan.sample import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", "x.pt", "--device", "cuda"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("hgan.sample: error:") and "CUDA is not available" in err


def test_sample_runtime_error_has_the_same_prefix(tmp_path, capsys):
    from hgan.sample import main
    assert main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hgan.sample: error:"), err


def test_a_missing_grid_command_is_named_by_its_choices(capsys):
    # argparse named it by its dest: "the following arguments are required: cmd"
    from hgan.experiments.cli import main
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("hgan.experiments: error: the following arguments are "
                                       "required: {table1,export}\n")


@pytest.mark.parametrize("device,count,match", [
    ("cuda", 0, "CUDA is not available"),
    ("cuda:0", 0, "CUDA is not available"),
    ("cuda:2", 2, "has 2 CUDA device"),
    ("tpu", 0, "auto, cpu, cuda or cuda:N"),
])
def test_table1_checks_the_device_before_any_work(tmp_path, capsys, monkeypatch, device, count,
                                                   match):
    from hgan.experiments.cli import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    out = tmp_path / "grid"
    rc = main(["table1", "--out", str(out), "--device", device, "--systems", "pendulum",
               "--models", "mocogan", "--iters", "1", "--train-traj", "2", "--test-traj", "2",
               "--traj-frames", "16", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("hgan.experiments: error:") and match in err, err
    assert not out.exists()


def test_table1_accepts_the_devices_this_machine_has(monkeypatch):
    from hgan.experiments.grid import check_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:1"):
        check_device(device)


def test_the_grids_systems_are_the_packages_own():
    # grid.py keeps its own tuple of Table 1's systems (its models are hgan.model_kinds'):
    # a system renamed in the package must reach it (or the grid refuses it as unknown).
    from hgan.data.systems import SYSTEMS
    from hgan.experiments.grid import MODELS, TABLE1_SYSTEMS
    from hgan.model_kinds import KINDS
    assert MODELS == tuple(KINDS)
    assert set(TABLE1_SYSTEMS) <= set(SYSTEMS)


def test_table1_help_shows_list_defaults_as_the_flags_take_them(capsys):
    from hgan.experiments.cli import build_parser
    from hgan.experiments.grid import MODELS, TABLE1_SYSTEMS
    p = build_parser()
    with pytest.raises(SystemExit):
        p.parse_args(["table1", "--help"])
    opts = _options(capsys.readouterr().out)
    # The help may wrap a long default mid-word: compare without the spaces.
    assert f"(default:{','.join(TABLE1_SYSTEMS)})" in opts["--systems"].replace(" ", "")
    assert f"(default: {','.join(MODELS)})" in opts["--models"]
    assert "(default: 0)" in opts["--seeds"]
    assert "(default: None)" not in opts["--out"]
    a = p.parse_args(["table1", "--out", "g"])
    assert (a.systems, a.models, a.seeds) == (TABLE1_SYSTEMS, MODELS, (0,))
