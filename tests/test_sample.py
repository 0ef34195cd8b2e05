"""Sampling from checkpoints: load_generator, the CLI, time reversal and long horizons."""
import os
import signal
import time
import numpy as np
import pytest
import torch
from PIL import Image

from hgan.models import ModelConfig
from hgan.sample import generate, load_generator
from hgan.train import RunConfig, train

@pytest.fixture(scope="module")
def checkpoints(tiny_pendulum_h5, tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for model in ("hgan", "mocogan"):
        run = tmp_path_factory.mktemp(f"sample_{model}")
        cfg = RunConfig(system="pendulum", data=os.path.dirname(os.path.dirname(tiny_pendulum_h5)),
                        iters=1, batch_size=4, frames=6, device="cpu", out=str(run), n_samples=2,
                        num_workers=0, progress=False, loader="torch",
                        model=ModelConfig(model=model, ngf=8, ndf=8, clip_frames=4, rollout_frames=8,
                                          hamiltonian="separable", integrator="reference"))
        out[model] = train(cfg)["checkpoint"]
    torch.set_num_threads(n)
    return out


def test_load_generator_eval_mode_and_config(checkpoints):
    g, config = load_generator(checkpoints["hgan"])
    assert not g.training and config["model"]["model"] == "hgan"
    assert config["system"] == "pendulum" and config["data_path"].endswith("train.h5")
    v = g.sample(2, 40, generator=torch.Generator().manual_seed(0))  # longer than training (6)
    assert v.shape == (2, 40, 3, 32, 32) and torch.isfinite(v).all()


def test_sampling_is_seeded(checkpoints):
    a, _ = generate(checkpoints["hgan"], n=2, frames=5, seed=1)
    b, _ = generate(checkpoints["hgan"], n=2, frames=5, seed=1)
    c, _ = generate(checkpoints["hgan"], n=2, frames=5, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_negative_dt_reverses_the_learned_motion(checkpoints):
    # Separable H: rolling forward T-1 steps then back with -dt revisits the same states,
    # so the backward video starting at the last state ends on the first forward frame.
    g, _ = load_generator(checkpoints["hgan"])
    g.double()
    mm = g.motion_module
    eps = torch.randn(2, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q0, p0 = mm.initial_state(eps)
    with torch.no_grad():
        q, p, _ = mm.hamiltonian.rollout(q0, p0, 12, dt=0.05, backend="reference")
        qb, pb, _ = mm.hamiltonian.rollout(q[:, -1], p[:, -1], 12, dt=-0.05, backend="reference")
    torch.testing.assert_close(torch.flip(qb, [1]), q, rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.flip(pb, [1]), p, rtol=0, atol=1e-9)


def run_cli(capsys, *args):
    """`python -m hgan.sample ARGS` in-process (a subprocess would only add interpreter start-up)."""
    from hgan.sample import main
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_sample_cli_writes_gif_and_png(checkpoints, tmp_path, capsys):
    out = tmp_path / "s.gif"
    rc, stdout, err = run_cli(capsys, "--checkpoint", checkpoints["hgan"], "--n", "3", "--frames", "9",
                              "--dt", "-0.05", "--out", str(out))
    assert rc == 0, err
    assert "3 videos x 9 frames" in stdout
    gif = Image.open(out)
    # Pillow merges identical consecutive frames, adding up their durations: count time instead.
    total = 0
    for i in range(gif.n_frames):
        gif.seek(i)
        total += gif.info["duration"]
    assert total == 9 * 50  # 9 frames in real time: one per dt = 0.05 s (was 10 fps: half speed)
    rc, stdout, err = run_cli(capsys, "--checkpoint", checkpoints["hgan"], "--n", "1",
                              "--frames", "1", "--out", str(tmp_path / "one.gif"))
    assert rc == 0 and "1 video x 1 frame ->" in stdout, (stdout, err)   # was "1 frames"
    png = np.asarray(Image.open(tmp_path / "s.png"))
    assert png.shape == (3 * 32, 9 * 32, 3)  # one row per video, one column per frame


def test_sample_cli_device_auto_samples_where_it_resolves(checkpoints, tmp_path, capsys,
                                                          monkeypatch):
    # the parser took --device auto (and its device error offers it), then torch.device("auto")
    # failed: "hgan.sample: error: Expected one of cpu, cuda, ... device type ...: auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, stdout, err = run_cli(capsys, "--checkpoint", checkpoints["hgan"], "--n", "1",
                              "--frames", "2", "--device", "auto", "--out", str(tmp_path / "a.gif"))
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path)) == ["a.gif", "a.png"]


def test_sample_cli_out_folder_writes_inside_it(checkpoints, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    rc, stdout, err = run_cli(capsys, "--checkpoint", checkpoints["hgan"], "--n", "2",
                              "--frames", "3", "--out", str(folder))
    assert rc == 0, err
    assert sorted(os.listdir(folder)) == ["samples.gif", "samples.png"]
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert np.asarray(Image.open(folder / "samples.png")).shape == (2 * 32, 3 * 32, 3)
    # a new folder, named as one by its trailing slash, is created (it was refused)
    rc, _, err = run_cli(capsys, "--checkpoint", checkpoints["hgan"], "--n", "2",
                         "--frames", "3", "--out", str(tmp_path / "new") + "/")
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "new")) == ["samples.gif", "samples.png"]


def test_sample_cli_clear_errors(checkpoints, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "--checkpoint", checkpoints["mocogan"], "--n", "2", "--frames", "4",
                         "--dt", "0.1", "--out", str(tmp_path / "m.gif"))
    assert rc == 2 and "no time step" in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(capsys, "--checkpoint", str(tmp_path / "missing.pt"),
                         "--out", str(tmp_path / "x.gif"))
    assert rc == 2 and "no checkpoint at" in err
    assert not (tmp_path / "m.gif").exists()


@pytest.mark.parametrize("where", ["sampling", "writing the png"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_sample_is_one_line_and_leaves_no_file(checkpoints, tmp_path, capsys,
                                                          monkeypatch, where, signum):
    # Ctrl-C printed a 50-line KeyboardInterrupt traceback, and SIGTERM ended the command
    # silently; a stop between the GIF and the PNG left the GIF as if the command had finished.
    import hgan.sample as sample

    def stop(*args, **kwargs):
        os.kill(os.getpid(), signum)     # the handler (SIGTERM) or Python (SIGINT) raises here
        time.sleep(5)                     # not reached: a signal that was lost fails the test
        raise AssertionError("the signal did not stop the command")
    if where == "sampling":
        monkeypatch.setattr(sample, "generate", stop)
    else:
        monkeypatch.setattr(sample, "save_png_strip", stop)
    before = signal.getsignal(signal.SIGTERM)
    rc, stdout, err = run_cli(capsys, "--checkpoint", checkpoints["hgan"], "--n", "1",
                              "--frames", "2", "--out", str(tmp_path / "s.gif"))
    by = "" if signum == signal.SIGINT else " by SIGTERM"
    assert (rc, stdout, err) == (128 + signum, "",
                                 f"hgan.sample: interrupted{by}; nothing was written\n")
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == before   # the command's handler is gone again


def test_train_cli_rejects_unknown_system_in_one_line(capsys):
    from hgan.train import config_from_args
    with pytest.raises(SystemExit) as exc:
        config_from_args(["--system", "four_body"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "four_body" in last and "three_body" in last and "pendulum" in last


def test_train_cli_flags_reach_the_configs():
    from hgan.train import config_from_args
    cfg, resume = config_from_args(["--system", "three_body", "--model", "mocogan", "--amp",
                                    "--frames", "8", "--resolution", "64", "--r1-gamma", "10",
                                    "--integrator", "reference", "--hamiltonian", "separable",
                                    "--resume", "runs/x"])
    assert (cfg.system, cfg.model.model, cfg.amp, cfg.frames, cfg.r1_gamma) == (
        "three_body", "mocogan", True, 8, 10.0)
    assert (cfg.model.resolution, cfg.model.integrator, cfg.model.hamiltonian) == (
        64, "reference", "separable")
    assert cfg.model.clip_frames == 8  # the D_V clip is capped at the training length
    assert cfg.out.startswith(os.path.join("runs", "three_body-mocogan-")) and resume == "runs/x"
    assert cfg.model.fused_precision == "auto"
    cfg, _ = config_from_args(["--fused-precision", "tf32x3", "--scheme", "official"])
    assert (cfg.model.fused_precision, cfg.model.scheme) == ("tf32x3", "official")


def test_dt_reaches_the_rollout_with_its_sign(checkpoints):
    # Same seed, same noise, same first state: +dt and -dt share frame 0 and nothing after;
    # no --dt is the training dt (0.05).
    fwd, _ = generate(checkpoints["hgan"], n=2, frames=5, dt=0.05, seed=3)
    back, _ = generate(checkpoints["hgan"], n=2, frames=5, dt=-0.05, seed=3)
    default, _ = generate(checkpoints["hgan"], n=2, frames=5, seed=3)
    assert torch.equal(fwd[:, 0], back[:, 0])
    assert all(not torch.equal(fwd[:, t], back[:, t]) for t in range(1, 5))
    assert torch.equal(default, fwd)


def test_sample_cli_out_with_another_extension_and_fps(checkpoints, tmp_path, capsys):
    # --out x.png: the GIF goes to x.gif, the strip to x.png; --fps sets every frame's delay.
    rc, stdout, err = run_cli(capsys, "--checkpoint", checkpoints["hgan"], "--n", "2",
                              "--frames", "3", "--fps", "4", "--out", str(tmp_path / "x.png"))
    assert rc == 0, err
    assert stdout.strip().endswith(f"-> {tmp_path / 'x.gif'}, {tmp_path / 'x.png'}")
    gif = Image.open(tmp_path / "x.gif")
    assert gif.format == "GIF"
    total = 0
    for i in range(gif.n_frames):
        gif.seek(i)
        total += gif.info["duration"]
    assert total == 3 * 250
    png = Image.open(tmp_path / "x.png")
    assert png.format == "PNG" and png.size == (3 * 32, 2 * 32)


@pytest.mark.parametrize("content", [{"weights": torch.zeros(2)}, torch.zeros(3),
                                     # the keys present, their contents not a checkpoint's
                                     # (a KeyError or AttributeError traceback otherwise)
                                     {"generator": {}, "config": {"system": "pendulum"}},
                                     {"generator": torch.zeros(2), "config": {"model": {}}}],
                         ids=["state-dict", "tensor", "config-without-model",
                              "generator-not-a-state-dict"])
def test_sample_cli_names_a_torch_file_that_is_no_training_checkpoint(tmp_path, capsys, content):
    # A bare state dict or tensor saved with torch.save was a KeyError / IndexError traceback.
    path = tmp_path / "weights.pt"
    torch.save(content, path)
    rc, _, err = run_cli(capsys, "--checkpoint", str(path), "--out", str(tmp_path / "s.gif"))
    assert rc == 2
    assert err.splitlines() == [f"hgan.sample: error: {path} is not a training checkpoint "
                                "(no generator weights and model config)"]
    assert not (tmp_path / "s.gif").exists()


def test_sample_cli_unwritable_out_is_one_line(checkpoints, tmp_path, capsys):
    # --out below a regular file: the folder cannot be made (was an OSError traceback).
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "s.gif"
    rc, stdout, err = run_cli(capsys, "--checkpoint", checkpoints["hgan"], "--n", "1",
                              "--frames", "2", "--out", str(out))
    assert rc == 2 and stdout == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"hgan.sample: error: --out {out}: cannot write it (")
    assert str(tmp_path / "file") in err


def test_a_png_that_cannot_be_written_leaves_no_gif_behind(checkpoints, tmp_path, capsys):
    # the GIF is written first: a failed PNG used to leave it, as if the command had finished
    (tmp_path / "s.png").mkdir()
    rc, stdout, err = run_cli(capsys, "--checkpoint", checkpoints["hgan"], "--n", "1",
                              "--frames", "2", "--out", str(tmp_path / "s.gif"))
    assert rc == 2 and stdout == "" and "cannot write it" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]


def test_load_generator_holds_the_checkpoints_weights(checkpoints):
    from hgan.train.checkpoint import load_checkpoint
    saved = load_checkpoint(checkpoints["hgan"])["generator"]
    g, _ = load_generator(checkpoints["hgan"])
    state = g.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


def test_sample_cli_accepts_fps_50_and_an_upper_case_extension():
    # --fps 50 is documented as allowed (at most 50) and --out CLIP.GIF names a GIF: a
    # refusal of either went unnoticed.
    from hgan.sample import build_parser
    a = build_parser().parse_args(["--checkpoint", "x", "--fps", "50", "--out", "CLIP.GIF"])
    assert (a.fps, a.out) == (50, "CLIP.GIF")


@pytest.mark.parametrize("seed", [-2**63, -1, 2**63, 2**64 - 1])
def test_sample_cli_accepts_every_64_bit_seed(seed):
    # torch.Generator.manual_seed takes -2**63 to 2**64 - 1 (a negative seed wraps): the
    # range --seed documents in its error
    from hgan.sample import build_parser
    assert build_parser().parse_args(["--checkpoint", "x", "--seed", str(seed)]).seed == seed
    torch.Generator().manual_seed(seed)   # the oracle: torch takes it


def test_sample_cli_keeps_an_upper_case_gif_name(checkpoints, tmp_path, capsys):
    # --out CLIP.GIF is accepted as a GIF's name: the GIF goes there, not to CLIP.gif
    # (another file on a case-sensitive disk), and the line printed names it
    rc, stdout, err = run_cli(capsys, "--checkpoint", checkpoints["hgan"], "--n", "1",
                              "--frames", "2", "--out", str(tmp_path / "CLIP.GIF"))
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path)) == ["CLIP.GIF", "CLIP.png"]
    assert stdout.strip().endswith(f"-> {tmp_path / 'CLIP.GIF'}, {tmp_path / 'CLIP.png'}")


def _png(path):
    return np.asarray(Image.open(path))


def test_sample_cli_draws_the_seeded_videos_at_the_given_dt(checkpoints, tmp_path, capsys):
    # The oracle: the checkpoint's generator sampled directly, seeded with --seed and run at
    # --dt. --seed (or the sign of --dt) that never reached the sampler passed every test.
    from hgan.train.media import save_png_strip
    g, _ = load_generator(checkpoints["hgan"])

    def strip(seed, dt, name):
        with torch.no_grad():
            v = g.sample(3, 4, dt=dt, generator=torch.Generator().manual_seed(seed))
        return _png(save_png_strip(v, str(tmp_path / "want" / name)))
    want = strip(5, -0.1, "want.png")
    # what a lost flag would draw instead: each differs from the oracle, or the test is blind
    for other in (strip(0, -0.1, "seed0.png"), strip(5, 0.1, "forward.png")):
        assert other.shape == want.shape and not np.array_equal(other, want)
    rc, stdout, err = run_cli(capsys, "--checkpoint", checkpoints["hgan"], "--n", "3",
                              "--frames", "4", "--dt", "-0.1", "--seed", "5",
                              "--out", str(tmp_path / "got.gif"))
    assert rc == 0, err
    assert np.array_equal(_png(tmp_path / "got.png"), want)


@pytest.mark.parametrize("flags, want", [
    # --help's defaults (tests/test_sample_grid_cli_errors.py): 16 videos of 64 frames at the
    # training dt (None), seed 0, on the CPU; every other test gives --n and --frames
    ([], (16, 64, None, 0, "cpu")),
    (["--n", "2", "--frames", "3", "--dt", "-0.2", "--seed", "9", "--device", "cuda:1"],
     (2, 3, -0.2, 9, "cuda:1")),
    (["--device", "auto"], (16, 64, None, 0, "cuda")),
], ids=["defaults", "every-flag", "auto"])
def test_sample_cli_passes_every_flag_to_the_sampler(tmp_path, capsys, monkeypatch, flags,
                                                     want):
    # Each flag reaching generate(): the sampling tests run on a CPU, where a --device dropped
    # on the way (sampling on the CPU) passed them all, as did a cap on --n above the 3
    # videos they ask for.
    import hgan.sample as sample
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    calls = []

    def spy(*args):
        calls.append(args)
        return (torch.zeros(args[1], args[2], 3, 32, 32),
                {"model": {"model": "hgan"}, "system": "pendulum"})
    monkeypatch.setattr(sample, "generate", spy)
    monkeypatch.setattr(sample, "save_gif", lambda *a, **k: None)
    monkeypatch.setattr(sample, "save_png_strip", lambda *a, **k: None)
    rc, stdout, err = run_cli(capsys, "--checkpoint", "run/x.pt", *flags,
                              "--out", str(tmp_path / "s.gif"))
    assert rc == 0, err
    assert calls == [("run/x.pt", *want)]
    assert f"{want[0]} videos x {want[1]} frames" in stdout


@pytest.mark.parametrize("name, files", [("clip", ["clip.gif", "clip.png"]),
                                         ("clip.gif", ["clip.gif", "clip.png"]),
                                         ("clip.png", ["clip.gif", "clip.png"])])
def test_sample_cli_out_names_a_gif_and_the_png_beside_it(tmp_path, capsys, monkeypatch, name,
                                                          files):
    # --help: "GIF path ... the PNG strip goes beside it". A name without an extension is
    # the stem of both (a GIF written to `clip` itself, with no extension, passed before).
    import hgan.sample as sample
    monkeypatch.setattr(sample, "generate", lambda *a: (
        torch.zeros(1, 2, 3, 32, 32), {"model": {"model": "hgan"}, "system": "pendulum"}))
    rc, stdout, err = run_cli(capsys, "--checkpoint", "x.pt", "--n", "1", "--frames", "2",
                              "--out", str(tmp_path / name))
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path)) == files
    assert Image.open(tmp_path / "clip.gif").format == "GIF"
    assert Image.open(tmp_path / "clip.png").format == "PNG"
    assert stdout.strip().endswith(f"-> {tmp_path / 'clip.gif'}, {tmp_path / 'clip.png'}")
