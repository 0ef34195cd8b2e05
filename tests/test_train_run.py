"""Tiny CPU training runs: every model, AMP, exact resume, NaN stop, signal checkpoint."""
import contextlib
import json
import os
import re
import signal
import warnings
from dataclasses import replace

import pytest
import torch

from hgan.models import ModelConfig
from hgan.train import RunConfig, cpu_bf16, load_checkpoint, train
from hgan.train.loop import NonFiniteLoss, Trainer, amp_policy, cpu_has_fast_bf16
from hgan.train.losses import r1_penalty


pytestmark = pytest.mark.usefixtures("one_thread")


def explicit_bf16_warning():
    """An explicit --amp-dtype bf16 on a CPU without native bf16 is obeyed with a warning."""
    if cpu_has_fast_bf16():
        return contextlib.nullcontext()
    return pytest.warns(UserWarning, match="no native bf16")


def tiny_cfg(h5, out, model="hgan", **kw):
    data_root = os.path.dirname(os.path.dirname(h5))
    mk = {k: kw.pop(k) for k in list(kw) if k in ModelConfig.__dataclass_fields__}
    mk.setdefault("rollout_frames", 8)    # windows of the rollout, at a small cost
    mcfg = ModelConfig(model=model, ngf=8, ndf=8, clip_frames=4, integrator="reference", **mk)
    base = dict(system="pendulum", data=data_root, iters=2, batch_size=4, frames=6, device="cpu",
                out=str(out), log_every=1, sample_every=1000, ckpt_every=1000, n_samples=2,
                num_workers=0, progress=False, loader="torch", gen_frames=40)
    base.update(kw)
    return RunConfig(model=mcfg, **base)


def params(ckpt):
    out = {}
    for net in ("generator", "image_disc", "video_disc"):
        out.update({f"{net}.{k}": v for k, v in ckpt[net].items()})
    return out


@pytest.mark.parametrize("model", ["hgan", "hnn_gan", "mocogan"])
def test_tiny_run_every_model(tiny_pendulum_h5, tmp_path, model):
    res = train(tiny_cfg(tiny_pendulum_h5, tmp_path / model, model))
    stats = res["stats"]
    assert res["iteration"] == 2
    for k in ("loss/D_I", "loss/D_V", "loss/G", "loss/L_cyc", "acc/D_I", "acc/D_V",
              "grad_norm/G", "grad_norm/D_I", "grad_norm/D_V", "speed/videos_per_s"):
        assert torch.isfinite(torch.tensor(stats[k])), k
    assert (stats["loss/L_cyc"] > 0) == (model == "hgan")  # L_cyc belongs to hgan only
    assert 0.0 <= stats["acc/D_I"] <= 1.0
    run = tmp_path / model
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["model"] == model and cfg["data_path"].endswith("pendulum/train.h5")
    assert (run / "samples" / "iter_0000002.gif").exists()
    assert (run / "samples" / "iter_0000002.png").exists()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run / "tb"))
    ck = load_checkpoint(str(run / "checkpoints" / "last.pt"))
    assert ck["iteration"] == 2 and ck["loader_position"] == 2
    assert ck["config"]["model"]["model"] == model
    # a new run shows its first samples after iteration 1 (--sample-every is 1000 here); that
    # every network trains is tests/test_train_step.py's
    assert (run / "samples" / "iter_0000001.png").exists()


def test_amp_bf16_autocast_runs_the_nets_in_bf16_and_the_rollout_in_fp32(tiny_pendulum_h5,
                                                                        tmp_path, monkeypatch):
    # what autocast does, whatever this CPU's bf16 kernels get right (test below)
    monkeypatch.setattr(cpu_bf16, "check", lambda *a, **k: None)
    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path / "amp", amp=True, amp_dtype="bf16")
    with explicit_bf16_warning():
        tr = Trainer(cfg)
    assert tr.amp_dtype == torch.bfloat16 and not tr.scaler.is_enabled()
    with tr._autocast():
        mot = tr.G.motion(2, 3)
        frames = tr.G.render(tr.G.content(2), mot["y"])
    assert frames.dtype == torch.bfloat16 and mot["y"].dtype == torch.float32


def test_amp_bf16_on_cpu_trains_where_this_cpus_bf16_convolutions_are_right(tiny_pendulum_h5,
                                                                           tmp_path):
    # Which branch runs is this CPU's: an AVX512-BF16 AMD EPYC (torch 2.13) got D_V's Conv3d
    # weight gradient wrong at these shapes (4-frame clips) and takes the refusal.
    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path / "amp", amp=True, amp_dtype="bf16", r1_gamma=10.0)
    bad = cpu_bf16.check(Trainer(replace(cfg, amp=False)).models, 4, 6, 4)
    if bad is None:
        with explicit_bf16_warning():
            res = train(cfg)
        assert all(torch.isfinite(torch.tensor(v)) for v in res["stats"].values())
        assert res["stats"]["loss/R1"] > 0
    else:
        with pytest.raises(ValueError, match="--amp-dtype bf16: this CPU's bf16 convolution is "
                                             "wrong at this run's shapes"), \
                explicit_bf16_warning():
            Trainer(cfg)


def test_amp_bf16_trains_on_exact_bf16_convolutions(tiny_pendulum_h5, tmp_path, monkeypatch,
                                                    exact_bf16_convolutions):
    # The branch above that trains is the one this CPU (and CI's) never takes: on exact bf16
    # convolution stand-ins it runs everywhere, R1's double backward under autocast included.
    monkeypatch.setattr("hgan.train.loop.cpu_has_fast_bf16", lambda: True)
    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path / "amp", amp=True, amp_dtype="bf16", r1_gamma=10.0)
    assert Trainer(cfg).amp_dtype == torch.bfloat16      # the check passed: bf16 is kept
    res = train(cfg)
    assert all(torch.isfinite(torch.tensor(v)) for v in res["stats"].values())
    assert res["stats"]["loss/R1"] > 0


def test_amp_on_cpu_falls_back_to_fp32_or_refuses_when_the_convolution_check_fails(
        tiny_pendulum_h5, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("hgan.train.loop.cpu_has_fast_bf16", lambda: True)
    calls = []

    def check(models, batch, frames, clip_frames, channels_last=False):
        calls.append((batch, frames, clip_frames, channels_last))
        return "REASON"
    monkeypatch.setattr(cpu_bf16, "check", check)
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "a", amp=True))  # --amp: fp32, one line
    assert tr.amp_dtype is None and calls == [(4, 6, 4, False)]  # this run's shapes
    assert capsys.readouterr().err == "[hgan] --amp: REASON: training in fp32\n"
    with pytest.raises(ValueError, match="^--amp-dtype bf16: REASON; train in fp32"):
        Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "b", amp=True, amp_dtype="bf16"))
    assert Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "c")).amp_dtype is None
    assert len(calls) == 2  # no check without --amp
    Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "d", amp=True, channels_last=True))
    assert calls[-1] == (4, 6, 4, True)  # and this run's memory layout


class _WeightGradOff(torch.autograd.Function):
    """Identity forward; a weight gradient 10% off except in float64 (the check's oracle)."""

    @staticmethod
    def forward(ctx, w):
        return w.view_as(w)

    @staticmethod
    def backward(ctx, g):
        return g if g.dtype == torch.float64 else g * 1.1


def test_the_convolution_check_finds_a_wrong_weight_gradient_and_leaves_the_nets_alone(
        tiny_pendulum_h5, tmp_path, monkeypatch):
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "a"))
    before = {k: v.clone() for n in (tr.G, tr.D_I, tr.D_V) for k, v in n.state_dict().items()}
    rng = torch.get_rng_state()
    # fp32 against float64: right on every CPU (all CPU training relies on it)
    assert cpu_bf16.check(tr.models, 4, 6, 4, dtype=torch.float32) is None
    conv3d = torch.nn.functional.conv3d
    monkeypatch.setattr(torch.nn.functional, "conv3d",
                        lambda x, w, *a: conv3d(x, _WeightGradOff.apply(w), *a))
    bad = cpu_bf16.check(tr.models, 4, 6, 4, dtype=torch.float32)
    assert bad.startswith("this CPU's fp32 convolution is wrong at this run's shapes "
                          "(video discriminator main.0, input 4x3x4x32x32: weight gradient off "
                          "by 0.1"), bad
    after = {k: v for n in (tr.G, tr.D_I, tr.D_V) for k, v in n.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics too
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_convolution_check_leaves_out_the_layer_autocast_keeps_in_fp32(
        tiny_pendulum_h5, tmp_path, monkeypatch, exact_bf16_convolutions):
    # D_I's logit layer (a conv to one channel) runs in fp32 under autocast (fp32_logits):
    # a bf16 fault there cannot touch training, one in D_I's other layers can. bf16
    # convolutions computed in fp32 (rounded to bf16 after) stand in for this CPU's own,
    # which are wrong at these shapes on some CPUs (the check then skipped this test there).
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "a"))
    assert cpu_bf16.check(tr.models, 4, 6, 4) is None
    conv2d = torch.nn.functional.conv2d

    def faulty(which):
        def conv(x, w, *a):
            return conv2d(x, _WeightGradOff.apply(w) if which(w) else w, *a)
        return conv
    monkeypatch.setattr(torch.nn.functional, "conv2d", faulty(lambda w: w.shape[0] == 1))
    assert cpu_bf16.check(tr.models, 4, 6, 4) is None
    # the same fault in fp32 is found there: the layer is left out only where autocast runs
    assert "(image discriminator main." in cpu_bf16.check(tr.models, 4, 6, 4, dtype=torch.float32)
    monkeypatch.setattr(torch.nn.functional, "conv2d", faulty(lambda w: w.shape[0] > 1))
    bad = cpu_bf16.check(tr.models, 4, 6, 4)
    assert bad.startswith("this CPU's bf16 convolution is wrong at this run's shapes (image "
                          "discriminator main.0, input 4x3x32x32: weight gradient off by 0.1"), bad


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_convolution_check_hands_each_layer_its_gradient_in_trainings_layout(
        tiny_pendulum_h5, tmp_path, monkeypatch, channels_last):
    # Training's layout of each convolution's output (so of the gradient that reaches it),
    # recorded by hooks on a real forward, is the one the check's backward must use:
    # channels-last for G_I and D_I, channels_last_3d for D_V's Conv3d under --channels-last
    # (D_V's gradient stayed NCDHW before), contiguous without it.
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "a", channels_last=channels_last))
    formats = (torch.channels_last, torch.channels_last_3d)

    def layout(t):
        return next((f for f in formats if t.dim() == (4 if f is torch.channels_last else 5)
                     and not t.is_contiguous() and t.is_contiguous(memory_format=f)),
                    torch.contiguous_format if t.is_contiguous() else None)
    trained = []
    hooks = [m.register_forward_hook(lambda m, i, o: trained.append(layout(o)))
             for net in (tr.G, tr.D_I, tr.D_V) for m in net.modules()
             if isinstance(m, cpu_bf16._CONVS)]   # as the check hooks them
    with torch.no_grad():
        videos, _ = tr.G(4, 6)
        img = videos[:, 0]
        tr.D_I(img.contiguous(memory_format=torch.channels_last) if channels_last else img)
        tr.D_V(videos[:, :4])
    for h in hooks:
        h.remove()
    handed = []
    grads = cpu_bf16._grads
    monkeypatch.setattr(cpu_bf16, "_grads",
                        lambda m, x, w, g, dtype: handed.append(layout(g)) or grads(m, x, w, g, dtype))
    assert cpu_bf16.check(tr.models, 4, 6, 4, channels_last=channels_last,
                          dtype=torch.float32) is None
    assert handed[::2] == trained                                 # [::2]: fp32 and float64
    assert (torch.channels_last_3d in trained) == channels_last


def test_amp_policy(monkeypatch, capsys):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_policy(cpu, False) == (None, False)
    # a CPU with native bf16: --amp is bf16 autocast
    monkeypatch.setattr("hgan.train.loop.cpu_has_fast_bf16", lambda: True)
    for dtype in ("auto", "bf16"):
        assert amp_policy(cpu, True, dtype) == (torch.bfloat16, False)
    assert capsys.readouterr().err == ""
    # without it, --amp runs fp32 and says why in one line; an explicit bf16 is obeyed
    monkeypatch.setattr("hgan.train.loop.cpu_has_fast_bf16", lambda: False)
    assert amp_policy(cpu, True, "auto") == (None, False)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no native bf16" in err and "fp32" in err
    with pytest.warns(UserWarning, match="no native bf16"):
        assert amp_policy(cpu, True, "bf16") == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        amp_policy(cpu, True, "fp16")
    with pytest.raises(ValueError, match="unknown --amp-dtype"):
        amp_policy(cpu, True, "fp8")
    assert amp_policy(cuda, True, "fp16") == (torch.float16, True)  # fp16 always needs the scaler
    # a GPU without bf16: auto is fp16 with the scaler, an explicit bf16 is bad input
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    assert amp_policy(cuda, True, "auto") == (torch.float16, True)
    with pytest.raises(ValueError, match=r"^--amp-dtype bf16: Tesla V100 has no bf16; use --amp"):
        amp_policy(cuda, True, "bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for dtype in ("auto", "bf16"):
        assert amp_policy(cuda, True, dtype) == (torch.bfloat16, False)


def test_amp_policy_on_a_process_that_does_not_report(monkeypatch, capsys):
    # say=False (torchrun's other ranks, the setup's early check): the same policy as the
    # reporting process, in silence; an unknown dtype is refused even with autocast off.
    cpu = torch.device("cpu")
    monkeypatch.setattr("hgan.train.loop.cpu_has_fast_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert amp_policy(cpu, True, "auto", say=False) == (None, False)
        assert amp_policy(cpu, True, "bf16", say=False) == (torch.bfloat16, False)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="unknown --amp-dtype 'fp8'"):
        amp_policy(cpu, False, "fp8")


@pytest.mark.parametrize("avx512_bf16, amx, fast", [
    (True, False, True), (False, True, True), (False, False, False), (None, True, True),
    (None, None, False)])
def test_native_bf16_is_either_probe_that_this_torch_has(monkeypatch, avx512_bf16, amx, fast):
    # None: this torch has no such probe (an older one lacks the AMX probe)
    for name, value in (("_is_avx512_bf16_supported", avx512_bf16),
                        ("_is_amx_tile_supported", amx)):
        if value is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda v=value: v, raising=False)
    assert cpu_has_fast_bf16() is fast


def test_gan_objective_and_accuracy_closed_forms():
    # -log D(real) - log(1 - D(fake)), non-saturating -log D(fake), with D = sigmoid(logit):
    # written with softplus, -log sigmoid(x) = softplus(-x), -log(1 - sigmoid(x)) = softplus(x).
    from hgan.train.losses import accuracy, d_loss, g_loss
    r, f = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sp = torch.nn.functional.softplus
    assert d_loss(r, f).item() == pytest.approx((sp(-r).mean() + sp(f).mean()).item(), rel=1e-6)
    assert g_loss(f).item() == pytest.approx(sp(-f).mean().item(), rel=1e-6)
    # far in the tails, where sigmoid then BCE would clamp log(0) to -100: the exact value
    big = torch.tensor([200.0])
    assert d_loss(-big, big).item() == pytest.approx(400.0, rel=1e-6)
    assert g_loss(-big).item() == pytest.approx(200.0, rel=1e-6)
    # real 2 > 0 right, -1 wrong; fake 0.5 wrong, -3 < 0 right
    assert accuracy(r, f).item() == 0.5
    assert accuracy(torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -1.0])).item() == 1.0


def test_accuracy_counts_a_zero_logit_as_wrong_and_every_input_once():
    # D = sigmoid(0) = 1/2 decides nothing: right neither for a real nor for a fake input
    # (an untrained D that outputs 0 everywhere scores 0, not 1).
    from hgan.train.losses import accuracy
    assert accuracy(torch.zeros(3), torch.zeros(3)).item() == 0.0
    # the fraction of all inputs, however many of each: 1 real right, 1 of 3 fakes right
    assert accuracy(torch.tensor([1.0]), torch.tensor([-1.0, 1.0, 2.0])).item() == 0.5

def test_the_dataset_check_takes_videos_as_long_as_the_trajectories(tiny_pendulum_h5, tmp_path):
    # tiny_pendulum_h5: pendulum, 40 frames of 32x32. --frames 40 is every trajectory whole.
    from hgan.train.loop import check_dataset
    check_dataset(tiny_cfg(tiny_pendulum_h5, tmp_path, frames=40))
    with pytest.raises(ValueError, match="has trajectories of 40 frames, fewer than --frames 41"):
        check_dataset(tiny_cfg(tiny_pendulum_h5, tmp_path, frames=41, gen_frames=41))


def test_a_missing_dataset_is_generated_from_the_gen_flags(tmp_path):
    # --gen-frames equal to --frames is enough (each trajectory one whole video); train.h5
    # and test.h5 get --gen-train and --gen-test trajectories, generated from --seed.
    from hgan.data.h5io import open_h5
    from hgan.train.dist import DistInfo
    from hgan.train.loop import ensure_dataset
    root = tmp_path / "data" / "pendulum"
    cfg = tiny_cfg(str(root / "train.h5"), tmp_path / "run", frames=6, gen_frames=6,
                   gen_train=3, gen_test=2, seed=5, batch_size=2)
    ensure_dataset(cfg, DistInfo())
    for split, n in (("train", 3), ("test", 2)):
        with open_h5(str(root / f"{split}.h5")) as f:
            assert tuple(f.frames.shape[:2]) == (n, 6), split
            assert int(f.attrs["seed"]) == 5 and f.attrs["system"] == "pendulum"


def test_under_torchrun_rank_0_alone_generates_a_missing_dataset(tmp_path, monkeypatch):
    # Rank 1 generates nothing: it waits out rank 0's generation (stood in for here by the
    # wait), then checks the file rank 0 made.
    import hgan.data
    from hgan.train import dist as hdist
    from hgan.train.loop import ensure_dataset
    generate, calls = hgan.data.generate_dataset, []
    monkeypatch.setattr(hgan.data, "generate_dataset", lambda *a, **k: calls.append("rank 1"))

    class RankZeroGenerates:
        def wait(self):
            calls.append("waited")
            generate("pendulum", tmp_path / "data", train=2, test=0, frames=8, seed=0,
                     resolution=32, progress=False)
    monkeypatch.setattr(hdist, "LongWait", RankZeroGenerates)
    cfg = tiny_cfg(str(tmp_path / "data" / "pendulum" / "train.h5"), tmp_path / "run")
    ensure_dataset(cfg, hdist.DistInfo(rank=1, world_size=2))
    assert calls == ["waited"]


@pytest.mark.parametrize("had_test", [False, True])
def test_a_generation_stopped_by_a_signal_takes_the_test_split_it_made_along(
        tmp_path, monkeypatch, had_test):
    # The test split is written first: a stop in the train split removes the test.h5 that
    # this generation made, and keeps one that was there before it.
    import hgan.data
    from hgan.data import GenerationInterrupted
    from hgan.train.dist import DistInfo
    from hgan.train.loop import ensure_dataset
    test_h5 = tmp_path / "data" / "pendulum" / "test.h5"
    cfg = tiny_cfg(str(test_h5.parent / "train.h5"), tmp_path / "run")
    if had_test:
        test_h5.parent.mkdir(parents=True)
        test_h5.write_bytes(b"an earlier test split")

    def stopped_in_train(system, root, **kw):
        test_h5.parent.mkdir(parents=True, exist_ok=True)
        test_h5.write_bytes(b"this generation's test split")
        raise GenerationInterrupted(signal.SIGINT)
    monkeypatch.setattr(hgan.data, "generate_dataset", stopped_in_train)
    with pytest.raises(GenerationInterrupted):
        ensure_dataset(cfg, DistInfo())
    assert test_h5.exists() == had_test
    # and the data/pendulum/ folders it made for them: the directory as the run found it
    assert (tmp_path / "data").exists() == had_test


def test_data_naming_a_file_or_holding_train_h5_itself(tiny_pendulum_h5, tmp_path):
    # --data is the root above <system>/train.h5: ensure_dataset (hgan.train.pack calls it
    # alone) refuses a file, with the root to use when the file is a dataset; a root that
    # holds a train.h5 of its own beside <system>/train.h5 is still a root.
    from hgan.train.dist import DistInfo
    from hgan.train.loop import check_data_root, ensure_dataset
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path / "run")
    with pytest.raises(ValueError, match=r"^--data is the dataset root \(holding pendulum/train.h5"
                                         rf"\), not a file: got {re.escape(str(notes))}$"):
        ensure_dataset(replace(cfg, data=str(notes)), DistInfo())
    root = os.path.dirname(os.path.dirname(tiny_pendulum_h5))
    with pytest.raises(ValueError, match=f"not a file: got {re.escape(tiny_pendulum_h5)}; use "
                                         f"--data {re.escape(root)}$"):
        ensure_dataset(replace(cfg, data=tiny_pendulum_h5), DistInfo())
    both = tmp_path / "both"
    (both / "pendulum").mkdir(parents=True)
    os.symlink(tiny_pendulum_h5, both / "pendulum" / "train.h5")
    os.symlink(tiny_pendulum_h5, both / "train.h5")
    check_data_root(replace(cfg, data=str(both)))

def test_r1_penalty_closed_form_and_grad_scaler():
    # D(x) = w . x has grad_x D = w for every sample: R1 = gamma/2 * |w|^2 exactly.
    w = torch.tensor([0.5, -1.0, 2.0])
    disc = lambda x: x.flatten(1) @ w  # noqa: E731
    x = torch.randn(4, 3)
    logits, pen = r1_penalty(disc, x, gamma=10.0)
    torch.testing.assert_close(logits, x @ w)
    assert pen.item() == pytest.approx(5.0 * (0.25 + 1.0 + 4.0), rel=1e-6)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _, pen_scaled = r1_penalty(disc, x, gamma=10.0, scaler=scaler)
    assert pen_scaled.item() == pytest.approx(pen.item(), rel=1e-6)  # unscaled by hand



def test_r1_trains_the_discriminator_in_fp32_under_the_callers_autocast():
    # D(x) = w . x: R1 = gamma/2 |w|^2, so its gradient reaching w is gamma * w (the penalty
    # must differentiate through grad_x D, not stop there).
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    _, pen = r1_penalty(lambda x: x.flatten(1) @ w, torch.randn(4, 3), gamma=10.0)
    pen.backward()
    torch.testing.assert_close(w.grad, 10.0 * w.detach())
    # with a GradScaler too (fp16 AMP): the unscaled penalty is still differentiable in D
    w.grad = None
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _, pen = r1_penalty(lambda x: x.flatten(1) @ w, torch.randn(4, 3), gamma=10.0, scaler=scaler)
    pen.backward()
    torch.testing.assert_close(w.grad, 10.0 * w.detach())
    # a real layer under the trainer's bf16 autocast: the penalty is still the fp32 one
    torch.manual_seed(0)
    disc = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(5, 6)
    want_logits, want = r1_penalty(disc, x, gamma=3.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, pen = r1_penalty(disc, x, gamma=3.0)
    assert logits.dtype == pen.dtype == torch.float32
    torch.testing.assert_close(logits, want_logits, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pen, want, rtol=1e-6, atol=1e-7)


def test_gan_losses_and_r1_are_fp32_for_bf16_inputs():
    # Logits from a bf16 forward and a bf16 real batch: every loss is formed in fp32 (the
    # softplus closed forms on the upcast values), as the docstrings promise.
    from hgan.train.losses import d_loss, g_loss
    sp = torch.nn.functional.softplus
    r, f = torch.tensor([2.0, -1.0]).bfloat16(), torch.tensor([0.5, -3.0]).bfloat16()
    want_d = (sp(-r.float()).mean() + sp(f.float()).mean()).item()
    assert d_loss(r, f).dtype == g_loss(f).dtype == torch.float32
    assert d_loss(r, f).item() == pytest.approx(want_d, rel=1e-6)
    assert g_loss(f).item() == pytest.approx(sp(-f.float()).mean().item(), rel=1e-6)
    torch.manual_seed(0)
    disc = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(5, 6).bfloat16()
    logits, pen = r1_penalty(disc, x, gamma=3.0)
    want_logits, want = r1_penalty(disc, x.float(), gamma=3.0)
    assert logits.dtype == pen.dtype == torch.float32
    torch.testing.assert_close(logits, want_logits)
    torch.testing.assert_close(pen, want)


def test_resume_is_bit_identical(tiny_pendulum_h5, tmp_path):
    straight = train(tiny_cfg(tiny_pendulum_h5, tmp_path / "a", iters=4, r1_gamma=1.0))
    train(tiny_cfg(tiny_pendulum_h5, tmp_path / "b", iters=2, r1_gamma=1.0))
    resumed = train(tiny_cfg(tiny_pendulum_h5, tmp_path / "ignored", iters=4),
                    resume=str(tmp_path / "b" / "checkpoints" / "last.pt"))
    assert resumed["out"] == str(tmp_path / "b") and resumed["iteration"] == 4
    a = load_checkpoint(straight["checkpoint"])
    b = load_checkpoint(resumed["checkpoint"])
    assert b["config"]["r1_gamma"] == 1.0  # the run config came from the checkpoint
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    for opt in ("opt_g", "opt_di", "opt_dv"):
        for s, t in zip(a[opt]["state"].values(), b[opt]["state"].values()):
            assert torch.equal(s["exp_avg"], t["exp_avg"])
    assert a["loader_position"] == b["loader_position"] == 4
    # a 1-iteration run from the same seed differs: the comparison can fail
    one = load_checkpoint(train(tiny_cfg(tiny_pendulum_h5, tmp_path / "c", iters=3))["checkpoint"])
    assert any(not torch.equal(v, params(one)[k]) for k, v in pa.items())


def assert_same_state(a, b, where="checkpoint"):
    """Every tensor equal to the bit and of the same dtype, every other value equal, the same
    keys: weights and buffers, each optimiser's whole state (exp_avg_sq and the step
    counters too) and param groups, the scaler, every RNG state, iteration and position."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


# (configuration, resumed from a --keep-every snapshot into a branch, resumable flags the
# resume changes)
RESUMED_CONFIGS = {
    # analytic integrator: the Hamiltonian's output bias gets a zero gradient, so Adam keeps
    # a state for a parameter that never moves (only its step counter tells a lost one);
    # a GradScaler (on CPU in fp32, as in the scaler test above) and R1
    "hgan-analytic-scaler": (dict(integrator="analytic", r1_gamma=1.0), False, {}),
    # mocogan with --frames above --rollout-frames (statistics rows the trainer reserves),
    # channels-last, resumed from a snapshot on the gpu-resident loader with every other
    # cadence changed
    "mocogan-snapshot-flags": (
        dict(model="mocogan", rollout_frames=0, channels_last=True), True,
        dict(loader="gpu-resident", log_every=3, sample_every=3, ckpt_every=3, keep_every=3,
             n_samples=3, progress=True)),
}


@pytest.mark.parametrize("case", list(RESUMED_CONFIGS))
def test_a_resumed_run_ends_in_the_straight_runs_whole_state(tiny_pendulum_h5, tmp_path,
                                                               monkeypatch, case):
    # Oracle: a run that never stopped. test_resume_is_bit_identical compares the weights and
    # exp_avg of one configuration; this compares everything the final checkpoints hold, as
    # `train.py --resume RUN --iters N` (given) resumes them, and the next draws.
    from hgan.data.loader import build_loader
    kw, snapshot, flags = RESUMED_CONFIGS[case]
    kw = dict(kw)
    if case.endswith("scaler"):
        monkeypatch.setattr("hgan.train.loop.amp_policy", lambda *a, **k: (None, True))
    integrator = kw.pop("integrator", None)

    def cfg(out, **more):
        c = tiny_cfg(tiny_pendulum_h5, tmp_path / out, **kw, **more)
        return c if integrator is None else replace(
            c, model=replace(c.model, integrator=integrator))

    if snapshot:   # the straight run keeps iter_0000002.pt on its way
        straight = train(cfg("a", iters=4, keep_every=2))
        src, given = str(tmp_path / "a" / "checkpoints" / "iter_0000002.pt"), {
            "iters": 4, "out": str(tmp_path / "branch"), **flags}
    else:
        straight = train(cfg("a", iters=4))
        train(cfg("b", iters=2))
        src, given = str(tmp_path / "b"), {"iters": 4, **flags}
    resumed = train(cfg("ignored", iters=4), resume=src, given=given)
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert a["iteration"] == b["iteration"] == 4
    for ck in (a, b):
        ck.pop("config"), ck.pop("dataset")   # the run directory and the data's path
    assert_same_state(a, b)
    # and what each would draw next: its noise and its next batch
    draws = []
    for ck in (a, b):
        tr = Trainer(cfg("next"))
        tr.load_state_dict(ck)
        stream = build_loader(tr.cfg.data_path, batch_size=4, frames=6, seed=0,
                              kind="torch", num_workers=0, start_batch=tr.loader_position)
        draws.append((torch.randn(8, generator=tr.noise), next(iter(stream)), torch.rand(3)))
        stream.close()
    for x, y in zip(*draws):
        assert torch.equal(x, y)


def test_a_resumed_runs_speed_counts_only_the_iterations_it_ran(tiny_pendulum_h5, tmp_path,
                                                                 monkeypatch):
    # it/s after a resume times the resumed iterations only, not the checkpoint's 6 before
    # them. Every step sleeps 0.3 s, so the 2-iteration window lasts >= 0.6 s: the rate is
    # at most 2 / 0.6 whatever the machine, and at least 2 / the whole resumed call.
    import time

    train(tiny_cfg(tiny_pendulum_h5, tmp_path / "r", iters=6, log_every=2))
    step = Trainer.step

    def slow(self, *a, **kw):
        out = step(self, *a, **kw)
        time.sleep(0.3)
        return out
    monkeypatch.setattr(Trainer, "step", slow)
    t0 = time.perf_counter()
    res = train(tiny_cfg(tiny_pendulum_h5, tmp_path / "ignored", iters=8),
                resume=str(tmp_path / "r" / "checkpoints" / "last.pt"), given={"iters": 8})
    wall = time.perf_counter() - t0
    assert res["iteration"] == 8
    rate = res["stats"]["speed/it_per_s"]
    assert 2 / wall <= rate <= 2 / 0.6, (rate, wall)
    assert res["stats"]["speed/videos_per_s"] == pytest.approx(rate * 4)


def test_runs_of_one_seed_store_the_same_python_and_numpy_rng_states(tiny_pendulum_h5, tmp_path):
    import random

    import numpy as np
    states = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        random.random(), np.random.rand()  # whatever ran before in the process
        ckpt = load_checkpoint(train(tiny_cfg(tiny_pendulum_h5, tmp_path / name, iters=1,
                                              seed=seed))["checkpoint"])
        states.append((ckpt["rng"]["python"], ckpt["rng"]["numpy"]["keys"], ckpt["rng"]["torch"]))
    (pa, na, ta), (pb, nb, tb), (pc, nc, _) = states
    assert torch.equal(ta, tb)
    assert pa == pb and torch.equal(na, nb)
    assert pa != pc and not torch.equal(na, nc)


def test_a_resumed_trainer_draws_what_the_saved_one_would_have_from_every_global_rng(
        tiny_pendulum_h5, tmp_path):
    # A resume puts back the process's torch, Python and numpy RNG states as the checkpoint
    # holds them (anything drawing from them after the resume, a dropout or an augmentation,
    # continues the saved stream). Oracle: the draws the saving process makes right after
    # its state_dict().
    import random

    import numpy as np
    saved = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "a"))
    ck = saved.state_dict()
    want = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    resumed = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "b"))
    torch.rand(7), np.random.rand(7), random.random()    # whatever ran before the resume
    resumed.load_state_dict(ck)
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(got[0], want[0])
    assert np.array_equal(got[1], want[1]) and got[2] == want[2]


def test_the_grad_scalers_state_is_checkpointed_and_resumed(tiny_pendulum_h5, tmp_path,
                                                            monkeypatch):
    # The scaler runs with fp16 on CUDA only; its bookkeeping is the same on CPU (in fp32 here).
    monkeypatch.setattr("hgan.train.loop.amp_policy", lambda *a, **k: (None, True))
    ck = load_checkpoint(train(tiny_cfg(tiny_pendulum_h5, tmp_path / "s", iters=3))["checkpoint"])
    # three finite steps, no growth yet (interval 2000): a fresh scaler's tracker would be 0
    assert ck["scaler"]["_growth_tracker"] == 3 and ck["scaler"]["scale"] == 2.0 ** 16
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "t"))
    assert tr.scaler.is_enabled()
    tr.load_state_dict(ck)
    assert tr.scaler.state_dict() == ck["scaler"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_pendulum_h5, tmp_path):
    def poison(trainer):
        if trainer.iteration == 1:
            with torch.no_grad():
                next(trainer.G.image_generator.parameters()).fill_(float("nan"))

    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path / "nan", iters=5, ckpt_every=1)
    with pytest.raises(NonFiniteLoss, match="at iteration 2.*last good checkpoint kept"):
        train(cfg, callback=poison)
    ck = load_checkpoint(str(tmp_path / "nan" / "checkpoints" / "last.pt"))
    assert ck["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in ck["generator"].values() if v.is_floating_point())


def test_a_cpu_run_checks_each_loss_when_it_is_computed(tiny_pendulum_h5, tmp_path):
    # Deferring the check pays only where reading a loss stalls a GPU: on CPU a poisoned
    # iteration stops the run before another step, with no log or checkpoint boundary near.
    calls = []

    def poison(trainer):
        calls.append(trainer.iteration)
        if trainer.iteration == 1:
            with torch.no_grad():
                next(trainer.G.image_generator.parameters()).fill_(float("nan"))

    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path / "nan", iters=5, log_every=1000, ckpt_every=1000)
    with pytest.raises(NonFiniteLoss, match="at iteration 2"):
        train(cfg, callback=poison)
    assert calls == [1]


def test_deferred_nan_check_names_first_bad_iteration_and_saves_nothing_poisoned(
        tiny_pendulum_h5, tmp_path, monkeypatch):
    # The CUDA behaviour on CPU: losses are checked at the next log/sample/checkpoint boundary.
    monkeypatch.setattr("hgan.train.loop.defers_checks", lambda device: True)
    seen = []

    def poison(trainer):
        seen.append(trainer.iteration)
        if trainer.iteration == 2:  # after iteration 2's checkpoint: iteration 3 is non-finite
            with torch.no_grad():
                next(trainer.G.image_generator.parameters()).fill_(float("nan"))

    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path / "nan", iters=6, ckpt_every=2, log_every=2)
    with pytest.raises(NonFiniteLoss, match="at iteration 3.*last good checkpoint kept"):
        train(cfg, callback=poison)
    assert seen == [1, 2, 3]  # iteration 3 ran on unchecked; iteration 4's flush stopped it
    ck = load_checkpoint(str(tmp_path / "nan" / "checkpoints" / "last.pt"))
    assert ck["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ck["generator"].values() if v.is_floating_point())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_checkpoint_then_exits(tiny_pendulum_h5, tmp_path, sig):
    def send(trainer):
        if trainer.iteration == 2:
            os.kill(os.getpid(), sig)

    def before(signum, frame):  # a handler of the caller's, to be restored afterwards
        raise AssertionError("the trainer's handler should have caught this")

    previous = signal.signal(sig, before)
    try:
        res = train(tiny_cfg(tiny_pendulum_h5, tmp_path / "sig", iters=50), callback=send)
        restored = signal.getsignal(sig)
    finally:
        signal.signal(sig, previous)
    assert res["stopped"] == signal.Signals(sig).name and res["iteration"] == 2
    assert load_checkpoint(str(tmp_path / "sig"))["iteration"] == 2
    assert restored is before  # whatever was installed before (SIG_IGN under nohup, ...)


def test_profile_flag_writes_a_trace(tiny_pendulum_h5, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tiny_cfg(tiny_pendulum_h5, tmp_path / "prof", model="mocogan", iters=6,
                       profile=True, batch_size=2, frames=4, rollout_frames=4))
    # torch 2.11's profiler warned at every run that events are cleared between cycles
    assert not [w for w in caught if "profiler" in w.filename], [str(w.message) for w in caught]
    files = [f for _, _, fs in os.walk(tmp_path / "prof" / "profile") for f in fs]
    assert any(f.endswith(".json") or f.endswith(".json.gz") for f in files), files


def test_a_resumed_profiled_run_profiles_again_only_when_asked(tiny_pendulum_h5, tmp_path):
    def traces():
        return sorted(f for _, _, fs in os.walk(tmp_path / "prof" / "profile") for f in fs
                      if f.endswith(".pt.trace.json"))

    # batch 2, 4 frames: what is checked is which runs write a trace, not what it holds
    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path / "prof", model="mocogan", iters=6, profile=True,
                   batch_size=2, frames=4, rollout_frames=4)
    train(cfg)
    first = traces()
    assert len(first) == 1, first
    last = str(tmp_path / "prof" / "checkpoints" / "last.pt")
    train(cfg, resume=last, given={"iters": 12})  # as `train.py --resume RUN --iters 12`
    assert traces() == first and load_checkpoint(last)["config"]["profile"] is False
    train(cfg, resume=last, given={"iters": 18, "profile": True})
    assert len(traces()) == 2


@pytest.mark.parametrize("rollout", [0, 6, 11])
def test_generated_videos_are_random_windows_of_the_rollout(tiny_pendulum_h5, tmp_path, rollout):
    # Real videos are --frames windows of longer trajectories; a generated one is a --frames
    # window of a --rollout-frames rollout, only the window rendered, L_cyc over the whole.
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, rollout_frames=rollout))
    calls, real_g = [], tr.G_ddp

    def recorder(n, frames, **kw):
        videos, mot = real_g(n, frames, **kw)
        calls.append((n, frames, kw.get("window"), videos.shape, mot))
        return videos, mot

    tr.G_ddp = recorder
    real = torch.rand(4, 6, 3, 32, 32) * 2 - 1
    tr.step(real)
    [(n, frames, window, shape, mot)] = calls
    assert n == 4 and shape[:2] == (4, 6)
    assert frames == max(rollout, 6) and mot["dHdq"].shape[1] == frames - 1
    if rollout <= 6:   # nothing to choose: no window, no draw
        assert window is None
    else:
        starts, length = window
        assert length == 6 and starts.shape == (4,)
        assert ((starts >= 0) & (starts <= rollout - 6)).all()


def test_resume_keeps_the_checkpoints_tensorboard_steps_and_replaces_the_redone_ones(
        tiny_pendulum_h5, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def steps(run):
        acc = EventAccumulator(str(run / "tb"))
        acc.Reload()
        return [e.step for e in acc.Scalars("loss/G")]

    run = tmp_path / "b"
    train(tiny_cfg(tiny_pendulum_h5, run, iters=3, ckpt_every=2, keep_every=2))
    assert steps(run) == [1, 2, 3]
    # Rewound to iteration 2 (last.pt deleted, as the refusal to overwrite it says): step 3
    # is redone, so its first event goes; step 2's stays.
    os.remove(run / "checkpoints" / "last.pt")
    train(tiny_cfg(tiny_pendulum_h5, tmp_path / "ignored", iters=4),
          resume=str(run / "checkpoints" / "iter_0000002.pt"))
    assert steps(run) == [1, 2, 3, 4]


def test_a_multi_rank_checkpoint_resumes_with_noise_of_its_iteration(tiny_pendulum_h5, tmp_path,
                                                                     capsys):
    # A multi-rank checkpoint without every rank's noise state (written before they were
    # kept; or resumed on another number of ranks, or moved between devices) reseeds each
    # rank's noise from (seed, rank, iteration), so that it neither replays the noise of the
    # run's first iterations nor draws the same noise at every resume. With every rank's
    # state, a resume on as many ranks is exact: tests/test_train_ddp_oracles.py.
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, seed=3))
    tr.step(torch.rand(4, 6, 3, 32, 32) * 2 - 1)
    states = {}
    for it in (2, 4):
        ck = {**tr.state_dict(), "iteration": it, "world_size": 2}
        fresh = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, seed=3))
        fresh.load_state_dict(ck)
        states[it] = fresh.noise.get_state()
        want = torch.Generator().manual_seed(3 * 1_000_003 + 7919 * it).get_state()
        assert torch.equal(states[it], want), it
        # and says so: such a resume is not exact
        err = capsys.readouterr().err
        assert "written by 2 rank(s)" in err
        assert f"reseeded from the seed, its rank and iteration {it}" in err
    assert not torch.equal(states[2], states[4])
    assert not torch.equal(states[2], Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, seed=3)
                                              ).noise.get_state())
    # a single process's checkpoint from another device type (a CUDA generator's state is
    # 16 bytes) cannot restore this generator: reseeded so too
    fresh = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, seed=3))
    fresh.load_state_dict({**tr.state_dict(), "iteration": 2,
                           "noise_rng": torch.zeros(16, dtype=torch.uint8)})
    assert torch.equal(fresh.noise.get_state(), states[2])
    assert "written by 1 rank(s), or on another device type" in capsys.readouterr().err


def test_a_new_run_in_a_stopped_attempts_directory_starts_clean(tiny_pendulum_h5, tmp_path,
                                                                capsys):
    # An attempt killed before its first checkpoint leaves events and samples; a new run in
    # that --out (allowed) showed them as its own: every step twice, the attempt's later
    # samples the newest pictures.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "r"
    train(tiny_cfg(tiny_pendulum_h5, run, iters=4, sample_every=3))
    import shutil
    shutil.rmtree(run / "checkpoints")
    # a finished run whose checkpoints are gone keeps its logs and pictures: refused
    with pytest.raises(ValueError, match="holds a finished run .summary.json. whose checkpoints "
                                         "are gone"):
        train(tiny_cfg(tiny_pendulum_h5, run, iters=2))
    os.remove(run / "summary.json")                   # now as if killed before a checkpoint
    assert (run / "samples" / "iter_0000004.png").exists()
    # a branch into it (--resume X --out RUN) clears it as a new run does
    src = tmp_path / "src"
    train(tiny_cfg(tiny_pendulum_h5, src, iters=1))
    capsys.readouterr()
    train(tiny_cfg(tiny_pendulum_h5, run, iters=2), resume=str(src),
          given={"out": str(run), "iters": 2})
    assert "held an attempt that stopped before its first checkpoint" in capsys.readouterr().out
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/G")] == [2]      # the branch's own step only
    shutil.rmtree(run)
    train(tiny_cfg(tiny_pendulum_h5, run, iters=4, sample_every=3))
    shutil.rmtree(run / "checkpoints")
    os.remove(run / "summary.json")
    capsys.readouterr()
    train(tiny_cfg(tiny_pendulum_h5, run, iters=2, sample_every=3))
    assert "held an attempt that stopped before its first checkpoint" in capsys.readouterr().out
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/G")] == [1, 2]
    assert sorted(os.listdir(run / "samples")) == ["iter_0000001.gif", "iter_0000001.png",
                                                   "iter_0000002.gif", "iter_0000002.png"]
    # ... and each sample step is logged once, the last one too (it was written twice when
    # the last iteration fell on --sample-every, as every default run's does)
    assert [e.step for e in acc.Images("samples")] == [1, 2]
    run2 = tmp_path / "r2"
    train(tiny_cfg(tiny_pendulum_h5, run2, iters=3, sample_every=3, ckpt_every=3))
    acc = EventAccumulator(str(run2 / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Images("samples")] == [1, 3]


def test_a_runs_reported_statistics_are_its_last_iterations(tiny_pendulum_h5, tmp_path):
    # Oracle: iteration 2's statistics on their own, from a 1-iteration run resumed for one
    # more (resumes are bit-identical: test_resume_is_bit_identical). A log that kept the
    # first iteration's values (stale statistics, progress line and result) matches the
    # 1-iteration run instead.
    straight = train(tiny_cfg(tiny_pendulum_h5, tmp_path / "a", iters=2))["stats"]
    first = train(tiny_cfg(tiny_pendulum_h5, tmp_path / "b", iters=1))["stats"]
    second = train(tiny_cfg(tiny_pendulum_h5, tmp_path / "b", iters=2),
                   resume=str(tmp_path / "b"))["stats"]
    keys = [k for k in second if not k.startswith("speed/")]
    assert len(keys) >= 8
    assert {k: straight[k] for k in keys} == {k: second[k] for k in keys}
    assert any(first[k] != second[k] for k in keys)


def test_ckpt_every_saves_last_pt_during_the_run_and_summary_names_the_stop(tiny_pendulum_h5,
                                                                            tmp_path):
    # --ckpt-every could stop writing last.pt on its cadence (only the end and --keep-every
    # did), so a crash lost every iteration since the start; and summary.json could drop
    # "stopped", which hgan.experiments records per segment: both went unnoticed.
    out = tmp_path / "run"
    seen = {}

    def probe(trainer):
        last = out / "checkpoints" / "last.pt"
        seen[trainer.iteration] = load_checkpoint(str(last))["iteration"] if last.exists() else None
        if trainer.iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)

    res = train(tiny_cfg(tiny_pendulum_h5, out, iters=9, ckpt_every=2), callback=probe)
    assert seen == {1: None, 2: 2, 3: 2}
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["stopped"], summary["iteration"], res["stopped"]) == ("SIGINT", 3, "SIGINT")
    assert summary["checkpoint"] == str(out / "checkpoints" / "last.pt")
    assert load_checkpoint(str(out))["iteration"] == 3


def _fake_checkpoint(cfg):
    from hgan.train.loop import TRAINING_STATE
    return {"config": cfg.to_dict(), "iteration": 1, **{k: None for k in TRAINING_STATE}}


def test_resume_accepts_a_clip_frames_that_was_capped_at_frames(tmp_path):
    # A run started with --clip-frames 16 --frames 6 stores clip_frames 6: repeating the
    # same command line with --resume could be refused as a change of --clip-frames.
    from hgan.train.run import resume_config
    cfg = RunConfig(model=ModelConfig(clip_frames=6), frames=6, out=str(tmp_path / "run"))
    path = str(tmp_path / "run" / "checkpoints" / "last.pt")
    got = resume_config(_fake_checkpoint(cfg), cfg, path, given={"clip_frames": 16})
    assert got.model.clip_frames == 6
    with pytest.raises(ValueError, match="--clip-frames cannot change on resume"):
        resume_config(_fake_checkpoint(cfg), cfg, path, given={"clip_frames": 5})


def test_a_snapshot_at_its_runs_last_iteration_resumes_in_place(tmp_path):
    # iter_N.pt with last.pt also at N (--keep-every on the --ckpt-every grid) loses nothing
    # when resumed in its own run: refusing it as "behind" went unnoticed.
    from hgan.train.run import _check_not_behind
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"iteration": 4}, ckpts / "last.pt")
    torch.save({"iteration": 4}, ckpts / "iter_0000004.pt")
    torch.save({"iteration": 2}, ckpts / "iter_0000002.pt")
    _check_not_behind(str(ckpts / "iter_0000004.pt"), 4, str(tmp_path / "run"))
    with pytest.raises(ValueError, match="last.pt is at 4"):
        _check_not_behind(str(ckpts / "iter_0000002.pt"), 2, str(tmp_path / "run"))



class _Planted:
    """Runs code when unpickled without weights_only (what a planted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_newer_last_pt_check_reads_it_without_running_code(tmp_path):
    # Resuming iter_N.pt looks at its run's last.pt first: that read, too, is weights_only.
    from hgan.train.run import _check_not_behind
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    marker = tmp_path / "ran"
    torch.save({"iteration": 4, "x": _Planted(str(marker))}, ckpts / "last.pt")
    torch.save({"iteration": 2}, ckpts / "iter_0000002.pt")
    _check_not_behind(str(ckpts / "iter_0000002.pt"), 2, str(tmp_path / "run"))
    assert not marker.exists()


def test_a_checkpoint_torn_while_being_written_leaves_the_previous_one(tiny_pendulum_h5,
                                                                       tmp_path, monkeypatch):
    # The trainer's own checkpoints go through the atomic writer: a write that fails half-way
    # (a full disk, a kill) leaves the last complete checkpoint, and no stray file.
    real_save, calls = torch.save, []

    def torn_second(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            (f if hasattr(f, "write") else open(f, "wb")).write(b"PK\x03\x04torn")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **kw)
    monkeypatch.setattr(torch, "save", torn_second)
    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path / "run", iters=3, ckpt_every=1)
    with pytest.raises(OSError, match="No space left"):
        train(cfg)
    assert load_checkpoint(str(tmp_path / "run"))["iteration"] == 1
    assert os.listdir(tmp_path / "run" / "checkpoints") == ["last.pt"]


def test_samples_are_written_at_their_iterations_by_the_eval_mode_generator_on_fixed_noise(
        tiny_pendulum_h5, tmp_path):
    # After iteration 1, every --sample-every and at the end; each is the generator of that
    # iteration, in eval mode, on the run's fixed noise (seed + 12345): re-rendered from the
    # final checkpoint, the last one is the same image to the byte.
    from hgan.sample import load_generator
    from hgan.train.media import save_png_strip
    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path / "run", iters=7, sample_every=3, seed=3)
    train(cfg)
    names = sorted(os.listdir(tmp_path / "run" / "samples"))
    assert names == [f"iter_{i:07d}.{ext}" for i in (1, 3, 6, 7) for ext in ("gif", "png")]
    g, _ = load_generator(str(tmp_path / "run"))
    assert not g.training
    with torch.no_grad():
        videos = g.sample(cfg.n_samples, cfg.frames,
                          generator=torch.Generator().manual_seed(cfg.seed + 12345))
    save_png_strip(videos, str(tmp_path / "again.png"))
    assert (tmp_path / "again.png").read_bytes() == \
        (tmp_path / "run" / "samples" / "iter_0000007.png").read_bytes()


def test_tensorboard_events_up_to_a_checkpoint_are_flushed_when_it_is_written(
        tiny_pendulum_h5, tmp_path, monkeypatch):
    # A process that dies after a checkpoint (killed, out of memory) is resumed from it, and
    # the resume logs only later iterations: the events up to it must be on disk by then.
    # tensorboard's own file writer happens to write through; with TensorFlow installed its
    # GFile buffers until a flush. A writer that keeps every event pending until flush() (and
    # discards nothing) stands in for that.
    import torch.utils.tensorboard as tb
    durable, seen = [], {}

    class BufferingWriter(tb.SummaryWriter):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.pending = []

        def add_scalar(self, tag, value, step=None, *a, **kw):
            self.pending.append((tag, step))
            return super().add_scalar(tag, value, step, *a, **kw)

        def flush(self):
            durable.extend(self.pending)
            self.pending.clear()
            return super().flush()

        def close(self):
            self.flush()
            return super().close()

    monkeypatch.setattr(tb, "SummaryWriter", BufferingWriter)

    def at(trainer):   # runs after the iteration's checkpoint
        seen[trainer.iteration] = sorted(set(durable))

    train(tiny_cfg(tiny_pendulum_h5, tmp_path / "r", iters=3, ckpt_every=2), callback=at)
    at_ckpt = {}
    for tag, step in seen[2]:
        at_ckpt.setdefault(tag, []).append(step)
    assert {"loss/D_I", "loss/D_V", "loss/G", "loss/L_cyc"} <= set(at_ckpt)
    assert all(steps == [1, 2] for steps in at_ckpt.values()), at_ckpt


def test_resume_takes_its_own_run_directory_however_out_spells_it(tmp_path, monkeypatch):
    # --resume RUN --out RUN is no branch when --out names the run another way (relative,
    # through a link, with a trailing slash): taken for a branch, it is refused as an --out
    # that "already holds a run".
    from hgan.train.run import resume_config
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    path = str(run / "checkpoints" / "last.pt")
    torch.save({"iteration": 1}, path)
    cfg = RunConfig(out=str(run))
    os.symlink(run, tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    for out in ("run", str(tmp_path / "link"), f"{run}/"):
        got = resume_config(_fake_checkpoint(cfg), cfg, path, given={"out": out, "iters": 5})
        assert (got.out, got.iters) == (str(run), 5), out


def test_an_out_under_a_broken_link_is_named_so(tmp_path):
    from hgan.train.run import _check_writable
    os.symlink(tmp_path / "gone", tmp_path / "link")
    with pytest.raises(ValueError, match=f"{tmp_path / 'link'} is a broken symbolic link, so "
                                         "the run directory cannot be made"):
        _check_writable(str(tmp_path / "link" / "run"))


def test_a_checkpoints_folder_without_a_checkpoint_holds_no_run(tmp_path):
    # A process killed while it wrote its first checkpoint leaves only the temporary file:
    # nothing there resumes, so a new run may start in it; one .pt file is a run.
    from hgan.train.run import _check_new_run_dir
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.pt.tmp4242").write_bytes(b"torn")
    _check_new_run_dir(str(tmp_path / "run"))
    (ckpts / "iter_0000002.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="already holds a run"):
        _check_new_run_dir(str(tmp_path / "run"))


def test_a_new_run_clears_only_the_files_a_stopped_attempt_wrote(tmp_path):
    from hgan.train.run import _clear_stopped_attempt
    out = tmp_path / "run"
    written = ["tb/events.out.tfevents.1.host", "samples/iter_0000001.png",
               "samples/iter_0000001.gif"]
    others = ["samples/best.png", "samples/iter_notes.txt", "tb/notes.txt"]
    for rel in written + others:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")
    _clear_stopped_attempt(str(out))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == others


def test_a_checkpoint_is_inside_a_run_directory_by_whole_names_and_through_links(tmp_path):
    # A branch from run2 into run (a stopped attempt's directory) must clear run's leftovers:
    # run2's checkpoint is not inside run, though its path starts with run's.
    from hgan.train.run import _inside
    for name in ("run", "run2"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
    os.symlink(tmp_path / "run", tmp_path / "link")
    assert _inside(str(tmp_path / "run" / "checkpoints" / "last.pt"), str(tmp_path / "run"))
    assert _inside(str(tmp_path / "link" / "checkpoints" / "last.pt"), str(tmp_path / "run"))
    assert not _inside(str(tmp_path / "run2" / "checkpoints" / "last.pt"), str(tmp_path / "run"))


def test_a_checkpoint_at_the_last_iteration_is_written_once(tiny_pendulum_h5, tmp_path,
                                                            monkeypatch):
    saves, save = [], Trainer.save

    def counted(self, name="last.pt"):
        saves.append((self.iteration, name))
        return save(self, name)
    monkeypatch.setattr(Trainer, "save", counted)
    train(tiny_cfg(tiny_pendulum_h5, tmp_path / "r", iters=2, ckpt_every=2))
    assert saves == [(2, "last.pt")]


def test_keep_every_snapshots_its_iterations_the_last_one_included(tiny_pendulum_h5, tmp_path):
    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path / "run", iters=4, keep_every=2)
    train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["iter_0000002.pt", "iter_0000004.pt", "last.pt"]
    assert [load_checkpoint(str(ckpts / n))["iteration"] for n in
            ("iter_0000002.pt", "iter_0000004.pt", "last.pt")] == [2, 4, 4]


def test_a_resumed_runs_event_file_is_made_after_the_second_of_the_last_one(tmp_path):
    # TensorBoard orders a run's event files by name, which starts with the second they were
    # made in: a resumed run's file from that same second could sort first ("...10" before
    # "...9"), and its purge of the redone steps then came before the events it removes (seen
    # in the suite: steps [3, 4, 1, 2, 3] after a resume at 2). Its writer waits the second out.
    from types import SimpleNamespace

    from hgan.train.run import _wait_past_event_files
    now = [1000.2]
    clock = SimpleNamespace(time=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    tb = tmp_path / "tb"
    _wait_past_event_files(str(tb), clock)              # no folder yet: no wait
    assert now[0] == 1000.2
    tb.mkdir()
    (tb / "events.out.tfevents.999.host.7.9").write_text("")
    _wait_past_event_files(str(tb), clock)              # an earlier second: no wait
    assert now[0] == 1000.2
    (tb / "events.out.tfevents.1000.host.7.9").write_text("")
    _wait_past_event_files(str(tb), clock)
    assert 1001 <= now[0] < 1001.1                       # into the next second, no further
    (tb / "events.out.tfevents.99999.host.7.9").write_text("")    # a clock far ahead: no wait
    start = now[0]
    _wait_past_event_files(str(tb), clock)
    assert now[0] == start
