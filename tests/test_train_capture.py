"""The captured training step (hgan.train.capture) against the eager step.

On CPU: the static-buffer step (the captured step's code, run without capture) against the
eager step, its device-side non-finite record, resume through it, and the fallback rule.
The capture itself needs CUDA: those tests are marked `cuda` and skipped elsewhere."""
import os
import signal
import threading

import pytest
import torch

from hgan.models import ModelConfig
from hgan.train import RunConfig, load_checkpoint, train
from hgan.train import capture as hcapture
from hgan.train.config import config_from_args
from hgan.train.loop import NonFiniteLoss, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

B, T = 4, 6


def small_cfg(**kw):
    mk = {k: kw.pop(k) for k in list(kw) if k in ModelConfig.__dataclass_fields__}
    model = ModelConfig(**{"ngf": 8, "ndf": 8, "clip_frames": 4, "rollout_frames": 9,
                           "integrator": "analytic", **mk})
    return RunConfig(**{"batch_size": B, "frames": T, "progress": False, "model": model, **kw})


def batches(n, seed=1, device="cpu", res=32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(B, T, 3, res, res, generator=g) * 2 - 1).to(device) for _ in range(n)]


def params(trainer):
    return {f"{name}.{k}": v.detach().clone()
            for name, net in (("G", trainer.G), ("D_I", trainer.D_I), ("D_V", trainer.D_V))
            for k, v in net.state_dict().items()}


def run(trainer, data):
    losses = []
    for real in data:
        stats = trainer.step(real)
        losses += [float(stats[k]) for k in sorted(stats) if k.startswith("loss/")]
        trainer.iteration += 1
    return losses


def static_trainer(cfg, device="cpu"):
    t = Trainer(cfg, device=device)
    t.static_mode = "static"
    return t


@pytest.mark.parametrize("model, channels_last", [("hgan", False), ("mocogan", False),
                                                   ("hgan", True)])
def test_static_step_equals_eager_step(model, channels_last):
    cfg = small_cfg(model=model, channels_last=channels_last)
    data = batches(3)
    eager, static = Trainer(cfg, device="cpu"), static_trainer(cfg)
    before = params(eager)
    loss_e, loss_s = run(eager, data), run(static, data)
    pe, ps = params(eager), params(static)
    for k in pe:
        torch.testing.assert_close(ps[k], pe[k], rtol=1e-5, atol=1e-6, msg=k)
    assert loss_s == pytest.approx(loss_e, rel=1e-5)
    # The comparison can fail: three steps move the weights well past the tolerance.
    assert max(float((pe[k] - before[k]).abs().max()) for k in pe
               if pe[k].is_floating_point()) > 1e-4


def test_static_step_reads_each_new_batch():
    # A stale static buffer would train on the first batch forever.
    cfg = small_cfg()
    a, b = static_trainer(cfg), static_trainer(cfg)
    data = batches(2)
    run(a, data)
    run(b, [data[0], data[0]])
    assert any(not torch.equal(v, params(b)[k]) for k, v in params(a).items())


def test_static_step_rejects_a_batch_of_another_shape():
    t = static_trainer(small_cfg())
    t.step(batches(1)[0])
    with pytest.raises(ValueError, match="batches of one shape"):
        t.step(torch.zeros(B + 1, T, 3, 32, 32))


def test_static_step_resumes_exactly():
    cfg = small_cfg()
    data = batches(4)
    straight = static_trainer(cfg)
    run(straight, data)
    first = static_trainer(cfg)
    run(first, data[:2])
    state = first.state_dict()
    resumed = static_trainer(cfg)
    resumed.load_state_dict(state)
    run(resumed, data[2:])
    for k, v in params(straight).items():
        assert torch.equal(params(resumed)[k], v), k


def test_static_step_records_the_first_non_finite_loss_on_the_device():
    t = static_trainer(small_cfg())
    data = batches(4)
    data[1] = data[1].clone().fill_(float("nan"))  # iteration 2's discriminator sees NaN
    run(t, data[:1])
    t.flush_checks()                                # iteration 1 was finite: no error
    run(t, data[1:])                                # 2 is bad, 3 and 4 run on unchecked
    with pytest.raises(NonFiniteLoss, match=r"non-finite discriminator loss \(nan\) at iteration 2$"):
        t.flush_checks()


def test_static_step_records_which_loss_and_its_value_as_the_eager_step_says_it():
    # cyc_lambda = inf: iteration 1's discriminator loss is finite, its generator loss is
    # inf; every later loss is nan (the inf gradient poisons G). The eager step on CPU raises
    # at once; the static step must name the same iteration, loss and value at its flush.
    cfg = small_cfg(cyc_lambda=float("inf"))
    data = batches(3)
    with pytest.raises(NonFiniteLoss) as eager:
        run(Trainer(cfg, device="cpu"), data)
    assert str(eager.value) == "non-finite generator loss (inf) at iteration 1"
    t = static_trainer(cfg)
    run(t, data)                                  # nothing raised before the flush
    with pytest.raises(NonFiniteLoss) as static:
        t.flush_checks()
    assert str(static.value) == str(eager.value)


def test_static_step_counts_iterations_from_a_resumed_or_reloaded_state():
    # The device-side record numbers iterations from the trainer's own count: after a resume
    # at iteration 2 a bad iteration 3 is named 3, also when the trainer had already stepped
    # (and built its static step) before loading.
    cfg = small_cfg()
    data = batches(3)
    first = static_trainer(cfg)
    run(first, data[:1])
    at1 = first.state_dict()
    run(first, data[1:2])
    at2 = first.state_dict()
    nan = data[2].clone().fill_(float("nan"))
    resumed = static_trainer(cfg)
    resumed.load_state_dict(at2)
    run(resumed, [nan])
    with pytest.raises(NonFiniteLoss, match=r"discriminator loss \(nan\) at iteration 3$"):
        resumed.flush_checks()
    # `first` is at iteration 2 with a static step of its own; loading iteration 1 rewinds it
    first.load_state_dict(at1)
    run(first, [nan])
    with pytest.raises(NonFiniteLoss, match=r"discriminator loss \(nan\) at iteration 2$"):
        first.flush_checks()


def test_static_step_checks_the_clip_length_of_its_first_batch():
    t = static_trainer(small_cfg())
    with pytest.raises(ValueError, match="fewer than clip_frames=4"):
        t.step(torch.zeros(B, 3, 3, 32, 32))


def test_static_step_keeps_the_noise_generators_state_in_checkpoints(tmp_path):
    # The noise generator advances exactly as the eager step's does: the checkpointed state
    # after N static steps is the eager one's, so either step resumes the other. (The
    # loader's position is the run's, not the step's: test_loader.py's start_batch tests.)
    cfg = small_cfg()
    data = batches(2)
    eager, static = Trainer(cfg, device="cpu"), static_trainer(cfg)
    run(eager, data)
    run(static, data)
    assert torch.equal(eager.state_dict()["noise_rng"], static.state_dict()["noise_rng"])
    assert not torch.equal(eager.state_dict()["noise_rng"],
                           Trainer(cfg, device="cpu").state_dict()["noise_rng"])


# --------------------------------------------- both steps against a hand-written reference
def reference_steps(trainer, data):
    """The documented iteration written out by hand, on copies of a fresh trainer's nets and
    noise: S_1 / S_T / window draws, one G forward, D_I and D_V each on the detached fake then
    the real input, gradients by autograd.grad (so nothing accumulates between iterations),
    one Adam step per net; then G against the updated discriminators with L_cyc. Returns the
    nets' states (keyed as `params`) and each iteration's statistics, computed from the logits
    and gradients themselves."""
    import copy

    import torch.nn.functional as F
    cfg, mcfg = trainer.cfg, trainer.cfg.model
    G, DI, DV = (copy.deepcopy(m) for m in (trainer.G, trainer.D_I, trainer.D_V))
    gen = torch.Generator().set_state(trainer.noise.get_state())
    adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    opts = [torch.optim.Adam(m.parameters(), **adam) for m in (G, DI, DV)]

    def bce(logits, target):
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))

    def acc(real_logits, fake_logits):
        return float(((real_logits > 0).sum() + (fake_logits < 0).sum()) / (2 * len(real_logits)))

    def apply(opt, params, grads):
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.detach().clone()
        opt.step()

    def norm(grads):
        return float(torch.cat([g.double().flatten() for g in grads if g is not None]).norm())

    stats = []
    for real in data:
        b, t = real.shape[:2]
        cf, rollout = mcfg.clip_frames, max(mcfg.rollout_frames, t)
        j = torch.randint(0, t, (b,), generator=gen)
        s = torch.randint(0, t - cf + 1, (b,), generator=gen)
        window = ((torch.randint(0, rollout - t + 1, (b,), generator=gen), t)
                  if rollout > t else None)
        fake, mot = G(b, rollout, generator=gen, window=window)
        rows, clip = torch.arange(b), s[:, None] + torch.arange(cf)
        fake_img, fake_clip = fake[rows, j], fake[rows[:, None], clip]
        real_img, real_clip = real[rows, j], real[rows[:, None], clip]
        if mcfg.channels_last:
            real_img = real_img.contiguous(memory_format=torch.channels_last)
        st = {}
        d_params = {}
        for name, D, opt, f, r in (("D_I", DI, opts[1], fake_img, real_img),
                                   ("D_V", DV, opts[2], fake_clip, real_clip)):
            lf, lr = D(f.detach()), D(r)
            loss = bce(lr, 1.0) + bce(lf, 0.0)
            params = list(D.parameters())
            d_params[name] = (opt, params, torch.autograd.grad(loss, params))
            st[f"loss/{name}"], st[f"acc/{name}"] = float(loss.detach()), acc(lr, lf)
            st[f"grad_norm/{name}"] = norm(d_params[name][2])
        for opt, params, grads in d_params.values():
            apply(opt, params, grads)
        adv = bce(DI(fake_img), 1.0) + bce(DV(fake_clip), 1.0)
        cyc = (cfg.cyc_lambda / b * mot["dHdq"].abs().sum() if mcfg.model == "hgan"
               else torch.zeros(()))
        params = list(G.parameters())
        grads = torch.autograd.grad(adv + cyc, params, allow_unused=True)
        apply(opts[0], params, grads)
        st.update({"loss/G": float(adv.detach()), "loss/L_cyc": float(cyc.detach()), "loss/R1": 0.0,
                   "grad_norm/G": norm(grads)})
        stats.append(st)
    nets = {"G": G, "D_I": DI, "D_V": DV}
    return {f"{n}.{k}": v.detach().clone() for n, m in nets.items()
            for k, v in m.state_dict().items()}, stats


@pytest.mark.parametrize("mode, model", [("eager", "hgan"), ("static", "hgan"),
                                         ("static", "mocogan")])
def test_steps_equal_a_hand_written_reference(mode, model):
    # An independent oracle: a mistake shared by both steps (a missing zero_grad, an
    # optimiser stepping twice, a loss term lost, a statistic read from the wrong tensor)
    # keeps the static step equal to the eager one, but not to this.
    cfg = small_cfg(model=model, lr=1e-3)
    data = batches(3)
    t = Trainer(cfg, device="cpu") if mode == "eager" else static_trainer(cfg)
    want, want_stats = reference_steps(t, data)
    before = params(t)
    for real, ref in zip(data, want_stats):
        stats = t.step(real, want_stats=True)
        t.iteration += 1
        assert sorted(stats) == sorted(ref)
        for k, v in ref.items():
            assert float(stats[k]) == pytest.approx(v, rel=1e-5, abs=1e-7), k
    got = params(t)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    # three steps at lr 1e-3 move the weights far past the tolerance
    assert max(float((want[k] - before[k]).abs().max()) for k in want
               if want[k].is_floating_point()) > 1e-3


CUDA = torch.device("cuda")


@pytest.fixture
def graph_api(monkeypatch):
    # A CPU build of torch has a stub CUDAGraph without the generator API: stand one in, so
    # the rule is tested on the configuration alone.
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        monkeypatch.setattr(torch.cuda, "CUDAGraph",
                            type("Graph", (), {"register_generator_state": None}))


@pytest.mark.parametrize("change, reason", [
    (dict(cuda_graph=False), "--no-cuda-graph"),
    (dict(r1_gamma=1.0), "--r1-gamma > 0"),
    (dict(profile=True), "--profile"),
])
def test_fallback_rule_names_the_reason(graph_api, change, reason):
    assert hcapture.fallback_reason(small_cfg(), CUDA) is None   # the rule can say yes
    assert hcapture.fallback_reason(small_cfg(**change), CUDA).startswith(reason)


def test_fallback_rule_device_ddp_scaler_and_old_torch(graph_api, monkeypatch):
    cfg = small_cfg()
    assert "CUDA device (running on cpu)" in hcapture.fallback_reason(cfg, "cpu")
    assert hcapture.fallback_reason(cfg, CUDA, distributed=True).startswith("DDP")
    assert hcapture.fallback_reason(cfg, CUDA, grad_scaler=True).startswith("fp16 autocast")
    assert hcapture.fallback_reason(small_cfg(compile=True, amp=True, channels_last=True),
                                    CUDA) is None
    monkeypatch.setattr(torch.cuda, "CUDAGraph", type("OldGraph", (), {}))
    assert "register_generator_state" in hcapture.fallback_reason(cfg, CUDA)
    monkeypatch.setattr(torch.cuda, "get_allocator_backend", lambda: "cudaMallocAsync")
    assert hcapture.fallback_reason(cfg, CUDA).startswith(
        "PYTORCH_CUDA_ALLOC_CONF backend:cudaMallocAsync")


@pytest.mark.parametrize("kind, reason", [("ddp", "DDP"), ("fp16", "fp16 autocast")])
def test_the_trainer_hands_the_rule_its_ranks_and_its_grad_scaler(graph_api, monkeypatch, kind,
                                                                 reason):
    # The rule judges the configuration as on CUDA (a CPU's own reason would come first): a
    # trainer under torchrun, or with fp16's GradScaler, must stay eager and say why, not
    # build capturable Adams for graphs that cannot hold DDP's all-reduce or the scaler's check.
    from hgan.train import dist as hdist
    from hgan.train import loop as hloop
    rule = hcapture.fallback_reason
    monkeypatch.setattr(hcapture, "fallback_reason",
                        lambda cfg, device, **kw: rule(cfg, CUDA, **kw))
    assert Trainer(small_cfg(), device="cpu").captured     # the same rule says yes alone
    info = None
    if kind == "ddp":                                      # rank 0 of 2, no process group
        monkeypatch.setattr(hloop, "DistributedDataParallel", lambda module, **kw: module)
        info = hdist.DistInfo(rank=0, world_size=2)
    else:                                                  # fp16 autocast, as on an old GPU
        monkeypatch.setattr(hloop, "amp_policy", lambda *a, **kw: (torch.float16, True))
    t = Trainer(small_cfg(), info, device="cpu")
    assert t.scaler.is_enabled() == (kind == "fp16")
    assert not t.captured and t.static_mode is None, t.graph_fallback
    assert t.graph_fallback.startswith(reason)
    assert not any(g["capturable"] for o in (t.opt_g, t.opt_di, t.opt_dv) for g in o.param_groups)


def test_an_allocator_query_that_raises_reads_as_the_native_allocator(graph_api, monkeypatch):
    # torch.cuda.get_allocator_backend raises AttributeError on a CPU build and RuntimeError
    # where CUDA cannot initialise: neither is cudaMallocAsync, and neither may escape.
    def no_driver():
        raise RuntimeError("Found no NVIDIA driver on your system")
    monkeypatch.setattr(torch.cuda, "get_allocator_backend", no_driver)
    assert hcapture.fallback_reason(small_cfg(), CUDA) is None


def test_cpu_trainer_runs_eager_without_a_word_and_a_cuda_fallback_is_said_once(capsys,
                                                                                monkeypatch):
    monkeypatch.setattr(hcapture, "_reported", threading.local())
    t = Trainer(small_cfg(), device="cpu")
    assert t.static_mode is None and not t.opt_g.param_groups[0]["capturable"]
    assert capsys.readouterr().out == ""  # graphs are a CUDA matter: no line on every CPU run
    hcapture.report_fallback("REASON")
    hcapture.report_fallback("REASON")
    hcapture.report_fallback("REASON", main=False)  # not rank 0: nothing
    assert capsys.readouterr().out == "[hgan] eager training step (no CUDA graphs): REASON\n"
    # Once per run: a packed run (a thread of its own) reports it in its own log too.
    other = threading.Thread(target=hcapture.report_fallback, args=("REASON",))
    other.start()
    other.join()
    assert capsys.readouterr().out.count("eager training step") == 1


def test_a_fallback_reason_is_said_by_the_main_rank_only(capsys, monkeypatch):
    # Under torchrun every rank meets the same reason: the other ranks say nothing, and their
    # silence does not use up the main rank's line.
    monkeypatch.setattr(hcapture, "_reported", threading.local())
    hcapture.report_fallback("DDP: why", main=False)
    assert capsys.readouterr().out == ""
    hcapture.report_fallback("DDP: why", main=True)
    assert capsys.readouterr().out == "[hgan] eager training step (no CUDA graphs): DDP: why\n"


def test_resume_resets_the_optimisers_capturable_flag():
    # A checkpoint from a captured run carries capturable=True; an eager resume must not keep it.
    t = Trainer(small_cfg(), device="cpu")
    run(t, batches(1))
    for opt in (t.opt_g, t.opt_di, t.opt_dv):
        for group in opt.param_groups:
            group["capturable"] = True
    state = t.state_dict()
    assert state["opt_g"]["param_groups"][0]["capturable"]
    u = Trainer(small_cfg(), device="cpu")
    u.load_state_dict(state)
    assert not any(g["capturable"] for o in (u.opt_g, u.opt_di, u.opt_dv) for g in o.param_groups)
    run(u, batches(1))


def test_a_captured_configuration_resumes_an_eager_checkpoint_with_capturable_adams(
        monkeypatch):
    # The other way: a checkpoint of an eager run (capturable=False) resumed where the step is
    # captured. load_state_dict brings back the eager flags; unless they are set again, the
    # graphs would record Adams that count their steps on the host (CPU stands in for a CUDA
    # device whose configuration has no fallback reason).
    eager = Trainer(small_cfg(), device="cpu")
    run(eager, batches(1))
    state = eager.state_dict()
    assert not state["opt_g"]["param_groups"][0]["capturable"]
    monkeypatch.setattr(hcapture, "fallback_reason", lambda *a, **kw: None)
    t = Trainer(small_cfg(), device="cpu")
    assert t.captured
    t.load_state_dict(state)
    fused = True if hcapture.ADAM_FUSED else None
    for opt in (t.opt_g, t.opt_di, t.opt_dv):
        assert all(g["capturable"] and g["fused"] is fused for g in opt.param_groups)
        steps = [st["step"] for st in opt.state.values()]
        assert steps and all(s.dtype == torch.float32 and float(s) == 1.0 for s in steps)


def test_set_capturable_moves_adams_step_counters_to_the_parameters_device():
    # Capturable Adam keeps its step counters on the parameters' device (a replay cannot
    # increment a host number); eager Adam keeps them on the host. "meta" stands in for CUDA.
    def adam(device):
        p = torch.nn.Parameter(torch.zeros(3, device=device))
        opt = torch.optim.Adam([p])
        opt.state[p]["step"] = torch.tensor(7.0, dtype=torch.float64)
        return opt, p

    opt, p = adam("meta")
    hcapture.set_capturable(opt, True, fused=True)
    assert opt.state[p]["step"].device.type == "meta"
    assert opt.state[p]["step"].dtype == torch.float32
    assert opt.param_groups[0]["capturable"] and opt.param_groups[0]["fused"] is True
    opt, p = adam("cpu")
    hcapture.set_capturable(opt, False, None)
    assert opt.state[p]["step"].device.type == "cpu" and float(opt.state[p]["step"]) == 7.0
    assert not opt.param_groups[0]["capturable"] and opt.param_groups[0]["fused"] is None


def test_losses_are_checked_on_the_host_at_once_on_cpu_and_deferred_on_cuda():
    from hgan.train.loop import defers_checks
    assert defers_checks(torch.device("cuda")) and not defers_checks(torch.device("cpu"))


def test_the_static_step_autocasts_without_a_cast_cache():
    # Casts cached during a capture would outlive it (make_graphed_callables asks the same).
    eager, static = Trainer(small_cfg(), device="cpu"), static_trainer(small_cfg())
    assert eager._autocast()._cache_enabled and not static._autocast()._cache_enabled


def test_no_cuda_graph_flag():
    assert config_from_args(["--out", "x"])[0].cuda_graph
    assert not config_from_args(["--out", "x", "--no-cuda-graph"])[0].cuda_graph


# ------------------------------------------------------------- what a GPU allows to compare
# What a GPU allows (an H200, commit caa91ee, batch 4, the analytic integrator): two eager
# runs of one step from the same state differ by 2-4e-4 (norm-wise) in G's gradients and ~1e-4
# in D_V's (cuDNN's algorithms); with cudnn.deterministic they agree bit for bit, but the
# static-buffer step, on its own CUDA stream, still differs from the eager one by up to 3e-3 in
# G's gradients (not in the discriminators'). GAN training amplifies any such difference ~100x
# in six steps (eager against eager: 13% apart in the gradients after seven, parameters up to
# 9e-4 apart, at Adam eps 1e-8 or 1e-3 alike), so parameters after several steps cannot be
# compared at fp32 tolerance on a GPU. These tests compare instead one step from one state
# (losses, each network's gradient, the noise), the captured Adam step against Adam applied by
# hand to the captured gradients (fp32-exact), and for whole runs what must be exact (noise
# stream, iteration, Adam's step counts) and the weights against the distance they moved.
GRAD_SPREAD = 5e-2        # norm-wise, one step from one state: 15x the largest measured
RUN_SPREAD = 0.5          # whole runs: distance apart / distance moved since the common state


@pytest.fixture
def deterministic_cudnn(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


def _grads(trainer, net):
    return torch.cat([p.grad.detach().flatten().double().cpu() for p in
                      getattr(trainer, net).parameters() if p.grad is not None])


def _rel(x, ref):
    return float((x - ref).norm() / ref.norm())


def adam_snapshot(trainer):
    """(param, its group, value, exp_avg, exp_avg_sq, step) of every parameter Adam has
    stepped, in float64 on the CPU: what assert_adam_step checks the next step against."""
    snap = []
    for opt in (trainer.opt_g, trainer.opt_di, trainer.opt_dv):
        group, = opt.param_groups
        assert not (group["amsgrad"] or group["maximize"] or group["weight_decay"])
        for p in group["params"]:
            st = opt.state.get(p, {})
            if "exp_avg" in st:
                snap.append((p, group, p.detach().double().cpu(), st["exp_avg"].double().cpu(),
                             st["exp_avg_sq"].double().cpu(), float(st["step"])))
    return snap


def assert_adam_step(snap):
    """Each parameter moved by Adam's update of the gradient it now holds, in float64."""
    assert snap
    for p, group, p0, m0, v0, t0 in snap:
        g = p.grad.detach().double().cpu()
        (b1, b2), lr, eps, t = group["betas"], group["lr"], group["eps"], t0 + 1
        m, v = b1 * m0 + (1 - b1) * g, b2 * v0 + (1 - b2) * g * g
        want = p0 - lr / (1 - b1 ** t) * m / (v.sqrt() / (1 - b2 ** t) ** 0.5 + eps)
        torch.testing.assert_close(p.detach().double().cpu(), want, rtol=1e-6, atol=1e-7)


def _flat(ckpt, net):
    return torch.cat([v.double().flatten().cpu() for v in ckpt[net].values()
                      if v.is_floating_point()])


def _adam_steps(ckpt):
    return [float(st["step"]) for opt in ("opt_g", "opt_di", "opt_dv")
            for st in ckpt[opt]["state"].values()]


def assert_runs_agree(ckpt, ref, start, msg=""):
    """Two runs from one state (`start`: its weights) that must be the same run: the noise
    stream, iteration and Adam's step counts exact, each network's weights nearer each other
    than RUN_SPREAD of the way they moved (a GPU allows no more: see above)."""
    assert ckpt["iteration"] == ref["iteration"], msg
    assert torch.equal(ckpt["noise_rng"], ref["noise_rng"]), msg
    assert _adam_steps(ckpt) == _adam_steps(ref), msg
    for net in ("generator", "image_disc", "video_disc"):
        moved = (_flat(ref, net) - start[net]).norm()
        assert moved > 0 and (_flat(ckpt, net) - _flat(ref, net)).norm() <= RUN_SPREAD * moved, \
            f"{msg} {net}"


def test_the_adam_oracle_and_the_run_comparison_hold_on_the_cpu(tiny_pendulum_h5, tmp_path):
    # the CUDA tests' yardsticks, checked where the step is bit-exact: the static step's Adam
    # is Adam by hand, and a resumed run agrees with the straight one
    trainer = static_trainer(small_cfg())
    data = batches(3)
    run(trainer, data[:2])
    snap = adam_snapshot(trainer)
    run(trainer, data[2:])
    assert_adam_step(snap)
    with torch.no_grad():                  # one parameter off by one Adam step: caught
        snap[0][0].add_(snap[0][1]["lr"])
    with pytest.raises(AssertionError):
        assert_adam_step(snap)
    n = 3
    straight = train(cuda_run_cfg(tiny_pendulum_h5, tmp_path / "a", device="cpu", iters=2 * n))
    train(cuda_run_cfg(tiny_pendulum_h5, tmp_path / "b", device="cpu", iters=n))
    mid = load_checkpoint(str(tmp_path / "b"))       # before the resumed run writes there
    resumed = train(cuda_run_cfg(tiny_pendulum_h5, tmp_path / "x", device="cpu", iters=2 * n),
                    resume=str(tmp_path / "b"))
    start = {net: _flat(mid, net) for net in ("generator", "image_disc", "video_disc")}
    a, x = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert_runs_agree(x, a, start)
    for net in ("generator", "image_disc", "video_disc"):   # a network left where it was: caught
        with pytest.raises(AssertionError):
            assert_runs_agree(dict(x, **{net: mid[net]}), a, start)


# ------------------------------------------------------------------------------ CUDA only
@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("change", [
    dict(integrator="fused"), dict(integrator="analytic"),
    dict(integrator="fused", model="mocogan"), dict(integrator="fused", channels_last=True),
    dict(integrator="fused", amp=True, amp_dtype="bf16")])
def test_captured_step_equals_eager_step(change, deterministic_cudnn):
    if change.get("amp") and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    import copy
    data = batches(hcapture.WARMUP_STEPS + 3, device="cuda")
    graph = Trainer(small_cfg(**change), device="cuda")
    assert graph.static_mode == "graph" and graph.opt_g.param_groups[0]["capturable"]
    run(graph, data[:-1])                               # warm-up, capture, one replay
    assert graph.static.graphs is not None
    eager = Trainer(small_cfg(cuda_graph=False, **change), device="cuda")
    eager.load_state_dict(copy.deepcopy(graph.state_dict()))  # the same state, its own tensors
    assert eager.static_mode is None
    before = {net: _grads(graph, net) for net in ("G", "D_I", "D_V")}
    snap = adam_snapshot(graph)
    loss_g, loss_e = run(graph, data[-1:]), run(eager, data[-1:])   # a replay; the eager step
    assert_adam_step(snap)              # the captured Adam step is Adam's, to fp32 rounding
    assert loss_g == pytest.approx(loss_e, rel=1e-3, abs=1e-4)
    assert torch.equal(graph.noise.get_state(), eager.noise.get_state())
    # bf16: each product rounds to 8 bits, so two kernel choices differ more (bench/
    # bf16_gradients.py: bf16 gradients are 0.1-0.2x a batch's distance from float64 ones)
    spread = 4 * GRAD_SPREAD if change.get("amp") else GRAD_SPREAD
    for net in ("G", "D_I", "D_V"):
        g, e = _grads(graph, net), _grads(eager, net)
        assert e.norm() > 0 and _rel(g, e) <= spread, (net, _rel(g, e))
        # the replay computed this batch's gradient, not the last step's again
        assert _rel(before[net], e) > 2 * _rel(g, e), (net, _rel(before[net], e), _rel(g, e))


def cuda_run_cfg(h5, out, **kw):
    data_root = os.path.dirname(os.path.dirname(h5))
    base = dict(system="pendulum", data=data_root, device="cuda", out=str(out), log_every=2,
                sample_every=1000, ckpt_every=1000, n_samples=2, num_workers=0,
                loader="torch", gen_frames=40)
    return small_cfg(**{**base, **kw})


@pytest.fixture
def static_runs(monkeypatch):
    """Every Trainer built from here on trains with the static-buffer step (CUDA's step
    without the capture), so the run loop drives it as it drives the graphs."""
    init = Trainer.__init__

    def static_init(self, *a, **kw):
        init(self, *a, **kw)
        self.static_mode = "static"
    monkeypatch.setattr(Trainer, "__init__", static_init)


def test_a_static_step_run_checks_at_the_next_boundary_and_keeps_the_good_checkpoint(
        tiny_pendulum_h5, tmp_path, static_runs):
    # The CPU twin of test_captured_run_defers_the_non_finite_check: iteration 3 is poisoned,
    # nothing is read on the host until iteration 3's log, which stops the run there; the
    # checkpoint of iteration 2 was written before the poison and is kept.
    seen = []

    def poison(trainer):
        assert trainer.static is not None
        seen.append(trainer.iteration)
        if trainer.iteration == 2:
            with torch.no_grad():
                next(trainer.G.image_generator.parameters()).fill_(float("nan"))

    cfg = cuda_run_cfg(tiny_pendulum_h5, tmp_path / "nan", device="cpu", iters=8, ckpt_every=2,
                       log_every=3)
    with pytest.raises(NonFiniteLoss, match=r"discriminator loss \(nan\) at iteration 3; "
                                            r"stopping \(last good checkpoint kept"):
        train(cfg, callback=poison)
    assert seen == [1, 2]
    ck = load_checkpoint(str(tmp_path / "nan"))
    assert ck["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ck["generator"].values() if v.is_floating_point())


@pytest.mark.parametrize("change, poison_at, bad", [
    (dict(cyc_lambda=float("inf")), None, 1),     # iteration 1's generator loss is inf
    (dict(sample_every=3), 2, 3),
])
def test_a_static_step_run_checks_at_its_first_iteration_and_at_each_sample(
        tiny_pendulum_h5, tmp_path, static_runs, change, poison_at, bad):
    # No log or checkpoint boundary until the end: the first iteration and a sample are
    # boundaries too, where the run stops, before the callback and before a picture of
    # non-finite weights.
    seen = []

    def poison(trainer):
        seen.append(trainer.iteration)
        if trainer.iteration == poison_at:
            with torch.no_grad():
                next(trainer.G.image_generator.parameters()).fill_(float("nan"))

    cfg = cuda_run_cfg(tiny_pendulum_h5, tmp_path / "nan", device="cpu", iters=6,
                       log_every=1000, **change)
    with pytest.raises(NonFiniteLoss, match=rf"at iteration {bad}; stopping \(no checkpoint"):
        train(cfg, callback=poison)
    assert seen == list(range(1, bad))


def test_a_static_step_run_stopped_by_a_signal_checks_its_losses_first(tiny_pendulum_h5, tmp_path,
                                                                      static_runs):
    # Iteration 3 is bad and the signal comes after it, before any boundary: the stop names
    # the loss, as any stop of the loop does, and saves nothing.
    def poison_then_stop(trainer):
        if trainer.iteration == 2:
            with torch.no_grad():
                next(trainer.G.image_generator.parameters()).fill_(float("nan"))
        elif trainer.iteration == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = cuda_run_cfg(tiny_pendulum_h5, tmp_path / "sig", device="cpu", iters=8,
                       log_every=1000)
    with pytest.raises(NonFiniteLoss, match=r"at iteration 3; stopping \(no checkpoint was "
                                            r"written yet\)$"):
        train(cfg, callback=poison_then_stop)
    assert not (tmp_path / "sig" / "checkpoints" / "last.pt").exists()


@pytest.mark.cuda
@needs_cuda
def test_packed_captured_runs_equal_lone_runs(data_root, tmp_path, capsys):
    # hgan.train.pack: three runs captured one thread at a time, replayed on their own
    # streams side by side, the fused integrator launched from three threads.
    from hgan.train import cli as train_cli
    from hgan.train import pack
    n = hcapture.WARMUP_STEPS + 4

    def flags(name, model, seed, loader):
        return ["--system", "pendulum", "--model", model, "--seed", str(seed),
                "--data", data_root, "--out", str(tmp_path / name), "--iters", str(n),
                "--device", "cuda", "--batch-size", str(B), "--frames", str(T), "--ngf", "8",
                "--ndf", "8", "--clip-frames", "4", "--rollout-frames", "8", "--log-every", "2",
                "--sample-every", "1000",
                "--ckpt-every", "1000", "--n-samples", "2", "--num-workers", "0",
                "--loader", loader, "--no-progress"]

    runs = [("hgan", 0, "torch"), ("mocogan", 1, "gpu-resident"), ("hgan", 2, "gpu-resident")]
    argv = []
    for model, seed, loader in runs:
        argv += ["--", *flags(f"p{seed}", model, seed, loader)]
    assert pack.main(argv) == 0
    out = capsys.readouterr().out
    for model, seed, loader in runs:
        assert train_cli.main(flags(f"a{seed}", model, seed, loader)) == 0
        a = load_checkpoint(str(tmp_path / f"a{seed}"))
        p = load_checkpoint(str(tmp_path / f"p{seed}"))
        assert a["iteration"] == p["iteration"] == n
        assert p["opt_g"]["param_groups"][0]["capturable"], out  # the step was captured
        init = Trainer(RunConfig.from_dict(a["config"]), device="cuda").state_dict()  # seed's
        start = {net: _flat(init, net) for net in ("generator", "image_disc", "video_disc")}
        assert_runs_agree(p, a, start, f"{model} s{seed}")


@pytest.mark.cuda
@needs_cuda
def test_captured_run_resumes_exactly(tiny_pendulum_h5, tmp_path):
    n = hcapture.WARMUP_STEPS + 3
    straight = train(cuda_run_cfg(tiny_pendulum_h5, tmp_path / "a", iters=2 * n))
    assert straight["trainer"].static.graphs is not None
    train(cuda_run_cfg(tiny_pendulum_h5, tmp_path / "b", iters=n))
    mid = load_checkpoint(str(tmp_path / "b"))       # before the resumed run writes there
    resumed = train(cuda_run_cfg(tiny_pendulum_h5, tmp_path / "x", iters=2 * n),
                    resume=str(tmp_path / "b"))
    start = {net: _flat(mid, net) for net in ("generator", "image_disc", "video_disc")}
    a, x = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert_runs_agree(x, a, start)


@pytest.mark.cuda
@needs_cuda
def test_captured_run_defers_the_non_finite_check(tiny_pendulum_h5, tmp_path):
    bad = hcapture.WARMUP_STEPS + 2      # poisoned after this iteration: a replay sees it

    def poison(trainer):
        if trainer.iteration == bad:
            with torch.no_grad():
                next(trainer.G.image_generator.parameters()).fill_(float("nan"))

    cfg = cuda_run_cfg(tiny_pendulum_h5, tmp_path / "nan", iters=20, ckpt_every=bad,
                       log_every=bad)
    with pytest.raises(NonFiniteLoss, match=f"at iteration {bad + 1}.*last good checkpoint"):
        train(cfg, callback=poison)
    ck = load_checkpoint(str(tmp_path / "nan"))
    assert ck["iteration"] == bad
    assert all(torch.isfinite(v).all() for v in ck["generator"].values() if v.is_floating_point())


@pytest.mark.cuda
@needs_cuda
def test_captured_run_checkpoints_on_a_signal(tiny_pendulum_h5, tmp_path):
    at = hcapture.WARMUP_STEPS + 2

    def send(trainer):
        if trainer.iteration == at:
            os.kill(os.getpid(), signal.SIGTERM)

    res = train(cuda_run_cfg(tiny_pendulum_h5, tmp_path / "sig", iters=50), callback=send)
    assert res["stopped"] == "SIGTERM" and res["iteration"] == at
    assert res["trainer"].static.graphs is not None
    assert load_checkpoint(str(tmp_path / "sig"))["iteration"] == at


@pytest.mark.cuda
@needs_cuda
def test_captured_steady_state_never_waits_for_the_gpu(tiny_pendulum_h5, tmp_path,
                                                       monkeypatch):
    # Between log, sample and checkpoint boundaries a captured run must not synchronise with
    # the GPU (issue #13): the replays, the gpu-resident batches (plan uploads included) and
    # the loop's own bookkeeping. torch's sync debug mode raises on any call that would
    # wait (a .item(), a blocking copy, a boolean-mask index).
    from hgan.data import loader
    # One epoch per plan upload (24 windows, batch 4: 6 batches an epoch), so that an upload
    # falls inside the checked iterations (at the default 64 epochs the first after
    # iteration 1 would come at iteration 385).
    monkeypatch.setattr(loader, "PLAN_EPOCHS_PER_UPLOAD", 1)
    uploads = []
    real_plan = loader.ResidentBatchStream._plan

    def plan(self, epoch):
        before = self._block
        out = real_plan(self, epoch)
        if self._block is not before:
            uploads.append(epoch)
        return out
    monkeypatch.setattr(loader.ResidentBatchStream, "_plan", plan)
    n = hcapture.WARMUP_STEPS + 8
    on, off = hcapture.WARMUP_STEPS + 1, n - 1     # after the capture; before the last boundary
    checked, uploads_checked = [], []

    def watch(trainer):
        if trainer.iteration == on:
            torch.cuda.set_sync_debug_mode("error")
            uploads_checked.append(len(uploads))
        elif trainer.iteration == off:
            torch.cuda.set_sync_debug_mode("default")
            uploads_checked.append(len(uploads))
        elif on < trainer.iteration < off:
            checked.append(trainer.iteration)

    try:
        res = train(cuda_run_cfg(tiny_pendulum_h5, tmp_path / "sync", iters=n, log_every=1000,
                                 loader="gpu-resident"), callback=watch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert res["trainer"].static.graphs is not None and res["iteration"] == n
    assert len(checked) == off - on - 1 > 0
    assert uploads_checked[1] > uploads_checked[0], (uploads, uploads_checked)  # one was checked
