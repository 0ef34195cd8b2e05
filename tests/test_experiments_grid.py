"""`python -m hgan.experiments table1` end to end on CPU: a 2 x 2 grid of tiny runs (two per
process), run again (nothing to do), then one run extended (resumed from its checkpoint,
in a process of its own) in a copy of the grid, so that the tests pass in any order."""
import json
import os
import shutil

import pytest

from hgan.experiments import cli
from hgan.experiments.grid import GridSpec

TINY = ["--device", "cpu", "--batch-size", "2", "--frames", "4", "--train-traj", "6",
        "--test-traj", "4", "--traj-frames", "8", "--no-progress",
        "--train-args", "--ngf 8 --ndf 8 --clip-frames 4 --rollout-frames 6 --log-every 1 --sample-every 1000 "
                        "--ckpt-every 1000 --num-workers 0 --loader torch --integrator reference",
        "--eval-metrics", "physics,appearance,cyclic,samples",
        "--eval-args", "--physics-videos 4 --probe-steps 5 --probe-width 4 --momenta-videos 4 "
                       "--rollout-videos 2 --rollout-steps 4 --seeds 0"]
GRID = ["--systems", "pendulum,mass_spring", "--models", "hgan,mocogan"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("grid"))
    # restored afterwards, not deleted: a value the caller set holds for this worker's later tests
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # children: tiny shapes, two processes on two cores
        # Two training runs per process (hgan.train.pack), two processes at a time.
        code = cli.main(["table1", "--out", out, "--iters", "2", "--parallel", "2",
                         "--pack", "2", "--inline-eval"] + GRID + TINY)
    return out, code


def _spec(out, iters):
    """The spec the grid ran with (its flags decide whether a run counts as evaluated)."""
    with open(os.path.join(out, "grid.json")) as f:
        saved = json.load(f)["spec"]
    assert (saved["systems"], saved["models"]) == (["pendulum", "mass_spring"], ["hgan", "mocogan"])
    return GridSpec(**{**saved, "iters": iters})


def test_tiny_grid_trains_evaluates_and_compares(grid):
    out, code = grid
    assert code == 0
    for run in _spec(out, 2).runs():
        assert run.iteration() == 2 and run.evaluated(), run.name
        seg = run.record()["segments"]
        assert len(seg) == 1 and seg[0]["from"] == 0 and seg[0]["to"] == 2
        took = seg[0]["seconds"]  # the record keeps the segment's duration: a field, not speed
        assert took > 0
        res = run.results()
        assert res["system"] == run.system and res["model"] == run.model
        assert res["appearance"]["num_generated"] == 4
        assert res["physics"]["frames"] == 4  # the grid's --frames (its default, 16, > 8)
        log = open(run.path("train.log")).read()
        assert "-m hgan.train.pack --tagged" in log and f"run directory {run.dir}" in log
    text = open(os.path.join(out, "compare.md")).read()
    assert "| pendulum | hgan | 0 | 2 / 2 |" in text and "| mass_spring | mocogan | 0 | 2 / 2 |" in text
    assert "hgan < mocogan on energy drift" in text and "Active momentum dimensions" in text
    assert "no --i3d detector given" in text
    for name in ("energy_drift.png", "appearance.png", "samples_pendulum.png"):
        assert os.path.getsize(os.path.join(out, "figures", name)) > 0
    # Links in compare.md resolve from its folder.
    assert "](runs/pendulum-hgan-s0/eval/report.md)" in text
    assert os.path.exists(os.path.join(out, "runs", "pendulum-hgan-s0", "eval", "report.md"))
    meta = json.load(open(os.path.join(out, "grid.json")))
    assert meta["spec"]["iters"] == 2 and meta["device"].startswith("CPU")


def test_finished_grid_has_nothing_to_do(grid, capsys):
    out, _ = grid
    before = {r.name: os.path.getmtime(r.checkpoint) for r in _spec(out, 2).runs()}
    assert cli.main(["table1", "--out", out, "--iters", "2"] + GRID + TINY) == 0
    assert "0 datasets to generate, 0 runs to train, 0 to evaluate" in capsys.readouterr().err
    assert before == {r.name: os.path.getmtime(r.checkpoint) for r in _spec(out, 2).runs()}


@pytest.mark.slow
def test_longer_grid_resumes_from_checkpoints_and_reevaluates(grid, tmp_path):
    # A copy: extending the shared grid would change what the other tests read.
    out = str(tmp_path / "grid")
    shutil.copytree(grid[0], out)
    before = json.load(open(os.path.join(out, "grid.json")))
    first = before.get("wall_s_total", before["wall_s"])
    # One run of the grid, one more iteration, evaluated in a subprocess this time.
    code = cli.main(["table1", "--out", out, "--iters", "3", "--systems", "pendulum",
                     "--models", "mocogan"] + TINY)
    assert code == 0
    # the header's wall time: this invocation's, and every invocation's on the grid (a rerun
    # said only its own, 0 s when it had nothing to do)
    meta = json.load(open(os.path.join(out, "grid.json")))
    assert meta["wall_s_total"] == pytest.approx(first + meta["wall_s"])
    assert (f"of every invocation on this grid: {meta['wall_s_total']:.0f} s"
            in open(os.path.join(out, "compare.md")).read())
    run = GridSpec(**{**json.load(open(os.path.join(out, "grid.json")))["spec"],
                      "iters": 3}).runs()[0]
    assert run.name == "pendulum-mocogan-s0"
    assert run.iteration() == 3 and run.evaluated() and run.results()["iteration"] == 3
    seg = run.record()["segments"]
    assert [(s["from"], s["to"]) for s in seg] == [(0, 2), (2, 3)]
    assert "--resume" in open(run.path("train.log")).read()


def test_export_copies_small_files_only(grid, tmp_path):
    out, _ = grid
    dest = tmp_path / "table1"
    assert cli.main(["export", out, "--to", str(dest)]) == 0
    files = {os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs}
    assert "compare.md" in files and "figures/energy_drift.png" in files
    assert "runs/pendulum-hgan-s0/eval/results.json" in files
    assert "runs/pendulum-hgan-s0/config.json" in files
    assert not [f for f in files if f.endswith((".pt", ".h5", ".log")) or "/tb/" in f]


def test_bad_grid_is_one_clear_error(tmp_path, capsys):
    assert cli.main(["table1", "--out", str(tmp_path), "--systems", "pendulum,pendulm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hgan.experiments: error: unknown systems ['pendulm']")


@pytest.mark.parametrize("flags, message", [
    (["--pack", "17"], "--pack 17: at most 16 training runs per process"),
    (["--pack", "2", "--train-args", "--amp --compile"],
     "--pack > 1 with --train-args --compile: packed runs cannot use them"),
])
def test_a_grid_that_cannot_be_packed_is_one_clear_error(tmp_path, capsys, flags, message):
    assert cli.main(["table1", "--out", str(tmp_path)] + flags) == 2
    assert message in capsys.readouterr().err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--train-args", "--ngff 8"],
     "--train-args: unrecognized arguments: --ngff 8 (see python train.py --help)"),
    (["--train-args", "--lr -1"], "--train-args: --lr must be > 0, got -1.0"),
    (["--eval-args", "--probe-stepz 5"], "--eval-args: unrecognized arguments: --probe-stepz 5"),
    (["--eval-args", "--frames 1"], "--eval-args: argument --frames: expected an integer >= 2"),
    (["--traj-frames", "8", "--frames", "4", "--eval-args", "--frames 9"],
     "evaluation with --frames 9 is longer than the held-out trajectories (--traj-frames 8)"),
    # refused while the grid was planned, after --out was made: it was left behind, empty
    (["--batch-size", "2", "--traj-frames", "8", "--frames", "12", "--eval-args", "--frames 8"],
     "--traj-frames 8 is shorter than the training clips (--frames 12)"),
    (["--batch-size", "2", "--traj-frames", "8", "--frames", "12", "--data-only",
      "--eval-args", "--frames 8"],
     "--traj-frames 8 is shorter than the training clips (--frames 12)"),
    (["--frames", "4", "--i3d", __file__],
     "evaluation with --frames 4: FVD's I3D (--i3d) needs at least 10"),
    (["--i3d", __file__], "FVD over --fvd-videos 2048 needs as many held-out trajectories, "
                          "and the grid makes --test-traj 256"),
    # each evaluation would stop on it (after the training): nothing to compute
    (["--eval-metrics", "fvd"], "--eval-metrics fvd alone needs the I3D detector: pass --i3d"),
    (["--resolution", "30"], "python train.py refuses the grid's own settings: unsupported "
                             "resolution 30"),
    # shlex's ValueError was a traceback
    (["--train-args", "'unclosed"], "--train-args \"'unclosed\": no closing quotation"),
    (["--eval-args", "--seeds 0 \"1"], "--eval-args '--seeds 0 \"1': no closing quotation"),
])
def test_flags_no_run_could_take_are_one_error_before_any_job(tmp_path, capsys, flags, message,
                                                            monkeypatch):
    monkeypatch.delenv("HGAN_I3D", raising=False)
    out = tmp_path / "grid"
    # tiny sizes first (`flags` may override them): a check that no longer refuses fails
    # within a minute instead of training 20,000 iterations
    assert cli.main(["table1", "--out", str(out), "--systems", "pendulum", "--models", "hgan",
                     "--device", "cpu", "--iters", "1", "--train-traj", "2"] + flags) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hgan.experiments: error: "), lines
    assert message in lines[0]
    assert not out.exists()  # no data generated, no run started


def test_data_only_generates_the_datasets_and_nothing_else(tmp_path, capsys):
    out = str(tmp_path / "g")
    tiny = [a for a in TINY if a != "--no-progress"]
    assert cli.main(["table1", "--out", out, "--data-only", "--systems", "pendulum"] + tiny) == 0
    assert "[grid] 1 dataset to generate in" in capsys.readouterr().err
    assert sorted(os.listdir(os.path.join(out, "data", "pendulum"))) == ["test.h5", "train.h5"]
    assert not os.path.exists(os.path.join(out, "runs"))
    assert not os.path.exists(os.path.join(out, "compare.md"))


def test_a_detector_found_through_the_environment_is_checked_too(tmp_path, capsys, monkeypatch):
    # hgan.evaluate finds the I3D file at $HGAN_I3D without --i3d: FVD then needs its videos.
    monkeypatch.setenv("HGAN_I3D", __file__)
    out = tmp_path / "grid"
    argv = ["table1", "--out", str(out), "--systems", "pendulum", "--models", "hgan", "--device",
            "cpu", "--eval-metrics", "fvd,physics"]
    assert cli.main(argv) == 2
    assert "FVD over --fvd-videos 2048 needs as many held-out trajectories" in capsys.readouterr().err
    assert not out.exists()
    # no file there: hgan.evaluate skips FVD, so nothing to refuse (checked up to the data step)
    monkeypatch.setenv("HGAN_I3D", str(tmp_path / "absent.pt"))
    from hgan.experiments import grid
    spec = grid.GridSpec(out=str(out), systems=("pendulum",), models=("hgan",), device="cpu",
                         eval_metrics="fvd,physics")
    grid.check_flags(spec)
    # a directory there is no detector either (hgan.evaluate skips FVD; the grid counted it
    # as one, so every invocation evaluated its runs again for an FVD never computed)
    monkeypatch.setenv("HGAN_I3D", str(tmp_path))
    grid.check_flags(spec)
    import types
    assert grid._detector(types.SimpleNamespace(i3d="")) is None


@pytest.mark.parametrize("missing, words", [
    # table1's flag is --eval-metrics (--metrics is hgan.evaluate's, which table1 lacks)
    ("matplotlib", ["matplotlib", "not installed", "(--eval-metrics cyclic,tsne need it)",
                    "install the eval extra, pip install -e '.[eval]'"]),
    ("sklearn", ["scikit-learn", "not installed", "(--eval-metrics tsne needs it)",
                 "pip install -e '.[eval]'"]),
])
def test_a_grid_without_the_eval_extra_is_one_error_before_any_job(tmp_path, capsys, monkeypatch,
                                                                  missing, words):
    # evaluation (t-SNE, plots) and compare.md's figures need the eval extra: refused before
    # the data and the training, not a failed evaluation of every run hours later
    import sys
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    out = tmp_path / "grid"
    assert cli.main(["table1", "--out", str(out), "--systems", "pendulum", "--models", "hgan",
                     "--device", "cpu", "--iters", "1", "--train-traj", "2"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hgan.experiments: error: "), lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not out.exists()


def test_data_only_with_probes_caches_each_systems_probe_as_an_evaluation_would(tmp_path,
                                                                                 capsys):
    # --probes trains every system's physics probe (in threads, at once) for the grid's own
    # evaluation settings: its evaluations then load it instead of waiting for the first to
    # train it. Oracle: the probe one system's data trains alone, weights equal.
    from hgan.data import get_system
    from hgan.evaluate.cli import probe_settings
    from hgan.evaluate.probe import (load_or_train_probe, probe_cache_path, probe_is_cached,
                                     ColourOrderedRows)
    import torch
    from hgan.data import open_h5
    out = str(tmp_path / "g")
    tiny = [a for a in TINY if a != "--no-progress"]
    # TINY's --eval-args: --probe-steps 5 --probe-width 4
    argv = ["table1", "--out", out, "--data-only", "--probes", "--systems", "pendulum,two_body"] + tiny
    assert cli.main(argv) == 0
    assert "[grid] physics probes cached for 2 of 2 systems in" in capsys.readouterr().err
    for name in ("pendulum", "two_body"):
        data = os.path.join(out, "data", name, "train.h5")
        settings = probe_settings(get_system(name), 5, 4)
        assert os.path.exists(probe_cache_path(data)) and probe_is_cached(data, **settings)
        cached = torch.load(probe_cache_path(data), weights_only=True)["state_dict"]
        ds = open_h5(data)
        alone = load_or_train_probe(data, ds.frames, ColourOrderedRows(
            get_system(name), ds.states, ds.color_index), cache=False, progress=False, **settings)
        for k, v in alone.state_dict().items():
            torch.testing.assert_close(cached[k], v.cpu(), rtol=0, atol=0, msg=k)
    assert not os.path.exists(os.path.join(out, "runs"))
