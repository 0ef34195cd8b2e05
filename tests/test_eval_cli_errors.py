"""`python -m hgan.evaluate` on bad input: one `error:` line, exit code 2, nothing written."""
import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hgan.evaluate import cli
from test_eval_cli import _checkpoint  # a tiny untrained pendulum checkpoint

PROG = "hgan.evaluate"   # the error lines' prefix
FAST = ["--probe-steps", "5", "--physics-videos", "4", "--tsne-samples", "40", "--tsne-iters",
        "250", "--rollout-steps", "2", "--rollout-videos", "2", "--momenta-videos", "2",
        "--device", "cpu"]


def _fit(argv):
    """argv without FAST's flags for metrics its --metrics does not select (hgan.evaluate
    refuses a flag that would change nothing)."""
    if not argv or argv[0] == "compare" or "--help" in argv:
        return argv
    metrics = cli.ALL_METRICS
    for i, a in enumerate(argv[:-1]):
        if a == "--metrics":
            metrics = [m.strip() for m in argv[i + 1].split(",")]
    pairs = set(zip(FAST[::2], FAST[1::2]))
    out, i = [], 0
    while i < len(argv):
        pair = tuple(argv[i:i + 2])
        dest = argv[i][2:].replace("-", "_")
        if pair in pairs and dest in cli.METRIC_FLAGS and \
                not set(cli.METRIC_FLAGS[dest]) & set(metrics):
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _main(argv):
    return cli.main(_fit(argv))


def _parse(argv):
    return cli.build_parser().parse_args(_fit(argv))


@pytest.fixture(scope="module")
def files(tiny_pendulum_h5, tmp_path_factory):
    from hgan.data import generate_dataset
    root = tmp_path_factory.mktemp("eval_errors")
    junk = root / "junk.h5"
    junk.write_bytes(b"not an hdf5 file" * 64)
    other = generate_dataset("three_body", root / "other", train=2, test=0, frames=4, seed=0,
                             resolution=32, progress=False)["train"]
    small = generate_dataset("pendulum", root / "small", train=2, test=0, frames=4, seed=0,
                             resolution=16, progress=False)["train"]
    one = generate_dataset("pendulum", root / "one", train=1, test=0, frames=4, seed=0,
                           resolution=32, progress=False)["train"]
    ckpt, _ = _checkpoint(root, "hgan", tiny_pendulum_h5, iteration=1)
    beside = root / "beside"   # a test.h5 of another system next to the training file
    beside.mkdir()
    os.symlink(tiny_pendulum_h5, beside / "train.h5")
    os.symlink(other, beside / "test.h5")
    from test_eval_cli import _StandIn
    i3d = root / "i3d.pt"
    torch.jit.script(_StandIn()).save(str(i3d))
    return {"root": root, "ckpt": ckpt, "data": tiny_pendulum_h5, "junk": str(junk),
            "three_body": other, "pendulum_16px": small, "pendulum_one": one, "i3d": str(i3d),
            "beside_three_body": str(beside / "train.h5")}


def _cuda_flag():
    # A device this machine lacks, with or without a GPU.
    return "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


BAD = {  # name: (flags, words the error line must contain)
    "missing checkpoint": (lambda f: ["--checkpoint", str(f["root"] / "nope.pt")],
                           ["--checkpoint", "nope.pt"]),
    "corrupt checkpoint": (lambda f: ["--checkpoint", f["junk"]], ["--checkpoint", "junk.h5"]),
    "corrupt --data": (lambda f: ["--data", f["junk"]], ["--data", "junk.h5", "corrupt"]),
    "corrupt --real": (lambda f: ["--real", f["junk"]], ["--real", "junk.h5", "corrupt"]),
    "missing --real": (lambda f: ["--real", str(f["root"] / "nope.h5")], ["--real", "nope.h5"]),
    "missing --i3d": (lambda f: ["--metrics", "fvd", "--i3d", "/missing.pt"], ["/missing.pt"]),
    "unavailable device": (lambda f: ["--device", _cuda_flag()], [f"--device {_cuda_flag()}"]),
    "no physics videos": (lambda f: ["--physics-videos", "0"], ["--physics-videos", ">= 1"]),
    "one physics video": (lambda f: ["--metrics", "physics", "--physics-videos", "1"],
                          ["at least 2", "--physics-videos 1"]),
    "frames beyond the data": (lambda f: ["--frames", "100"], ["--frames 100", "40 frames"]),
    "data of another system": (lambda f: ["--data", f["three_body"]], ["three_body", "pendulum"]),
    # The held-out set is tiny_pendulum_h5's last 20%: 5 trajectories of 40 frames.
    "--real of another system": (lambda f: ["--real", f["three_body"]],
                                 ["--real", "three_body", "pendulum"]),
    "--real of another frame size": (lambda f: ["--real", f["pendulum_16px"]],
                                     ["--real", "16-pixel", "32-pixel"]),
    "test.h5 of another system": (lambda f: ["--data", f["beside_three_body"]],
                                  ["held-out data (test.h5 beside --data)", "three_body",
                                   "pendulum"]),
    "frames one beyond the data": (lambda f: ["--frames", "41"], ["--frames 41", "40 frames"]),
    "more FVD videos than held out": (lambda f: ["--metrics", "fvd", "--i3d", f["i3d"],
                                                 "--fvd-videos", "6"],
                                      ["--fvd-videos 6", "5 trajectories"]),
    "too few t-SNE iterations": (lambda f: ["--tsne-iters", "100"], ["--tsne-iters", "250"]),
    "no rollout steps": (lambda f: ["--rollout-steps", "0"], ["--rollout-steps", ">= 1"]),
    "one FVD video": (lambda f: ["--fvd-videos", "1"], ["--fvd-videos", ">= 2"]),
    "two t-SNE samples": (lambda f: ["--tsne-samples", "2"], ["--tsne-samples", ">= 3"]),
    "unknown metric": (lambda f: ["--metrics", "physics,nope"], ["nope", "appearance"]),
    "bad seeds": (lambda f: ["--seeds", "0,x"], ["--seeds", "0,x"]),
    "a repeated seed": (lambda f: ["--seeds", "0,1,0"], ["--seeds", "repeated", "0,1,0"]),
    "a missing --data": (lambda f: ["--data", "nowhere/train.h5"],
                         ["--data nowhere/train.h5: no such file"]),
    "a negative seed": (lambda f: ["--seeds=0,-1"], ["--seeds", ">= 0", "0,-1"]),
    # a data root (train.py's --data) without the checkpoint's system: the files it does hold
    "a data root without the system's data": (
        lambda f: ["--data", str(f["root"] / "other")],
        ["--data", "is a directory, not an HDF5 file", "three_body/train.h5"]),
    "--system other than the checkpoint's": (
        lambda f: ["--system", "three_body"],
        ["--system three_body, but the checkpoint was trained on pendulum"]),
    "data of another frame size than the generator's": (
        lambda f: ["--data", f["pendulum_16px"], "--metrics", "samples"],
        ["--data", "16-pixel frames", "generator makes 32-pixel ones"]),
    # --physics-videos 4 (FAST), but the one held-out trajectory is a single real video
    "one held-out physics video": (lambda f: ["--metrics", "physics", "--frames", "4",
                                              "--real", f["pendulum_one"]],
                                   ["at least 2 held-out videos; got 1", "1 held-out"]),
    # commas only: an evaluation of no metric
    "no metric": (lambda f: ["--metrics", ",,"], ["--metrics", "no metric in ',,'"]),
    # a name no system has: get_system's list of them, not only "the checkpoint's is pendulum"
    "unknown --system": (lambda f: ["--system", "four_body"],
                         ["--system", "unknown system 'four_body'", "three_body"]),
    # one trajectory and no test.h5 beside it: nothing to hold out (the 80/20 split's
    # ValueError was a traceback)
    "one trajectory and no held-out data": (
        lambda f: ["--data", f["pendulum_one"], "--metrics", "samples"],
        ["--data", "has 1 trajectory", "at least 2 are needed"]),
    # I3D's minimum (fvd.MIN_FRAMES = 10), checked before any work: found by the FVD itself
    # only after the other metrics ran
    "FVD clips one frame short of I3D's minimum": (
        lambda f: ["--metrics", "fvd,samples", "--i3d", f["i3d"], "--fvd-videos", "4",
                   "--frames", "9"],
        ["--frames 9", "FVD's I3D needs at least 10"]),
    # a missing --i3d is an error beside other metrics too, not a silently skipped FVD
    "missing --i3d beside other metrics": (
        lambda f: ["--metrics", "fvd,samples", "--i3d", "/missing.pt"], ["/missing.pt"]),
    # torch.jit.load's RuntimeError on a file that is no TorchScript: named, not a traceback
    "--i3d that is no TorchScript file": (
        lambda f: ["--metrics", "fvd,samples", "--i3d", f["junk"]],
        ["--i3d", "junk.h5", "not a TorchScript detector"]),
}


def _one_error_line(capsys, words):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_error_line(case, files, tmp_path, capsys):
    flags, words = BAD[case]
    out = tmp_path / "out" / "eval"
    argv = ["--checkpoint", files["ckpt"], "--out", str(out), *FAST, *flags(files)]
    with pytest.raises(SystemExit) as e:
        _main(argv)
    assert e.value.code == 2
    _one_error_line(capsys, words)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_the_limits_themselves_are_accepted(files, tmp_path):
    # Every held-out clip the full 40 frames long, and one FVD clip from each of the 5.
    from hgan.evaluate import inputs
    args = _parse(
        ["--checkpoint", files["ckpt"], "--out", str(tmp_path / "e"), *FAST, "--metrics",
         "fvd,physics", "--i3d", files["i3d"], "--frames", "40", "--fvd-videos", "5"])
    run = inputs.check(args)
    assert run.held_out[0].frames.shape[1] == 40 and len(run.held_out[1]) == 5
    assert run.detector_path == files["i3d"] and not (tmp_path / "e").exists()


def test_physics_on_clips_of_the_fewest_frames_it_measures_is_accepted(files, tmp_path):
    # MIN_PHYSICS_FRAMES = 3: the probe's two states per video have an energy drift
    from hgan.evaluate import inputs
    assert inputs.MIN_PHYSICS_FRAMES == 3
    args = _parse(
        ["--checkpoint", files["ckpt"], "--out", str(tmp_path / "e"), *FAST, "--metrics",
         "physics", "--frames", "3"])
    run = inputs.check(args)
    assert len(run.held_out[1]) == 5 and not (tmp_path / "e").exists()


def test_a_data_root_as_train_py_takes_it_reads_the_systems_files(files, tmp_path):
    # `--data data` as train.py was given it: data/pendulum/train.h5, test.h5 beside it
    from hgan.evaluate import inputs
    system = tmp_path / "data" / "pendulum"
    system.mkdir(parents=True)
    os.symlink(files["data"], system / "train.h5")
    os.symlink(files["pendulum_one"], system / "test.h5")
    os.symlink(files["three_body"], tmp_path / "data" / "train.h5")  # not the system's
    args = _parse(
        ["--checkpoint", files["ckpt"], "--out", str(tmp_path / "e"), *FAST, "--metrics",
         "samples", "--frames", "4", "--data", str(tmp_path / "data")])
    run = inputs.check(args)
    assert run.data_path == str(system / "train.h5") and run.system == "pendulum"
    assert run.real_path == str(system / "test.h5") and len(run.held_out[1]) == 1


@pytest.mark.parametrize("flag", ["--data", "--real"])
def test_every_corrupt_data_file_is_one_error_line(flag, corrupt_h5, files, tmp_path, capsys):
    argv = ["--checkpoint", files["ckpt"], "--out", str(tmp_path / "e"), "--metrics", "samples",
            "--data", files["data"], flag, corrupt_h5]
    with pytest.raises(SystemExit) as e:
        _main(argv)
    assert e.value.code == 2
    _one_error_line(capsys, [os.path.basename(corrupt_h5)])
    assert not (tmp_path / "e").exists()


@pytest.fixture(scope="module")
def damaged_chunks(tiny_pendulum_h5, tmp_path_factory):
    """Factory: a copy of tiny_pendulum_h5 whose `name` chunks of every trajectory but the
    first and last are overwritten on disk; the header, and so open_h5, stay intact."""
    import shutil

    import h5py
    made = {}

    def make(name):
        if name not in made:
            path = tmp_path_factory.mktemp(f"damaged_{name}") / "train.h5"
            shutil.copy(tiny_pendulum_h5, path)
            with h5py.File(path, "r") as f:
                n = len(f[name])
                chunks = [f[name].id.get_chunk_info_by_coord((i,) + (0,) * (f[name].ndim - 1))
                          for i in range(1, n - 1)]
            with open(path, "r+b") as raw:
                for c in chunks:
                    raw.seek(c.byte_offset)
                    raw.write(b"\xff" * c.size)
            made[name] = str(path)
        return made[name]

    return make


@pytest.mark.parametrize("name, metric", [("frames", "physics"), ("frames", "samples"),
                                          ("frames", "appearance"), ("frames", "fvd"),
                                          ("states", "physics")])
def test_damaged_chunks_in_a_valid_file_are_one_error_line(name, metric, damaged_chunks, files,
                                                           tmp_path, capsys):
    import h5py

    from hgan.data import open_h5
    from test_eval_cli import _StandIn
    path = damaged_chunks(name)
    open_h5(path).close()  # the damage is past what opening checks: only reading finds it
    with h5py.File(path, "r") as f, pytest.raises(OSError):
        f[name][1]
    det = tmp_path / "i3d.pt"
    torch.jit.script(_StandIn()).save(str(det))
    out = tmp_path / "runs" / "eval"
    fvd = ["--i3d", str(det), "--fvd-videos", "4"] if metric == "fvd" else []
    argv = ["--checkpoint", files["ckpt"], "--out", str(out), "--data", path, "--metrics", metric,
            *fvd, "--frames", "10", *FAST]
    with pytest.raises(SystemExit) as e:
        _main(argv)
    assert e.value.code == 2
    _one_error_line(capsys, ["--data", path, "corrupt data"])
    assert not (tmp_path / "runs").exists()  # found mid-evaluation, and still nothing left


def test_the_module_entry_point_exits_2_with_one_line(files, tmp_path):
    res = subprocess.run([sys.executable, "-m", "hgan.evaluate", "--checkpoint",
                          str(tmp_path / "nope.pt"), "--out", str(tmp_path / "e")],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"{PROG}: error: --checkpoint: no checkpoint at "
                                               f"{tmp_path / 'nope.pt'}"]


def test_a_failed_evaluation_removes_the_directories_it_made(files, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("a bug in a metric")

    monkeypatch.setattr(cli, "physics_metrics", broken)
    (tmp_path / "runs").mkdir()
    out = tmp_path / "runs" / "a" / "eval"
    with pytest.raises(RuntimeError, match="a bug in a metric"):  # not turned into exit 2
        _main(["--checkpoint", files["ckpt"], "--out", str(out), "--metrics", "physics", *FAST])
    assert not (tmp_path / "runs" / "a").exists() and (tmp_path / "runs").is_dir()


def test_two_held_out_videos_leave_out_only_the_half_vs_half_reference(files, tmp_path, capsys):
    from hgan.data import generate_dataset
    # 10 trajectories: the last 20%, 2 of them, are held out (no test.h5 beside the file).
    data = generate_dataset("pendulum", tmp_path, train=10, test=0, frames=10, seed=1,
                            resolution=32, progress=False)["train"]
    res = _main(["--checkpoint", files["ckpt"], "--out", str(tmp_path / "e"), "--data", data,
                    "--metrics", "physics", "--frames", "8", *FAST])
    ph = res["physics"]
    assert ph["num_videos"] == 2 and res["real_trajectories"] == 2
    # what compare tells other real data by: the file's generation, not its path
    assert res["real_identity"] == {"split": "train", "seed": 1, "trajectories": 2, "of": 10,
                                    "frames": 10, "resolution": 32}
    assert ph["frechet_state_distance"]["real_half_vs_half"] is None
    assert ph["frechet_state_distance"]["generated_half_vs_real_half"] is None
    assert np.isfinite(ph["frechet_state_distance"]["generated"])
    assert "half-vs-half" in capsys.readouterr().err
    report = (tmp_path / "e" / "report.md").read_text()
    assert "n/a (half vs half needs >= 4 videos, 2 held out)" in report


def test_system_without_data_comes_from_the_checkpoint(files, tmp_path):
    res = _main(["--checkpoint", files["ckpt"], "--out", str(tmp_path / "e"),
                    "--metrics", "cyclic", *FAST])
    assert res["system"] == "pendulum"  # the run's config, not "unknown"


def test_help_names_every_metric_and_the_default(capsys):
    with pytest.raises(SystemExit) as e:
        _main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--metrics fvd,physics,tsne,samples,cyclic,appearance" in text
    assert "comma list of fvd,physics,tsne,samples,cyclic,appearance (default: all 6)" in text


def test_help_shows_every_numeric_default(capsys):
    with pytest.raises(SystemExit):
        _main(["--help"])
    entries = {e.split()[0]: " ".join(e.split())
               for e in re.split(r"\n(?=  -)", capsys.readouterr().out) if e.startswith("  -")}
    want = {"--fvd-videos": "2048", "--frames": "16", "--seeds": "0,1,2",
            "--physics-videos": "256", "--probe-steps": "600", "--probe-width": "16",
            "--tsne-samples": "1024", "--tsne-iters": "1000", "--momenta-videos": "256",
            "--rollout-videos": "64", "--rollout-steps": "512"}
    for flag, default in want.items():
        assert re.search(rf"default[^:]*: {default}\b", entries[flag]), entries[flag]

def _results(tmp_path, name, model, system, drift, seed=None):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "model": model, "system": system, "iteration": 100, "config": {"seed": seed},
        "physics": {"energy_drift": {"generated": {"median": drift}, "relative_to": "|mean H|"},
                    "frechet_state_distance": {"generated": 1.0}}}))
    return str(d)


def test_compare_keeps_several_runs_of_one_model_and_system(tmp_path):
    dirs = [_results(tmp_path, "p1", "hgan", "pendulum", 0.01, seed=0),
            _results(tmp_path, "p2", "hgan", "pendulum", 0.02, seed=1),
            _results(tmp_path, "m", "mocogan", "pendulum", 0.3, seed=0)]
    text = _main(["compare", *dirs])
    assert "| hgan seed 0 | 0.01 (100 it) |" in text and "| hgan seed 1 | 0.02 (100 it) |" in text
    assert "| mocogan | 0.3 (100 it) |" in text  # alone on its system: one plain row
    # the same seed twice (a rerun): the run directories tell them apart
    dirs = [_results(tmp_path, "r1", "hgan", "pendulum", 0.04, seed=0),
            _results(tmp_path, "r2", "hgan", "pendulum", 0.05, seed=0)]
    text = _main(["compare", *dirs])
    assert f"| hgan ({dirs[0]}) | 0.04 (100 it) |" in text
    assert f"| hgan ({dirs[1]}) | 0.05 (100 it) |" in text


def test_compare_refuses_a_repeated_or_unevaluated_run(tmp_path, capsys):
    d = _results(tmp_path, "p1", "hgan", "pendulum", 0.01)
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    os.replace(os.path.join(d, "results.json"), run / "eval" / "results.json")
    d = str(run)
    (tmp_path / "a-file").write_text("")
    for argv, words in ((["compare", d, d + "/"], ["given twice"]),
                        (["compare", d, d + "/eval"], ["given twice"]),  # one results.json
                        (["compare", d, str(tmp_path)], ["no results.json", str(tmp_path)]),
                        (["compare", d, "--out", str(tmp_path / "no" / "t.md")],
                         ["--out", "No such file or directory"]),
                        (["compare", d, "--out", str(tmp_path)], ["--out", "Is a directory"]),
                        (["compare", d, "--out", str(tmp_path / "a-file" / "t.md")],
                         ["--out", "Not a directory"])):
        with pytest.raises(SystemExit) as e:
            _main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert err.startswith(f"{PROG} compare: error: ") and all(w in err for w in words)


@pytest.mark.parametrize("metric", ["physics", "appearance", "samples"])
def test_a_generator_of_nan_pixels_is_one_error_line(metric, files, tmp_path, capsys):
    # Quantised as they are, NaN pixels would be black frames: a "still" video with no drift.
    ckpt = torch.load(files["ckpt"], weights_only=True)
    ckpt["generator"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                         for k, v in ckpt["generator"].items()}
    path = tmp_path / "nan.pt"
    torch.save(ckpt, path)
    import shutil
    data = tmp_path / "train.h5"   # a private copy: the probe is cached beside it
    shutil.copy(files["data"], data)
    argv = ["--checkpoint", str(path), "--out", str(tmp_path / "e"), *FAST, "--metrics", metric,
            "--data", str(data)]
    with pytest.raises(SystemExit) as e:
        _main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err   # the probe's progress bar may come first
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"{PROG}: error: ")
    assert "nan.pt" in err.splitlines()[-1] and "NaN or inf" in err.splitlines()[-1]
    assert not (tmp_path / "e").exists()


def test_ctrl_c_during_an_evaluation_is_one_line_and_exit_130(files, tmp_path, capsys,
                                                              monkeypatch):
    # It printed a 40-line KeyboardInterrupt traceback (the probe's training, say).
    def interrupted(args, run):
        (tmp_path / "e" / "partial.png").write_bytes(b"")  # a figure already written stays
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_evaluate", interrupted)
    for out, kept in (("e", True), ("new", False)):
        if not kept:
            monkeypatch.setattr(cli, "_evaluate", lambda args, run: (_ for _ in ()).throw(
                KeyboardInterrupt))
        with pytest.raises(SystemExit) as e:
            _main(["--checkpoint", files["ckpt"], "--out", str(tmp_path / out), *FAST,
                      "--metrics", "cyclic"])
        assert e.value.code == 130
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [
            f"{PROG}: interrupted; no results.json was written to {tmp_path / out} (an --out "
            f"this run created and left empty is removed)"]
        assert (tmp_path / out).exists() == kept


def test_sigterm_during_an_evaluation_ends_as_ctrl_c_does(files, tmp_path, capsys, monkeypatch):
    # SIGTERM (`timeout`, a job scheduler) killed it silently, its new --out left empty.
    import signal

    def terminated(args, run):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the evaluation")

    monkeypatch.setattr(cli, "_evaluate", terminated)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        _main(["--checkpoint", files["ckpt"], "--out", str(tmp_path / "new"), *FAST,
                  "--metrics", "cyclic"])
    assert e.value.code == 143
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{PROG}: interrupted by SIGTERM; no results.json was written to {tmp_path / 'new'} "
        f"(an --out this run created and left empty is removed)"]
    assert not (tmp_path / "new").exists()
    assert signal.getsignal(signal.SIGTERM) == before   # the caller's handler again


@pytest.mark.parametrize("at", ["results.json", "report.md"])
def test_an_interrupt_while_the_results_are_written_leaves_no_results_json(files, tmp_path, at,
                                                                            capsys, monkeypatch):
    # results.json was written in place, before report.md: a stop there left a truncated
    # file, which the grid reads as an evaluation done, under a line saying none was written.
    # It is written last (what marks an evaluation done), so a stop at report.md leaves none.
    replace = os.replace

    def interrupted(src, dst):
        if str(dst).endswith(at):
            raise KeyboardInterrupt
        replace(src, dst)
    monkeypatch.setattr(cli.os, "replace", interrupted)
    out = tmp_path / "e"
    with pytest.raises(SystemExit) as e:
        _main(["--checkpoint", files["ckpt"], "--out", str(out), *FAST, "--metrics", "cyclic"])
    assert e.value.code == 130
    assert "no results.json was written" in capsys.readouterr().err
    assert not (out / "results.json").exists()
    assert not [p for p in os.listdir(out) if p.endswith(".partial")]


def test_re_evaluating_into_an_out_removes_the_earlier_evaluations_figures_only(files, tmp_path):
    # The previous checkpoint's energy and momenta plots stayed beside the new report.md.
    out = tmp_path / "e"
    _main(["--checkpoint", files["ckpt"], "--out", str(out), *FAST, "--metrics", "cyclic,samples"])
    first = json.loads((out / "results.json").read_text())["figures"]
    assert {"active_momenta", "energy_rollout", "samples_real"} <= set(first)
    (out / "notes.txt").write_text("mine")
    _main(["--checkpoint", files["ckpt"], "--out", str(out), *FAST, "--metrics", "samples"])
    second = json.loads((out / "results.json").read_text())["figures"]
    assert set(second) == {"samples_real", "samples_hgan"}
    left = sorted(os.listdir(out))
    assert left == sorted(["notes.txt", "report.md", "results.json", "samples_hgan.gif",
                           "samples_hgan.png", "samples_real.gif", "samples_real.png"]), left


def test_the_three_frame_minimum_is_the_physics_metrics_only(files, tmp_path):
    # The other metrics that read real clips take 2-frame ones: the physics minimum
    # refused them too would be a limit no metric of theirs has.
    from hgan.evaluate import inputs
    for metrics in ("samples", "appearance"):
        args = _parse(
            ["--checkpoint", files["ckpt"], "--out", str(tmp_path / "e"), *FAST, "--metrics",
             metrics, "--frames", "2"])
        assert inputs.check(args).held_out is not None
    assert not (tmp_path / "e").exists()


def test_a_metric_named_twice_is_evaluated_once(files, tmp_path):
    # --metrics physics,physics: one physics entry, in the order first given
    args = _parse(["--checkpoint", files["ckpt"], "--out", str(tmp_path),
                                          "--metrics", " samples,physics, samples,physics"])
    assert args.metrics == ("samples", "physics")


def test_the_default_device_is_cuda_where_there_is_one(monkeypatch):
    # no --device: cuda when available (its help says so); a CPU-only test machine saw
    # only the cpu half of that
    from hgan.evaluate.inputs import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)   # a one-GPU machine
    assert resolve_device(None) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == "cpu"


def test_an_out_that_is_a_file_is_named_as_one(files, tmp_path, capsys):
    # refused before the checkpoint loads, in words saying what --out is; the file is kept
    out = tmp_path / "results"
    out.write_text("mine")
    with pytest.raises(SystemExit) as e:
        _main(["--checkpoint", files["ckpt"], "--out", str(out), *FAST, "--metrics", "samples"])
    assert e.value.code == 2
    _one_error_line(capsys, [f"--out {out} is a file, not a directory"])
    assert out.read_text() == "mine"


def test_a_checkpoint_without_a_system_takes_the_datas(files, tmp_path):
    # an older config with no "system" and no --system: results.json names the system of
    # the data evaluated, not "unknown"
    ckpt = torch.load(files["ckpt"], weights_only=True)
    config = {k: v for k, v in ckpt["config"].items() if k != "system"}
    path = tmp_path / "old.pt"
    torch.save({**ckpt, "config": config}, path)
    res = _main(["--checkpoint", str(path), "--out", str(tmp_path / "e"), *FAST,
                    "--metrics", "samples", "--data", files["data"]])
    assert res["system"] == "pendulum"


def test_physics_on_two_frame_clips_is_refused(files, tmp_path, capsys):
    # One probed state per video: every energy drift came out 0 and the report said "0 <= 0".
    with pytest.raises(SystemExit) as e:
        _main(["--checkpoint", files["ckpt"], "--out", str(tmp_path / "e"), *FAST,
                  "--metrics", "physics", "--frames", "2"])
    assert e.value.code == 2
    assert "--frames 2: the physics metrics need at least 3" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    _main(["--checkpoint", files["ckpt"], "--out", str(tmp_path / "c"), *FAST,
              "--metrics", "cyclic", "--frames", "2"])  # nothing probed: 2 frames are fine


@pytest.mark.parametrize("metrics, missing, words", [
    ("tsne", "sklearn", ["--metrics tsne", "scikit-learn", "pip install -e '.[eval]'"]),
    ("samples,cyclic", "matplotlib", ["--metrics cyclic", "matplotlib", "pip install -e '.[eval]'"]),
])
def test_a_metric_whose_library_is_not_installed_is_one_line_naming_the_extra(
        metrics, missing, words, files, tmp_path, capsys, monkeypatch):
    # `pip install -e .` without the eval extra: refused before any work, not a traceback at
    # the plot after the other metrics ran
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed (find_spec: None)
    out = tmp_path / "out" / "eval"
    argv = ["--checkpoint", files["ckpt"], "--out", str(out), *FAST, "--metrics", metrics]
    with pytest.raises(SystemExit) as e:
        _main(argv)
    assert e.value.code == 2
    _one_error_line(capsys, words)
    assert not (tmp_path / "out").exists()


def test_compare_names_a_results_json_it_cannot_read(tmp_path, capsys):
    # A results.json cut short, hand-edited, or written by something else: one line naming
    # that file (not a bare JSON parser message, nor a KeyError/TypeError traceback).
    good = _results(tmp_path, "good", "hgan", "pendulum", 0.01)
    for name, text, words in (("cut", '{"model": "hgan", ', ["not valid JSON"]),
                              ("list", "[]", ["not an evaluation's results"]),
                              ("empty", "{}", ["not an evaluation's results", "model"]),
                              ("number", "5", ["not an evaluation's results"]),
                              ("no iteration", '{"model": "hgan", "system": "pendulum"}',
                               ["not an evaluation's results", "iteration"])):
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(text)
        with pytest.raises(SystemExit) as e:
            _main(["compare", good, str(d)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"{PROG} compare: error: {d / 'results.json'}: "), err
        assert all(w in err for w in words), err


def test_device_auto_evaluates_where_it_resolves(files, tmp_path):
    # check_device accepts auto (its error offers it): the evaluation runs on what it
    # resolves to (torch.device("auto") ended in a traceback listing torch's device types)
    from hgan.evaluate.inputs import resolve_device
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu" and resolve_device(None) == resolve_device("auto")
    out = tmp_path / "e"
    args = ["--checkpoint", files["ckpt"], "--data", files["data"], "--metrics", "cyclic",
            "--out", str(out)] + FAST[:-2] + ["--device", "auto"]
    assert _main(args) is not None
    results = json.load(open(out / "results.json"))
    assert "cyclic" in results["metrics"]
    assert results["device"] == resolve_device("auto")   # what it ran on, not "auto"


def test_a_regenerated_training_set_is_noted_in_one_line(files, tmp_path, capsys):
    # resume refuses a file that is no longer the run's training set; an evaluation may use
    # it, and says so (it was silent)
    from hgan.train.loop import dataset_identity
    ckpt = torch.load(files["ckpt"], weights_only=True)
    path = tmp_path / "run.pt"
    torch.save({**ckpt, "dataset": dataset_identity(files["data"])}, path)
    flags = ["--checkpoint", str(path), "--metrics", "samples", *FAST]
    _main(flags + ["--out", str(tmp_path / "a")])
    assert "note" not in capsys.readouterr().err    # the set it trained on: no line
    from hgan.data import generate_dataset
    again = generate_dataset("pendulum", tmp_path / "again", train=3, test=0, frames=20, seed=0,
                             resolution=32, progress=False)["train"]
    torch.save({**ckpt, "config": {**ckpt["config"], "data_path": again},
                "dataset": dataset_identity(files["data"])}, path)
    _main(flags + ["--out", str(tmp_path / "b")])
    err = [line for line in capsys.readouterr().err.splitlines() if "not the set" in line]
    assert len(err) == 1 and "(trajectories 24 -> 3, frames 40 -> 20)" in err[0], err
    _main(flags + ["--out", str(tmp_path / "c"), "--data", again])
    assert "not the set" not in capsys.readouterr().err    # chosen with --data: no line


def test_the_defaults_are_the_ones_the_help_and_the_docs_state():
    # docs/evaluation.md and the help text: a default changed in the parser alone (the
    # help's seed list is written out, not %(default)s) would go unseen
    args = _parse(["--checkpoint", "c.pt", "--out", "o"])
    assert tuple(args.metrics) == ("fvd", "physics", "tsne", "samples", "cyclic", "appearance")
    assert list(args.seeds) == [0, 1, 2] and args.progress is True
    assert {k: getattr(args, k) for k in ("fvd_videos", "frames", "physics_videos",
                                          "probe_steps", "probe_width", "tsne_samples",
                                          "tsne_iters", "momenta_videos", "rollout_videos",
                                          "rollout_steps")} == {
        "fvd_videos": 2048, "frames": 16, "physics_videos": 256, "probe_steps": 600,
        "probe_width": 16, "tsne_samples": 1024, "tsne_iters": 1000, "momenta_videos": 256,
        "rollout_videos": 64, "rollout_steps": 512}


def test_sigterm_is_the_callers_again_after_an_evaluation_and_an_ignored_one_stays_ignored(
        files, tmp_path, monkeypatch):
    import signal

    def terminated(args, run):
        os.kill(os.getpid(), signal.SIGTERM)   # ignored by the caller: the evaluation goes on
        return {"done": True}

    argv = ["--checkpoint", files["ckpt"], "--out", str(tmp_path / "e"), *FAST,
            "--metrics", "cyclic"]
    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        monkeypatch.setattr(cli, "_evaluate", terminated)
        assert _main(argv) == {"done": True}
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        monkeypatch.setattr(cli, "_evaluate", lambda args, run: {"done": True})
        assert _main(argv) == {"done": True}
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def test_an_earlier_results_json_that_is_no_object_is_replaced(files, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "results.json").write_text("[1, 2]")
    res = _main(["--checkpoint", files["ckpt"], "--out", str(out), *FAST, "--metrics",
                    "samples"])
    assert json.loads((out / "results.json").read_text())["figures"] == res["figures"]


def test_re_evaluating_removes_only_the_earlier_figures_inside_out(files, tmp_path):
    out = tmp_path / "runs" / "e"
    out.mkdir(parents=True)
    for name in ("old.png", "old.gif", "notes.txt", "mine.png"):
        (out / name).write_text("x")
    (tmp_path / "runs" / "outside.png").write_text("x")
    (out / "results.json").write_text(json.dumps({"figures": {
        "old": "old.png",                   # a sample grid's: its GIF goes with it
        "notes": "notes.txt",               # not a figure
        "mine": str(out / "mine.png"),      # absolute: no results.json of ours names one
        "outside": "../outside.png",        # not in --out
        "real": "./samples_real.png"}}))    # written again now, spelt another way
    _main(["--checkpoint", files["ckpt"], "--out", str(out), *FAST, "--metrics", "samples"])
    assert sorted(os.listdir(out)) == sorted([
        "mine.png", "notes.txt", "report.md", "results.json", "samples_hgan.gif",
        "samples_hgan.png", "samples_real.gif", "samples_real.png"])
    assert (tmp_path / "runs" / "outside.png").exists()


def test_compare_names_a_run_by_its_directory_however_it_is_spelt(tmp_path):
    dirs = [_results(tmp_path, "r1", "hgan", "pendulum", 0.04, seed=0),
            _results(tmp_path, "r2", "hgan", "pendulum", 0.05, seed=0)]
    text = _main(["compare", dirs[0] + "/", dirs[1] + "/./"])
    assert f"| hgan ({dirs[0]}) | 0.04 (100 it) |" in text
    assert f"| hgan ({dirs[1]}) | 0.05 (100 it) |" in text


def test_the_console_script_exits_0_after_an_evaluation(monkeypatch):
    monkeypatch.setattr(cli, "main", lambda: {"model": "hgan"})
    assert cli.entry() == 0


def test_write_atomically_replaces_whole_or_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from hgan.evaluate.atomic import write_atomically
    path = tmp_path / "results.json"
    write_atomically(path, lambda f: f.write("new text"), mode="w")
    assert path.read_text() == "new text"
    write_atomically(path, lambda f: f.write(b"\x00bytes"))          # default: binary
    assert path.read_bytes() == b"\x00bytes"

    def half_then_ctrl_c(f):
        f.write(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, half_then_ctrl_c)
    assert path.read_bytes() == b"\x00bytes"                          # the old file, whole
    assert os.listdir(tmp_path) == ["results.json"]                   # no temporary left


def test_write_atomically_parallel_writers_of_one_path_do_not_share_a_temporary(tmp_path):
    import threading

    from hgan.evaluate.atomic import write_atomically
    path, both_open, errors = tmp_path / "cache.npz", threading.Barrier(2, timeout=30), []

    def writer(text):
        def write(f):
            both_open.wait()           # both temporaries are open before either is renamed
            f.write(text)
        try:
            write_atomically(path, write, mode="w")
        except Exception as e:         # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(t * 1000,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert path.read_text() in ("a" * 1000, "b" * 1000)
    assert os.listdir(tmp_path) == ["cache.npz"]


@pytest.mark.parametrize("metrics, flags, words", [
    # before: accepted, and the evaluation was what it is without them
    ("tsne", ["--i3d", "i3d.pt"], "--i3d is for the fvd metric, which --metrics tsne does not "
                                  "select: it would change nothing"),
    ("physics,samples", ["--fvd-videos", "64"], "--fvd-videos is for the fvd metric"),
    ("samples", ["--seeds=1,2"], "--seeds is for the fvd, physics and appearance metrics, none "
                                 "of which --metrics samples selects"),
    ("tsne", ["--physics-videos", "8"], "--physics-videos is for the physics and appearance"),
    ("appearance", ["--probe-steps", "5"], "--probe-steps is for the physics metric"),
    ("physics", ["--probe-width", "4", "--tsne-iters", "300"], "--tsne-iters is for the tsne"),
    ("samples", ["--tsne-samples", "40"], "--tsne-samples is for the tsne metric"),
    ("physics", ["--momenta-videos", "2"], "--momenta-videos is for the cyclic metric"),
    ("tsne", ["--rollout-videos", "2"], "--rollout-videos is for the cyclic metric"),
    ("tsne", ["--rollout-steps", "2"], "--rollout-steps is for the cyclic metric"),
    ("tsne,cyclic", ["--real", "r.h5"], "--real is for the fvd, physics, samples and appearance"),
])
def test_a_flag_of_a_metric_not_selected_is_refused(metrics, flags, words, capsys):
    # by the parser: before the checkpoint is read (there is none here) or --out made
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--checkpoint", "c.pt", "--out", "o", "--metrics",
                                       metrics, *flags])
    assert e.value.code == 2
    _one_error_line(capsys, [words])


def test_the_flags_of_the_metrics_selected_stay_accepted():
    args = cli.build_parser().parse_args(["--checkpoint", "c.pt", "--out", "o", "--metrics",
                                          "appearance,cyclic", "--seeds", "3",
                                          "--physics-videos", "8", "--rollout-steps", "4",
                                          "--real", "r.h5", "--frames", "4", "--data", "d.h5"])
    assert (args.seeds, args.physics_videos, args.rollout_steps) == ((3,), 8, 4)
    # every metric by default: every flag applies
    cli.build_parser().parse_args(["--checkpoint", "c.pt", "--out", "o", "--i3d", "x.pt",
                                   "--tsne-iters", "300", "--probe-steps", "5"])
