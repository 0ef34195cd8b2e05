"""One training step against what it must do: every network takes an Adam step, R1 reaches
the discriminators, L_cyc the generator after them, and the step's random choices (S_1's
frame, S_T's clip, the rollout window) are uniform draws from the trainer's own generator."""
import contextlib
from dataclasses import replace

import pytest
import torch

from hgan.train.loop import Trainer
from test_train_run import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def _real(seed=0):
    return torch.rand(4, 6, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _params(tr):
    return {f"{name}.{k}": v.detach().clone() for name, net in
            (("G", tr.G), ("D_I", tr.D_I), ("D_V", tr.D_V)) for k, v in net.named_parameters()}


@pytest.mark.parametrize("model", ["hgan", "mocogan"])
def test_one_step_moves_every_trained_parameter_by_adams_first_step(tiny_pendulum_h5, tmp_path,
                                                                    model):
    # Adam's first step is lr * g / (|g| + eps) per element: at most lr, and lr wherever the
    # gradient is not tiny. A skipped optimizer step leaves its network where it was.
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, model, lr=1e-3))
    before = _params(tr)
    tr.step(_real())
    after = _params(tr)
    moved = {k: float((after[k] - before[k]).abs().max()) for k in before}
    still = sorted(k for k, v in moved.items() if v == 0)
    # the Hamiltonian's output bias never reaches the dynamics (only dH/dx does)
    want = ["G.motion_module.hamiltonian.layers.2.bias"] if model == "hgan" else []
    assert still == want, still
    assert max(moved.values()) <= 1e-3 + 1e-6    # and float32 rounding of the weights
    for net in ("G.", "D_I.", "D_V."):
        assert max(v for k, v in moved.items() if k.startswith(net)) > 0.99e-3, net


def test_optimisers_take_the_configured_adam_settings(tiny_pendulum_h5, tmp_path):
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, lr=3e-4, beta1=0.3, beta2=0.95,
                          adam_eps=1e-3))
    for opt, net in ((tr.opt_g, tr.G), (tr.opt_di, tr.D_I), (tr.opt_dv, tr.D_V)):
        group, = opt.param_groups
        assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == \
            (3e-4, (0.3, 0.95), 1e-3, 0)
        assert {id(p) for p in group["params"]} == {id(p) for p in net.parameters()}


def test_r1_reaches_the_discriminators_and_l_cyc_the_generator_after_them(tiny_pendulum_h5,
                                                                         tmp_path):
    def one_step(**kw):
        tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, **kw))
        tr.step(_real())
        return _params(tr)

    def differ(a, b, net):
        return [k for k in a if k.startswith(net) and not torch.equal(a[k], b[k])]

    base = one_step(r1_gamma=0.0, cyc_lambda=0.01)
    r1 = one_step(r1_gamma=10.0, cyc_lambda=0.01)
    cyc = one_step(r1_gamma=0.0, cyc_lambda=1.0)
    # R1 is part of both discriminators' loss
    assert differ(base, r1, "D_I.") and differ(base, r1, "D_V.")
    # L_cyc is the generator's alone, and the discriminators were updated before it counted
    assert differ(base, cyc, "G.")
    assert not differ(base, cyc, "D_I.") and not differ(base, cyc, "D_V.")


@pytest.mark.parametrize("rollout", [6, 12])
def test_the_steps_frames_clips_and_windows_are_uniform_draws(tiny_pendulum_h5, tmp_path,
                                                              rollout):
    # Replayed from a copy of the trainer's generator with the documented draws: a frame of
    # each video for D_I (0..T-1), a clip start for D_V (0..T-clip) and, when the rollout is
    # longer than the video, a window start (0..rollout-T), in that order.
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, rollout_frames=rollout))
    b, t, cf = 4, 6, tr.cfg.model.clip_frames
    seen = {"D_I": [], "D_V": [], "window": []}
    gen_call, di, dv = tr.G_ddp, tr.DI_ddp, tr.DV_ddp
    tr.G_ddp = lambda n, frames, **kw: (seen["window"].append(kw.get("window")),
                                        gen_call(n, frames, **kw))[1]
    tr.DI_ddp = lambda x: (seen["D_I"].append(x.detach().clone()), di(x))[1]
    tr.DV_ddp = lambda x: (seen["D_V"].append(x.detach().clone()), dv(x))[1]
    for step in range(3):
        replay = torch.Generator().set_state(tr.noise.get_state())
        real = _real(step)
        for k in seen:
            seen[k].clear()
        tr.step(real)
        j = torch.randint(0, t, (b,), generator=replay)
        s = torch.randint(0, t - cf + 1, (b,), generator=replay)
        rows = torch.arange(b)
        # the real inputs (each discriminator's second call: fake first, then real)
        assert torch.equal(seen["D_I"][1], real[rows, j])
        assert torch.equal(seen["D_V"][1], real[rows[:, None], s[:, None] + torch.arange(cf)])
        [window] = seen["window"]
        if rollout > t:
            assert torch.equal(window[0], torch.randint(0, rollout - t + 1, (b,), generator=replay))
        else:
            assert window is None


def test_r1_is_the_input_gradient_penalty_of_the_steps_real_frame_and_clip(tiny_pendulum_h5,
                                                                           tmp_path):
    # Oracle: gamma/2 * mean_b ||d D(x)_b / d x_b||^2 summed over D_I on the step's real
    # frames and D_V on its real clips, taken in float64 on copies of the discriminators from
    # before the step (the frame and clip are replayed from the trainer's generator). An R1
    # on the fakes, or on one discriminator only, still moves both discriminators, so only
    # the penalty's value tells them apart.
    import copy
    gamma = 10.0
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, r1_gamma=gamma))
    di, dv = (copy.deepcopy(m).double() for m in (tr.D_I, tr.D_V))
    replay = torch.Generator().set_state(tr.noise.get_state())
    real = _real()
    stats = tr.step(real, want_stats=True)
    b, t, cf = 4, 6, tr.cfg.model.clip_frames
    j = torch.randint(0, t, (b,), generator=replay)
    s = torch.randint(0, t - cf + 1, (b,), generator=replay)
    rows = torch.arange(b)

    def penalty(disc, x):
        x = x.double().requires_grad_(True)
        (g,) = torch.autograd.grad(disc(x).sum(), x)
        return 0.5 * gamma * float(g.pow(2).flatten(1).sum(1).mean())

    want = (penalty(di, real[rows, j])
            + penalty(dv, real[rows[:, None], s[:, None] + torch.arange(cf)]))
    assert want > 1e-6
    assert float(stats["loss/R1"]) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("gamma", [0.0, 10.0])
def test_the_discriminators_gradients_are_bce_plus_r1_in_float64(tiny_pendulum_h5, tmp_path,
                                                                  gamma):
    # Oracle: on float64 copies of D_I and D_V from before the step, and on the inputs each
    # met in the step (fake first, then real), the gradient of BCE(D(real), 1) + BCE(D(fake),
    # 0) + gamma/2 mean ||grad_x D(real)||^2. Adam's first step is ~lr sign(g) whatever g's
    # size, so only the gradients show a real term that does not reach D (its logits
    # detached) or an R1 counted at another weight.
    import copy
    import torch.nn.functional as F
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, r1_gamma=gamma))
    copies = {"D_I": copy.deepcopy(tr.D_I).double(), "D_V": copy.deepcopy(tr.D_V).double()}
    seen = {"D_I": [], "D_V": []}
    di, dv = tr.DI_ddp, tr.DV_ddp
    tr.DI_ddp = lambda x: (seen["D_I"].append(x.detach().clone()), di(x))[1]
    tr.DV_ddp = lambda x: (seen["D_V"].append(x.detach().clone()), dv(x))[1]
    tr.step(_real())
    for name, net in (("D_I", tr.D_I), ("D_V", tr.D_V)):
        fake, real = (x.double() for x in seen[name])
        disc = copies[name]
        x = real.requires_grad_(True)
        real_logits, fake_logits = disc(x), disc(fake)
        loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        if gamma:
            (g,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
            loss = loss + 0.5 * gamma * g.pow(2).flatten(1).sum(1).mean()
        want = torch.autograd.grad(loss, list(disc.parameters()))
        for (k, p), w in zip(net.named_parameters(), want):
            torch.testing.assert_close(p.grad.double(), w, rtol=1e-3, atol=1e-6 * float(
                w.abs().max()), msg=lambda m: f"{name}.{k}: {m}")


def _scaled(monkeypatch):
    """Trainers built from here on run with a GradScaler (fp16 AMP's), on this CPU."""
    import hgan.train.loop
    monkeypatch.setattr(hgan.train.loop, "amp_policy", lambda *a, **k: (None, True))


def test_gradient_norms_are_logged_unscaled_under_a_grad_scaler(tiny_pendulum_h5, tmp_path,
                                                                 monkeypatch):
    # The scaler multiplies every gradient by 2^16 before step() unscales it; the logged
    # norms read 65536 times the plain run's. Scaled by a power of two and unscaled
    # exactly, the step itself is the plain one to the bit.
    plain = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "a"))
    want = plain.step(_real(), want_stats=True)
    _scaled(monkeypatch)
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path / "b"))
    assert tr.scaler.is_enabled() and tr.scaler.get_scale() == 2.0 ** 16
    got = tr.step(_real(), want_stats=True)
    for k in ("grad_norm/D_I", "grad_norm/D_V", "grad_norm/G"):
        assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-6), k
    after, plain_after = _params(tr), _params(plain)
    assert all(torch.equal(after[k], plain_after[k]) for k in after)


def test_a_step_with_inf_gradients_is_skipped_by_the_scaler_and_the_scale_backs_off(
        tiny_pendulum_h5, tmp_path, monkeypatch):
    # fp16's overflow: D_V's gradient not finite. The scaler skips D_V's optimiser step (its
    # weights stay bit-equal, no NaN written), the others step, and the scale halves.
    _scaled(monkeypatch)
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path))
    weight = next(tr.D_V.parameters())
    weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    before = _params(tr)
    tr.step(_real())
    after = _params(tr)
    for net, stepped in (("D_V.", False), ("D_I.", True), ("G.", True)):
        moved = [k for k in before if k.startswith(net) and not torch.equal(before[k], after[k])]
        assert bool(moved) == stepped, (net, moved)
    assert tr.scaler.get_scale() == 2.0 ** 15


def test_loading_a_checkpoint_restores_the_global_rngs_where_it_was_taken(tiny_pendulum_h5,
                                                                           tmp_path):
    # Oracle: the draws the process would have made next when the state was taken. A fresh
    # Trainer reseeds the global RNGs from the seed, so without the restore its draws are
    # the seed's, not the checkpoint's (the restore functions alone are tested elsewhere).
    import random

    import numpy as np
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path))
    torch.rand(3), random.random(), np.random.rand()   # the run moved on from the seed
    ckpt = tr.state_dict()
    want = (torch.rand(3), random.random(), np.random.rand())
    fresh = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path))
    fresh.load_state_dict(ckpt)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], want[0]) and got[1:] == want[1:]


def test_a_non_finite_r1_penalty_stops_the_step_before_it_reaches_the_weights(tiny_pendulum_h5,
                                                                              tmp_path):
    # gamma = inf: both BCE terms stay finite and only the penalty is inf. A check of the BCE
    # terms alone would let an exploding R1 write NaN into the discriminators (and so into
    # the next checkpoint) with no word.
    from hgan.train.loop import NonFiniteLoss
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, r1_gamma=float("inf")))
    before = _params(tr)
    with pytest.raises(NonFiniteLoss, match=r"non-finite discriminator loss \(inf\) at iteration 1"):
        tr.step(_real())
    after = _params(tr)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_l_cyc_is_lambda_over_b_times_dh_dq_summed_over_the_whole_rollout(tiny_pendulum_h5,
                                                                          tmp_path):
    # Oracle: lambda / B * sum over the rollout's frames t < T-1 and coordinates i of
    # |dH/dq_i(q_t, p_t)|, dH/dq by float64 autograd of a copy of H from before the step at
    # the states the step's motion module rolled out: all 8 rollout frames, not only the 6
    # rendered. A loss on another tensor of the motion (p, say), or with the default lambda,
    # still reaches the generator, so only its value tells them apart. The float32 loss is
    # 5e-8 off here; dH/dq summed one frame late is 7e-6 off (the motion is slow at init).
    import copy
    lam = 0.5
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, cyc_lambda=lam))
    H = copy.deepcopy(tr.G.motion_module.hamiltonian).double()
    seen = []
    tr.G.motion_module.register_forward_hook(
        lambda m, i, out: seen.append({k: v.detach() for k, v in out.items()}))
    stats = tr.step(_real())
    (mot,) = seen
    q, p = mot["q"].double(), mot["p"].double()
    b, frames, k = q.shape
    assert frames == 8
    qt = q[:, :-1].reshape(-1, k).requires_grad_(True)
    (g,) = torch.autograd.grad(H(qt, p[:, :-1].reshape(-1, k)).sum(), qt)
    want = lam / b * float(g.abs().sum())
    assert want > 1e-3
    assert float(stats["loss/L_cyc"]) == pytest.approx(want, rel=2e-6)


def test_a_checkpoint_keeps_the_loader_position_apart_from_the_iteration(tiny_pendulum_h5,
                                                                        tmp_path):
    # The stream resumes at loader_position (hgan.train.run), which need not equal the
    # iteration: both go into the state and come back from it as they were.
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, model="mocogan"))
    tr.iteration, tr.loader_position = 3, 11
    state = tr.state_dict()
    assert (state["iteration"], state["loader_position"]) == (3, 11)
    tr.iteration, tr.loader_position = 0, 0
    tr.load_state_dict({**state, "iteration": 5, "loader_position": 17})
    assert (tr.iteration, tr.loader_position) == (5, 17)


def test_videos_of_exactly_clip_frames_train_and_shorter_ones_are_named(tiny_pendulum_h5,
                                                                       tmp_path):
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, model="mocogan", rollout_frames=0))
    cf = tr.cfg.model.clip_frames
    tr.check_batch(torch.zeros(4, cf, 3, 32, 32))
    with pytest.raises(ValueError, match=f"videos have {cf - 1} frames, fewer than "
                                         f"clip_frames={cf}"):
        tr.check_batch(torch.zeros(4, cf - 1, 3, 32, 32))
    # and a step checks its batch so (not torch's error from an empty range of clip starts)
    with pytest.raises(ValueError, match=f"videos have {cf - 1} frames, fewer than "
                                         f"clip_frames={cf}"):
        tr.step(torch.zeros(4, cf - 1, 3, 32, 32))


def test_mocogan_keeps_statistics_for_every_frame_a_step_rolls_out(tiny_pendulum_h5, tmp_path):
    # --frames 6 above --rollout-frames 4 and --clip-frames 4: a step rolls out 6 frames, and
    # each gets its own running-statistics row, updated once from fresh by its own frame's
    # batch (0.1 x the mean of the GRU outputs). With 4 rows frames 3-5 all updated row 3.
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, "mocogan", rollout_frames=4, frames=6))
    mm = tr.G.motion_module
    raw, normalise = [], mm._normalise_frames   # each frame's raw GRU outputs, as normalised
    mm._normalise_frames = lambda y: (raw.extend(y.detach().unbind(1)), normalise(y))[1]
    tr.step(_real())
    assert len(raw) == 6 and mm.frame_mean.shape[0] == 6
    for t in range(6):
        torch.testing.assert_close(mm.frame_mean[t], 0.1 * raw[t].mean(0))


def test_a_checkpoint_with_fewer_statistics_rows_gets_rows_for_every_frame_again(
        tiny_pendulum_h5, tmp_path):
    # A mocogan checkpoint from before the trainer reserved a row per rolled-out frame has a
    # row per rollout frame only (4 here, --frames 6): loaded, its rows come back as they were
    # and frames 4 and 5 get fresh ones (mean 0, variance 1, a new BatchNorm's), not row 3.
    cfg = tiny_cfg(tiny_pendulum_h5, tmp_path, "mocogan", rollout_frames=4, frames=6)
    tr = Trainer(cfg)
    tr.step(_real())
    ckpt = tr.state_dict()
    gen = dict(ckpt["generator"])
    old = {k: gen[f"motion_module.{k}"][:4].clone() for k in ("frame_mean", "frame_var")}
    gen.update({f"motion_module.{k}": v for k, v in old.items()})
    fresh = Trainer(cfg)
    fresh.load_state_dict({**ckpt, "generator": gen})
    mm = fresh.G.motion_module
    assert mm.frame_mean.shape[0] == mm.frame_var.shape[0] == 6
    assert torch.equal(mm.frame_mean[:4], old["frame_mean"])
    assert torch.equal(mm.frame_var[:4], old["frame_var"])
    assert torch.equal(mm.frame_mean[4:], torch.zeros_like(mm.frame_mean[4:]))
    assert torch.equal(mm.frame_var[4:], torch.ones_like(mm.frame_var[4:]))


def test_the_generator_update_leaves_the_discriminators_out_of_its_backward(tiny_pendulum_h5,
                                                                          tmp_path):
    # D is frozen for the G update: each discriminator weight gets one gradient per step
    # (the D update's; r1_gamma 0, so no double backward), and is trainable again after it.
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, r1_gamma=0.0))
    grads = {}
    for net in (tr.D_I, tr.D_V):
        for name, p in net.named_parameters():
            p.register_hook(lambda g, key=(id(net), name): grads.update(
                {key: grads.get(key, 0) + 1}))
    for step in range(2):
        tr.step(_real(step))
        n = sum(1 for net in (tr.D_I, tr.D_V) for _ in net.parameters())
        assert len(grads) == n and set(grads.values()) == {step + 1}, grads
        assert all(p.requires_grad for net in (tr.D_I, tr.D_V) for p in net.parameters())


class _Recorder(torch.nn.Module):
    """A discriminator stand-in that keeps its inputs (one logit per sample)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return x.float().flatten(1).mean(1) * self.w


@pytest.mark.parametrize("fake_dtype", [torch.float32, torch.bfloat16])
def test_without_r1_the_real_batch_reaches_d_in_the_fakes_dtype_and_layout(tiny_pendulum_h5,
                                                                           tmp_path, fake_dtype):
    # The reals come from the loader as a permuted view (B, T, H, W, C memory), the fakes
    # contiguous (bf16 under autocast): without R1 the real batch is handed over as a copy
    # in the fakes' dtype and strides (one compiled input signature, tests/test_compile.py),
    # holding the same values; with R1 it goes in as it came, in fp32.
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, r1_gamma=0.0))
    real = (torch.rand(4, 32, 32, 3) * 2 - 1).permute(0, 3, 1, 2)
    fake = torch.rand(4, 3, 32, 32).to(fake_dtype)
    disc = _Recorder()
    *_, r1 = tr._disc_logits(disc, fake, real)
    assert float(r1) == 0.0
    got_fake, got_real = disc.seen
    assert got_fake is fake
    assert got_real.dtype == fake_dtype and got_real.stride() == fake.stride()
    assert torch.equal(got_real, real.to(fake_dtype))
    tr.cfg = replace(tr.cfg, r1_gamma=1.0)
    disc.seen.clear()
    tr._disc_logits(disc, fake, real)
    assert disc.seen[1].dtype == torch.float32 and torch.equal(disc.seen[1], real)


def test_with_channels_last_the_real_frames_reach_d_i_channels_last(tiny_pendulum_h5, tmp_path):
    # --channels-last: D_I gets channels-last real frames (R1 takes them as they are) even
    # from a contiguous batch, as the fakes are.
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, r1_gamma=1.0, channels_last=True))
    di, seen = tr.DI_ddp, []
    tr.DI_ddp = lambda x: (seen.append(x.detach()), di(x))[1]
    tr.step(_real())
    fake_img, real_img = seen
    for x in (fake_img, real_img):
        assert x.is_contiguous(memory_format=torch.channels_last)


def test_a_flush_names_only_the_losses_since_the_previous_flush(tiny_pendulum_h5, tmp_path):
    # With deferred checks (CUDA), losses wait for the next flush; one flush reads them and
    # lets them go: a loss it reported is not reported again by the next one.
    from hgan.train.loop import NonFiniteLoss
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path))
    tr.defer_checks = True
    tr._check("generator loss", torch.tensor(float("nan")))
    tr._check("generator loss", torch.tensor(1.0))
    with pytest.raises(NonFiniteLoss, match=r"^non-finite generator loss \(nan\) at iteration 1$"):
        tr.flush_checks()
    tr.iteration = 1
    tr._check("discriminator loss", torch.tensor(2.0))
    tr.flush_checks()


def test_an_uncompiled_trainer_leaves_dynamos_process_wide_stance_alone(tiny_pendulum_h5,
                                                                        tmp_path, monkeypatch):
    # R1 runs compiled nets under set_stance("force_eager"), whose save and restore are
    # process-wide: two trainers stepping in threads (the DDP oracle test, hgan.train.pack)
    # interleaved them and left the process in force_eager, so that every later
    # torch.compile in it ran nothing compiled. A trainer that compiled nothing has nothing
    # to run eagerly and must not touch the stance.
    import torch.compiler
    calls = []
    monkeypatch.setattr(torch.compiler, "set_stance",
                        lambda *a, **kw: calls.append(a) or contextlib.nullcontext())
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, r1_gamma=1.0))
    metrics = tr.step(_real())
    assert calls == []
    assert float(metrics["loss/R1"]) > 0                     # the R1 path ran
