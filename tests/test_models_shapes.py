"""Model-level tests: shapes at every resolution, motion contracts, L_cyc, configuration errors."""
import pytest
import torch
import torch.nn.functional as F

from hgan.kernels import cyclic_loss
from hgan.models import MODELS, ModelConfig, build_models, resolution_plan


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(model="hgan", **kw):
    kw.setdefault("ngf", 4)
    kw.setdefault("ndf", 4)
    kw.setdefault("clip_frames", 4)
    return ModelConfig(model=model, **kw)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("resolution", [32, 64, 96])
def test_shapes_every_model_and_resolution(model, resolution):
    torch.manual_seed(0)
    m = build_models(tiny(model, resolution=resolution))
    videos = m.generator.sample(2, 5, generator=torch.Generator().manual_seed(0))
    assert videos.shape == (2, 5, 3, resolution, resolution)
    assert videos.dtype == torch.float32
    assert videos.abs().max() <= 1.0  # tanh output
    assert m.image_disc(videos[:, 0]).shape == (2,)
    assert m.video_disc(videos[:, :4]).shape == (2,)


def test_channels_last_frames_are_channels_last_and_the_same_values():
    # The layout comes from G_I's weights alone (build_models); the same weights in the default
    # layout must give the same videos, so the format is a layout choice, never a numerics one.
    torch.manual_seed(0)
    plain = build_models(tiny())
    last = build_models(tiny(channels_last=True))
    last.generator.load_state_dict(plain.generator.state_dict())
    z = torch.randn(2, plain.config.content_dim)
    y = torch.randn(2, 3, plain.config.latent_dim - plain.config.content_dim)
    with torch.no_grad():
        a = plain.generator.eval().render(z, y)
        b = last.generator.eval().render(z, y)
    # [n, T, C, H, W] -> the [n*T, C, H, W] frames G_I wrote, as a view (no copy to hide a layout).
    assert b.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    assert not a.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("resolution,expected", [(32, (4, 3)), (64, (4, 4)), (96, (6, 4)),
                                                 (16, (4, 2)), (48, (6, 3))])
def test_resolution_plan(resolution, expected):
    assert resolution_plan(resolution) == expected


@pytest.mark.parametrize("bad", [40, 8, 100, 0])
def test_unsupported_resolution_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="unsupported resolution"):
        ModelConfig(resolution=bad)


@pytest.mark.parametrize("clip", [1, 2, 3, 5, 16, 24])
def test_video_disc_accepts_any_clip_length(clip):
    m = build_models(tiny(clip_frames=clip))
    assert m.video_disc(torch.randn(3, clip, 3, 32, 32)).shape == (3,)
    with pytest.raises(ValueError, match=f"expects \\[N, {clip}"):
        m.video_disc(torch.randn(3, clip + 1, 3, 32, 32))


@pytest.mark.parametrize("clip,times", [(16, [8, 4, 2]), (5, [2, 2, 2]), (3, [3, 3, 3])])
def test_video_disc_convolves_over_time(clip, times):
    # Conv3d's depth axis is time: its input is the clip's frames stacked on dim 2 ([N, C, T,
    # H, W], frame t at [:, :, t], not a reshape that mixes frames and colours), and time is
    # halved (t -> t // 2) only while at least 4 frames remain (the docstring's rule).
    d = build_models(tiny(clip_frames=clip)).video_disc
    x = torch.randn(2, clip, 3, 32, 32)
    seen = []
    for m in d.main:
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_hook(lambda m, i, o: seen.append((i[0], o.shape[2])))
    d(x)
    assert torch.equal(seen[0][0], torch.stack([x[:, t] for t in range(clip)], 2))
    assert [t for _, t in seen] == times


@pytest.mark.parametrize("model", ["hgan", "hnn_gan"])
@pytest.mark.parametrize("hamiltonian", ["general", "separable"])
def test_hnn_motion_contract(model, hamiltonian):
    torch.manual_seed(1)
    g = build_models(tiny(model, hamiltonian=hamiltonian, integrator="reference")).generator
    mot = g.motion(3, 6, generator=torch.Generator().manual_seed(0))
    assert mot["y"].shape == (3, 6, 20) and mot["q"].shape == (3, 6, 10)
    assert mot["p"].shape == (3, 6, 10) and mot["dHdq"].shape == (3, 5, 10)
    assert torch.equal(mot["y"], torch.cat([mot["q"], mot["p"]], -1))
    # dHdq[:, t] is the gradient of the learned H at (q_t, p_t): check it with autograd.
    q = mot["q"][:, :-1].reshape(-1, 10).detach().requires_grad_(True)
    p = mot["p"][:, :-1].reshape(-1, 10).detach()
    (g_q,) = torch.autograd.grad(g.motion_module.hamiltonian(q, p).sum(), q)
    torch.testing.assert_close(mot["dHdq"].reshape(-1, 10), g_q, rtol=1e-5, atol=1e-6)
    # With the same noise, the first state is the map of eps_m (hgan) or eps_m itself (hnn_gan).
    eps = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    y0 = g.motion_module.config_map(eps) if model == "hgan" else eps
    torch.testing.assert_close(mot["y"][:, 0], y0)


@pytest.mark.parametrize("hamiltonian", ["general", "separable"])
def test_hamiltonian_starts_from_xavier_weights(hamiltonian):
    # As the official code initialises its motion module (PyTorch's default is ~sqrt(3) x
    # narrower on these shapes): every weight uniform within the Xavier bound, filling it.
    torch.manual_seed(0)
    h = build_models(tiny("hgan", hamiltonian=hamiltonian)).generator.motion_module.hamiltonian
    linears = [m for m in h.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == (6 if hamiltonian == "separable" else 3)
    for m in linears:
        bound = (6 / sum(m.weight.shape)) ** 0.5
        assert m.weight.abs().max() <= bound
        if m.weight.numel() >= 100:
            assert m.weight.abs().max() > 0.9 * bound


def test_hgan_has_config_map_and_hnn_gan_does_not():
    assert build_models(tiny("hgan")).generator.motion_module.config_map is not None
    assert build_models(tiny("hnn_gan")).generator.motion_module.config_map is None


def test_config_map_is_the_official_two_hidden_layer_relu_mlp():
    # f of the official code: Linear-ReLU-Linear-ReLU-Linear, written out here (a piecewise
    # linear map, as the paper's "piecewise continuous" f).
    torch.manual_seed(0)
    f = build_models(tiny("hgan")).generator.motion_module.config_map
    l1, l2, l3 = [m for m in f if isinstance(m, torch.nn.Linear)]
    eps = torch.randn(64, 20)
    h = (eps @ l1.weight.T + l1.bias).clamp_min(0)
    h = (h @ l2.weight.T + l2.bias).clamp_min(0)
    torch.testing.assert_close(f(eps), h @ l3.weight.T + l3.bias)


def test_motion_runs_the_configured_integrator(monkeypatch):
    # --integrator, --scheme and --fused-precision reach the rollout (on CPU the backends agree
    # to float32 rounding, so only the call itself shows which one ran).
    from hgan.kernels import hamiltonian as hmod
    real, seen = hmod.leapfrog, []

    def spy(*args, backend, scheme, precision, **kw):
        seen.append((backend, scheme, precision))
        return real(*args, backend="analytic", scheme=scheme, precision="ieee", **kw)

    monkeypatch.setattr(hmod, "leapfrog", spy)
    cfg = tiny("hgan", integrator="fused", scheme="official", fused_precision="tf32x3")
    build_models(cfg).generator.motion(2, 3)
    assert seen == [("fused", "official", "tf32x3")]


def test_the_rollout_stays_fp32_under_autocast():
    # Under the trainer's bf16 autocast f runs in bf16, but the rollout takes y0 in fp32 and
    # integrates in fp32: the same trajectory as an fp32 rollout from that y0 outside autocast.
    torch.manual_seed(5)
    g = build_models(tiny("hgan", integrator="analytic")).generator
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mot = g.motion(3, 6, generator=torch.Generator().manual_seed(0))
    assert mot["q"].dtype == mot["p"].dtype == mot["dHdq"].dtype == torch.float32
    want = g.motion_module.hamiltonian.rollout(mot["q"][:, 0], mot["p"][:, 0], 6,
                                               backend="analytic")
    for got, ref in zip((mot["q"], mot["p"], mot["dHdq"]), want):
        torch.testing.assert_close(got, ref)


def test_motion_refuses_an_empty_request():
    # n = 0 would roll out an empty batch silently (hgan), frames = 0 fail inside the GRU with
    # an IndexError (mocogan): one ValueError naming both instead.
    for model in ("hgan", "mocogan"):
        g = build_models(tiny(model)).generator
        for n, frames in ((0, 4), (2, 0)):
            with pytest.raises(ValueError, match="need n >= 1 and frames >= 1"):
                g.motion(n, frames)


def test_each_frame_latent_is_content_then_motion():
    # G_I reads [z_c, y_t] (ModelConfig.latent_dim): with the first layer's motion rows zeroed
    # every frame is the same image, with its content rows zeroed z_c no longer matters.
    torch.manual_seed(4)
    cfg = tiny("hgan")
    g = build_models(cfg).generator.eval()
    first = g.image_generator.main[0].weight       # ConvTranspose2d: [latent, width, base, base]
    with torch.no_grad():
        z, z2, y = g.content(2), g.content(2), g.motion(2, 3)["y"]
        # Eval-mode frames are ~1e-4 and change by ~1e-6 per frame, under assert_close's
        # default atol: the tolerance comes from that change, and every frame is checked (a
        # z_c laid out over frames by repeat() instead of expand() matched in frames 0 and 2).
        moving = g.render(z, y)
        tol = 1e-3 * (moving[:, 1:] - moving[:, :-1]).abs().max().item()
        assert tol > 0
        keep = first.clone()
        first[cfg.content_dim:] = 0
        v = g.render(z, y)
        torch.testing.assert_close(v, v[:, :1].expand_as(v), rtol=0, atol=tol)
        first.copy_(keep)
        first[:cfg.content_dim] = 0
        torch.testing.assert_close(g.render(z, y), g.render(z2, y), rtol=0, atol=tol)
        assert not torch.allclose(g.render(z, y)[:, 0], g.render(z, y)[:, 2])


def _gru_step(cell, x, h):
    """PyTorch's GRUCell written out (gates r, z, n in that order of the stacked weights)."""
    gi = x @ cell.weight_ih.T + cell.bias_ih
    gh = h @ cell.weight_hh.T + cell.bias_hh
    (ir, iz, i_n), (hr, hz, hn) = gi.chunk(3, 1), gh.chunk(3, 1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    return (1 - z) * torch.tanh(i_n + r * hn) + z * h


def _record_raw_frames(mm):
    """Each frame's raw GRU outputs [n, D] (before normalisation), as the module rolls them
    out: the rollout is one node (hgan.models.gru_unroll), so they are read where they are
    normalised."""
    raw, normalise = [], mm._normalise_frames

    def record(y):
        raw.extend(y.detach().unbind(1))
        return normalise(y)
    mm._normalise_frames = record
    return raw


def test_mocogan_motion_is_fresh_noise_gru_and_rejects_dt():
    torch.manual_seed(0)
    g = build_models(tiny("mocogan", gru_input="noise")).generator
    mm = g.motion_module
    mot = g.motion(2, 7, generator=torch.Generator().manual_seed(5))
    assert set(mot) == {"y"} and mot["y"].shape == (2, 7, 20)
    # Oracle: a fresh N(0, I) input every frame, outputs read out linearly, not normalised.
    noise = torch.randn(7, 2, 20, generator=torch.Generator().manual_seed(5))
    h, want = torch.zeros(2, 100), []
    for t in range(7):
        h = _gru_step(mm.cell, noise[t], h)
        want.append(h @ mm.out.weight.T + mm.out.bias)
    torch.testing.assert_close(mot["y"], torch.stack(want, 1))
    with pytest.raises(ValueError, match="no time step"):
        g.motion(2, 3, dt=-0.05)


def test_mocogan_default_gru_feeds_back_one_noise_and_normalises_each_frame():
    # The MoCoGAN code the paper used: one eps as the first input, each output the next
    # input, every frame's outputs normalised over the batch (no affine) in training; Xavier
    # weights, biases 0 (what its initialisation does to a GRUCell).
    torch.manual_seed(0)
    g = build_models(tiny("mocogan", rollout_frames=4)).generator
    mm = g.motion_module
    hid = mm.cell.hidden_size
    assert all((b == 0).all() for b in (mm.cell.bias_ih, mm.cell.bias_hh, mm.out.bias))
    bound = (6 / (mm.cell.weight_ih.shape[0] + mm.cell.weight_ih.shape[1])) ** 0.5   # Xavier
    assert mm.cell.weight_ih.abs().max() <= bound and mm.cell.weight_ih.abs().max() > bound / 2
    n, frames = 6, 5
    y = g.motion(n, frames, generator=torch.Generator().manual_seed(5))["y"]
    eps = torch.randn(n, 20, generator=torch.Generator().manual_seed(5))
    h, x, want, raw = torch.zeros(n, hid), eps, [], []
    for _ in range(frames):
        h = _gru_step(mm.cell, x, h)
        x = h @ mm.out.weight.T + mm.out.bias
        raw.append(x.detach())
        want.append((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))
    torch.testing.assert_close(y, torch.stack(want, 1), rtol=1e-4, atol=1e-5)
    # running statistics per frame, momentum 0.1 from (0, 1); frames past the rows share the
    # last row (4 rows: frames 3 and 4 both update row 3)
    for t in range(3):
        torch.testing.assert_close(mm.frame_mean[t], 0.1 * raw[t].mean(0))
        torch.testing.assert_close(mm.frame_var[t], 0.9 + 0.1 * raw[t].var(0, unbiased=True))
    last = 0.9 * (0.1 * raw[3].mean(0)) + 0.1 * raw[4].mean(0)
    torch.testing.assert_close(mm.frame_mean[3], last)
    with pytest.raises(ValueError, match="at least 2 videos"):
        g.motion(1, 3)
    # eval mode: each video normalised by the running statistics, alone or in any batch
    g.eval()
    for n in (1, 3):
        got = g.motion(n, frames, generator=torch.Generator().manual_seed(7))["y"]
        eps = torch.randn(n, 20, generator=torch.Generator().manual_seed(7))
        h, x = torch.zeros(1, hid), eps[:1]      # the first video on its own
        for t in range(frames):
            h = _gru_step(mm.cell, x, h)
            x = h @ mm.out.weight.T + mm.out.bias
            r = min(t, 3)
            torch.testing.assert_close(got[:1, t], (x - mm.frame_mean[r]) / torch.sqrt(
                mm.frame_var[r] + 1e-5), rtol=1e-4, atol=1e-5)


def test_mocogan_frame_normalisation_is_one_op_with_the_formulas_gradient():
    # Each frame's normalisation runs once per frame of every rollout: in a captured CUDA step
    # every ATen op is a kernel of a few microseconds, so it is torch's batch norm (one op
    # forward, running statistics included), not its formula in a dozen elementwise ops. Its
    # values and its gradient are the formula's, against float64.
    from torch.utils._python_dispatch import TorchDispatchMode
    mm = build_models(tiny("mocogan", rollout_frames=4)).generator.motion_module.train()
    y = torch.randn(6, mm.noise_dim, generator=torch.Generator().manual_seed(2))
    up = torch.randn(6, mm.noise_dim, generator=torch.Generator().manual_seed(3))

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func._schema.name.endswith(("view", "select", "detach", "alias", "lift_fresh",
                                               "_to_copy", "empty")):
                self.ops.append(func._schema.name)
            return func(*args, **(kwargs or {}))
    leaf = y.clone().requires_grad_(True)
    with Ops() as seen:
        out = mm._normalise(leaf, 1)
    assert len(seen.ops) == 1 and "batch_norm" in seen.ops[0], seen.ops
    (grad,) = torch.autograd.grad((out * up).sum(), leaf)
    y64 = y.double().requires_grad_(True)
    want = (y64 - y64.mean(0)) / torch.sqrt(y64.var(0, unbiased=False) + 1e-5)
    (grad64,) = torch.autograd.grad((want * up.double()).sum(), y64)
    torch.testing.assert_close(out.double(), want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), grad64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mm.frame_var[1].double(), 0.9 + 0.1 * y64.var(0).detach(),
                               rtol=1e-6, atol=1e-6)


def test_mocogan_normalises_every_frame_in_one_op_as_frame_by_frame():
    # Nothing normalised feeds back, so all frames go through one batch norm (a channel per
    # frame and dimension) when the buffers have a row per frame: the same outputs, running
    # statistics and gradient as frame by frame, in one op instead of one per frame.
    import copy
    from torch.utils._python_dispatch import TorchDispatchMode
    mm = build_models(tiny("mocogan", rollout_frames=6)).generator.motion_module.train()
    other = copy.deepcopy(mm)
    y = torch.randn(5, 6, mm.noise_dim, generator=torch.Generator().manual_seed(4))
    up = torch.randn(5, 6, mm.noise_dim, generator=torch.Generator().manual_seed(6))

    class Norms(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += "batch_norm" in func._schema.name
            return func(*args, **(kwargs or {}))
    a, b = y.clone().requires_grad_(True), y.clone().requires_grad_(True)
    with Norms() as norms:
        got = mm._normalise_frames(a)
    assert norms.n == 1
    want = torch.stack([other._normalise(b[:, t], t) for t in range(6)], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mm.frame_mean, other.frame_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mm.frame_var, other.frame_var, rtol=1e-6, atol=1e-7)
    (ga,) = torch.autograd.grad((got * up).sum(), a)
    (gb,) = torch.autograd.grad((want * up).sum(), b)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
    # eval mode: the running statistics, the same way
    mm.eval(), other.eval()
    torch.testing.assert_close(mm._normalise_frames(y), torch.stack(
        [other._normalise(y[:, t], t) for t in range(6)], dim=1), rtol=1e-6, atol=1e-6)


def test_generator_renders_a_window_of_a_longer_rollout():
    torch.manual_seed(1)
    for model in ("hgan", "mocogan"):
        g = build_models(tiny(model, integrator="reference")).generator.eval()
        starts = torch.tensor([0, 5, 2])
        with torch.enable_grad():
            part, mot = g(3, 9, generator=torch.Generator().manual_seed(3), window=(starts, 4))
            full, mot_full = g(3, 9, generator=torch.Generator().manual_seed(3))
        assert part.shape == (3, 4, *full.shape[2:]) and mot["y"].shape[1] == 9
        # The tiny untrained generator's frames are ~1e-4 and change by ~1e-6..1e-5 from one
        # frame to the next, under assert_close's default atol: the tolerance is set from
        # that change, so that a window one frame off fails by a wide margin.
        change = (full[:, 1:] - full[:, :-1]).abs().amax(dim=(2, 3, 4))
        assert change.min() > 0
        tol = 1e-3 * change.min().item()
        for i, s in enumerate(starts.tolist()):
            torch.testing.assert_close(part[i], full[i, s:s + 4], rtol=0, atol=tol)
            off = full[i, s + 1:s + 5] if s + 5 <= 9 else full[i, s - 1:s + 3]
            assert (part[i] - off).abs().max() > 100 * tol
        if model == "hgan":   # L_cyc sees the whole rollout, not only the rendered window
            assert mot["dHdq"].shape == (3, 8, 10)


def test_negative_dt_runs_time_backwards():
    # y_T(dt) then dt -> -dt from y_T: the separable form returns to y_0 (reversible scheme).
    torch.manual_seed(2)
    g = build_models(tiny("hnn_gan", hamiltonian="separable", integrator="reference")).generator
    mm = g.motion_module
    q0, p0 = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)
    mm.double()
    q, p, _ = mm.hamiltonian.rollout(q0, p0, 20, dt=0.05, backend="reference")
    qb, pb, _ = mm.hamiltonian.rollout(q[:, -1], p[:, -1], 20, dt=-0.05, backend="reference")
    torch.testing.assert_close(qb[:, -1], q0, rtol=0, atol=1e-9)
    torch.testing.assert_close(pb[:, -1], p0, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dt", [0.1, -0.05])
def test_motion_dt_reaches_the_rollout(dt):
    # Through the public path: the rollout from the motion's own frame 0 at that dt (the
    # default is 0.05), and not the default's.
    torch.manual_seed(2)
    g = build_models(tiny("hgan", integrator="reference")).generator
    mot = g.motion(3, 5, dt=dt, generator=torch.Generator().manual_seed(1))
    default = g.motion(3, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mot["q"][:, 0], default["q"][:, 0])     # same y0
    q, p, _ = g.motion_module.hamiltonian.rollout(mot["q"][:, 0], mot["p"][:, 0], 5, dt=dt,
                                                  backend="reference")
    torch.testing.assert_close(mot["q"], q)
    torch.testing.assert_close(mot["p"], p)
    assert not torch.allclose(mot["q"][:, 1:], default["q"][:, 1:])


def test_content_fixed_per_video_motion_varies():
    torch.manual_seed(3)
    g = build_models(tiny("hgan")).generator.eval()
    z = g.content(2)
    y = g.motion(2, 4)["y"]
    same_motion = g.render(z, y[:, :1].expand(2, 4, 20))
    # A constant latent gives identical frames: content alone carries no time dependence.
    torch.testing.assert_close(same_motion[:, 0], same_motion[:, 3])
    assert not torch.allclose(g.render(z, y)[:, 0], g.render(z, y)[:, 3])


def test_cyclic_loss_hand_computed():
    # lambda / B * sum_t sum_i |dH/dq_i|: B = 2, entries sum to 1+2+3+0.5 + 4+0+1+1 = 12.5.
    dhdq = torch.tensor([[[1.0, -2.0], [3.0, 0.5]], [[-4.0, 0.0], [1.0, -1.0]]])
    assert cyclic_loss(dhdq, lam=0.01).item() == pytest.approx(0.01 * 12.5 / 2, rel=1e-6)
    assert cyclic_loss(dhdq, lam=0.1).item() == pytest.approx(0.1 * 12.5 / 2, rel=1e-6)
    # B, T-1 and k all different (3, 2, 4), so that dividing by another of them shows:
    # entries 0.1 * (1 .. 24) with alternating signs, |.| summed = 0.1 * 300 = 30, over B = 3
    x = 0.1 * torch.arange(1, 25, dtype=torch.float64).view(3, 2, 4)
    x[..., 1::2] *= -1
    assert cyclic_loss(x, lam=0.01).item() == pytest.approx(0.01 * 30 / 3, rel=1e-12)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown model 'vae'"):
        ModelConfig(model="vae")
    with pytest.raises(ValueError, match="motion_dim \\(12\\) must equal 2\\*k"):
        ModelConfig(model="hnn_gan", motion_dim=12)
    with pytest.raises(ValueError, match="unknown hamiltonian"):
        ModelConfig(hamiltonian="quantum")
    m = ModelConfig(model="mocogan", motion_dim=12)
    assert m.latent_dim == 62 and ModelConfig().latent_dim == 70
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()
    with pytest.raises(ValueError, match="unknown scheme 'rk4'"):
        ModelConfig(scheme="rk4")
    # A config saved before a field existed was trained without it: the official step,
    # videos of exactly --frames, a fresh-noise GRU.
    new_fields = ("scheme", "rollout_frames", "gru_input")
    old = {k: v for k, v in ModelConfig().to_dict().items() if k not in new_fields}
    assert [getattr(ModelConfig.from_dict(old), f) for f in new_fields] == ["official", 0, "noise"]
    with pytest.raises(ValueError, match="unknown gru_input 'lstm'"):
        ModelConfig(gru_input="lstm")
    with pytest.raises(ValueError, match="unknown gru_backend 'cuda'; choose one of auto, "
                                         "cells, autograd"):
        ModelConfig(model="mocogan", gru_backend="cuda")
    with pytest.raises(ValueError, match="rollout_frames must be >= 0"):
        ModelConfig(rollout_frames=-1)
    with pytest.raises(ValueError, match="unknown fused_precision 'bf16'"):
        ModelConfig(fused_precision="bf16")
    with pytest.raises(ValueError, match="integrator 'analytic' computes in float32"):
        ModelConfig(fused_precision="tf32", integrator="analytic")
    assert ModelConfig(fused_precision="tf32x3").fused_precision == "tf32x3"  # auto, fused
    for name in ("k", "hidden", "depth", "motion_dim", "clip_frames"):   # not nn.Linear's error
        with pytest.raises(ValueError, match=f"{name} must be a positive integer, got 0"):
            ModelConfig(**{name: 0})


def test_the_learned_hamiltonian_is_smooth_by_default():
    # A ReLU H has a zero second derivative: the kicks' dH/dq through p_half, L_cyc's gradient
    # and the Hessian terms of the backward would all drop out (docs/training.md, departures).
    from hgan.train.config import parse_command_line
    assert ModelConfig().activation == "softplus"
    assert parse_command_line(["--system", "pendulum"])[0].model.activation == "softplus"
    for model in ("hgan", "hnn_gan"):
        g = build_models(tiny(model, k=2, hidden=16, motion_dim=4)).generator
        h = g.motion_module.hamiltonian
        assert h.activation == "softplus", model


# --- the networks written out from the DCGAN / MoCoGAN recipes (docs/training.md, the models) --

def _bn(x, m, seen=None):
    # training-mode BatchNorm: the batch's own statistics, the layer's affine, PyTorch's
    # (and DCGAN's) eps written out; `seen` collects (layer, input) for _running_stats
    if seen is not None:
        seen.append((m, x))
    return F.batch_norm(x, None, None, m.weight, m.bias, training=True, eps=1e-5)


def _running_stats(seen):
    """After one training-mode forward from fresh layers: running statistics moved 10% (the
    default momentum) from mean 0 and variance 1 towards the batch's (unbiased variance):
    what every eval-mode sample then normalises with."""
    for m, x in seen:
        dims = [0] + list(range(2, x.dim()))
        torch.testing.assert_close(m.running_mean, 0.1 * x.mean(dims), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(m.running_var, 0.9 + 0.1 * x.var(dims, unbiased=True),
                                   rtol=1e-10, atol=1e-12)


def _of(net, kind):
    return [m for m in net.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("resolution,base,n", [(32, 4, 3), (96, 6, 4)])
def test_image_generator_is_dcgan_written_out(resolution, base, n):
    # Transposed convolutions without bias from a base x base seed, BatchNorm + ReLU after each
    # but the last, tanh at the end; widths ngf * 2^(n-1) ... ngf, channels.
    torch.manual_seed(0)
    g = build_models(tiny(resolution=resolution, ngf=4, ndf=8)).generator.image_generator.double()
    convs, bns = _of(g, torch.nn.ConvTranspose2d), _of(g, torch.nn.BatchNorm2d)
    assert [c.out_channels for c in convs] == [4 * 2 ** i for i in reversed(range(n))] + [3]
    assert len(bns) == n and all(c.bias is None for c in convs)
    z = torch.randn(5, 70, dtype=torch.float64)
    x = F.conv_transpose2d(z[:, :, None, None], convs[0].weight)
    assert x.shape[-1] == base
    seen = []
    for conv, bn in zip(convs[1:], bns):
        x = F.conv_transpose2d(torch.relu(_bn(x, bn, seen)), conv.weight, stride=2, padding=1)
    torch.testing.assert_close(g(z), torch.tanh(x), rtol=1e-10, atol=1e-12)
    _running_stats(seen)


def test_image_discriminator_is_dcgan_written_out():
    # Strided convolutions without bias, LeakyReLU(0.2), BatchNorm on all but the first, a
    # base x base convolution to one logit (no sigmoid: the losses take logits).
    torch.manual_seed(0)
    d = build_models(tiny(ngf=8, ndf=4)).image_disc.double()
    convs, bns = _of(d, torch.nn.Conv2d), _of(d, torch.nn.BatchNorm2d)
    assert [c.out_channels for c in convs] == [4, 8, 16, 1] and len(bns) == 2
    assert all(c.bias is None for c in convs)
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    h = F.leaky_relu(F.conv2d(x, convs[0].weight, stride=2, padding=1), 0.2)
    seen = []
    for conv, bn in zip(convs[1:-1], bns):
        h = F.leaky_relu(_bn(F.conv2d(h, conv.weight, stride=2, padding=1), bn, seen), 0.2)
    torch.testing.assert_close(d(x), F.conv2d(h, convs[-1].weight).reshape(-1),
                               rtol=1e-10, atol=1e-12)
    _running_stats(seen)


def test_video_discriminator_is_written_out():
    # D_I's recipe in 3-D over [N, C, T, H, W]: time halved (kernel 4, stride 2) while at least
    # 4 frames remain, else kernel 3, stride 1; then a linear head to one logit.
    torch.manual_seed(0)
    d = build_models(tiny(ngf=8, ndf=4, clip_frames=8)).video_disc.double()
    convs, bns = _of(d, torch.nn.Conv3d), _of(d, torch.nn.BatchNorm3d)
    assert [c.out_channels for c in convs] == [4, 8, 16] and len(bns) == 2
    assert all(c.bias is None for c in convs)
    clip = torch.randn(3, 8, 3, 32, 32, dtype=torch.float64)
    h, t = clip.permute(0, 2, 1, 3, 4), 8                 # frame j at [:, :, j]
    seen = []
    for i, conv in enumerate(convs):
        kt, st = (4, 2) if t >= 4 else (3, 1)
        assert conv.kernel_size == (kt, 4, 4)
        h = F.conv3d(h, conv.weight, stride=(st, 2, 2), padding=1)
        h = F.leaky_relu(_bn(h, bns[i - 1], seen) if i else h, 0.2)
        t = h.shape[2]
    assert h.shape[2:] == (2, 4, 4)                        # 8 -> 4 -> 2 -> 2 frames
    want = h.flatten(1) @ d.head.weight.T + d.head.bias
    torch.testing.assert_close(d(clip), want.reshape(-1), rtol=1e-10, atol=1e-12)
    _running_stats(seen)


def test_discriminator_logits_are_fp32_under_autocast():
    # Under bf16 autocast each discriminator's body runs in bf16 but its last layer in fp32:
    # the logits are that layer computed in float64 on the body's (bf16) features, to fp32
    # rounding. A bf16 last layer rounds them to 8 bits (~4e-3 relative).
    torch.manual_seed(0)
    m = build_models(tiny(clip_frames=4))
    clip = torch.randn(6, 4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats_i = m.image_disc.main[:-1](clip[:, 0])
        feats_v = m.video_disc.main(clip.transpose(1, 2)).flatten(1)
        logits_i, logits_v = m.image_disc(clip[:, 0]), m.video_disc(clip)
    assert feats_i.dtype == feats_v.dtype == torch.bfloat16
    assert logits_i.dtype == logits_v.dtype == torch.float32
    last, head = m.image_disc.main[-1], m.video_disc.head
    want_i = F.conv2d(feats_i.double(), last.weight.double()).reshape(-1)
    want_v = (feats_v.double() @ head.weight.double().T + head.bias.double()).reshape(-1)
    torch.testing.assert_close(logits_i.double(), want_i, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits_v.double(), want_v, rtol=1e-5, atol=1e-6)


def test_convolutions_start_from_dcgan_weights():
    # DCGAN's N(0, 0.02) convolution weights and N(1, 0.02) BatchNorm scales with zero shifts,
    # in G_I, D_I and D_V alike (PyTorch's defaults: uniform weights of std ~ 1/sqrt(3 fan_in),
    # BatchNorm scales of exactly 1). The motion module keeps its own Xavier weights.
    torch.manual_seed(0)
    m = build_models(tiny(ngf=32, ndf=32))
    for name, net in (("G_I", m.generator.image_generator), ("D_I", m.image_disc),
                      ("D_V", m.video_disc)):
        convs = [c.weight for c in net.modules()
                 if isinstance(c, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d))]
        w = torch.cat([c.detach().flatten() for c in convs])
        assert abs(float(w.mean())) < 1e-3 and 0.0195 < float(w.std()) < 0.0205, name
        assert all(0.015 < float(c.detach().std()) < 0.025 for c in convs), name
        bns = [b for b in net.modules() if isinstance(b, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d))]
        scale = torch.cat([b.weight.detach() for b in bns])
        assert abs(float(scale.mean()) - 1) < 0.01 and 0.01 < float(scale.std()) < 0.03, name
        assert all((b.bias == 0).all() for b in bns), name


def test_content_is_standard_normal_and_the_map_is_xavier():
    # z_c ~ N(0, I_content_dim), one draw per video from the generator's stream.
    g = build_models(tiny("hgan")).generator
    z = g.content(4, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(z, torch.randn(4, 50, generator=torch.Generator().manual_seed(9)))
    # f's weights are Xavier-uniform as in the official code (bound sqrt(6 / (in + out))).
    for m in g.motion_module.config_map:
        if isinstance(m, torch.nn.Linear):
            bound = (6 / sum(m.weight.shape)) ** 0.5
            assert bound * 0.9 < m.weight.abs().max() <= bound


def test_hgan_latent_is_content_then_2k_whatever_the_motion_noise():
    # f maps eps_m in R^motion_dim to (q0, p0) in R^2k: G_I reads content_dim + 2k numbers,
    # also when motion_dim != 2k.
    cfg = tiny("hgan", k=3, motion_dim=8)
    assert cfg.latent_dim == 50 + 6
    v = build_models(cfg).generator.sample(2, 3, generator=torch.Generator().manual_seed(0))
    assert v.shape == (2, 3, 3, 32, 32)


def _mlp_by_hand(x, layers, act):
    for lin in layers[:-1]:
        x = act(x @ lin.weight.T + lin.bias)
    return (x @ layers[-1].weight.T + layers[-1].bias).squeeze(-1)


def test_motion_takes_the_configured_hamiltonian_depth_activation_and_dt():
    # --depth 3 --activation tanh --dt 0.1: H is a three-hidden-layer tanh MLP on [q; p], and
    # the rollout kicks with its gradient and steps by 0.1 (one order2 step written out in
    # float64, docs/integrator.md).
    torch.manual_seed(0)
    g = build_models(tiny("hgan", depth=3, activation="tanh", dt=0.1, k=2, motion_dim=4,
                          hidden=8, integrator="reference")).generator
    mm = g.motion_module
    layers = [torch.nn.Linear(1, 1).double() for _ in range(4)]
    for mine, theirs in zip(layers, mm.hamiltonian.layers, strict=True):   # depth 3: 4 layers
        mine.weight, mine.bias = (torch.nn.Parameter(t.detach().double())
                                  for t in (theirs.weight, theirs.bias))
    eps = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    q0, p0 = (t.detach().double() for t in mm.initial_state(eps))

    def grad_h(q, p):
        x = torch.cat([q, p], 1).requires_grad_(True)
        (gx,) = torch.autograd.grad(_mlp_by_hand(x, layers, torch.tanh).sum(), x)
        return gx[:, :2], gx[:, 2:]

    torch.testing.assert_close(mm.hamiltonian(q0.float(), p0.float()).double(),
                               _mlp_by_hand(torch.cat([q0, p0], 1), layers, torch.tanh),
                               rtol=1e-5, atol=1e-6)
    dt = 0.1
    hq, hp = grad_h(q0, p0)
    p_half = p0 - dt / 2 * hq
    q1 = q0 + dt * grad_h(q0 + dt / 2 * hp, p_half)[1]
    p1 = p_half - dt / 2 * grad_h(q1, p0 - dt * hq)[0]
    mot = g.motion(3, 2, generator=torch.Generator().manual_seed(1))
    for got, want in ((mot["dHdq"][:, 0], hq), (mot["q"][:, 1], q1), (mot["p"][:, 1], p1)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # the same step at dt = 0.05 lands measurably elsewhere
    assert (q1 - (q0 + 0.05 * grad_h(q0 + 0.025 * hp, p0 - 0.025 * hq)[1])).abs().max() > 1e-3


@pytest.mark.parametrize("rollout,clip", [(6, 4), (0, 5)])
def test_gru_keeps_running_statistics_for_every_frame_it_rolls_out(rollout, clip):
    # The model alone rolls out rollout_frames (or clip_frames when that is longer; the
    # trainer reserves rows for a longer --frames): each of those frames has its own running
    # statistics, so the last frame's come from it alone.
    torch.manual_seed(0)
    frames = max(rollout, clip)
    g = build_models(tiny("mocogan", rollout_frames=rollout, clip_frames=clip)).generator
    mm = g.motion_module
    raw = _record_raw_frames(mm)
    g.motion(4, frames, generator=torch.Generator().manual_seed(2))
    assert len(raw) == frames
    for t in range(frames):
        torch.testing.assert_close(mm.frame_mean[t], 0.1 * raw[t].mean(0))


def test_gru_statistics_rows_follow_what_is_reserved_and_what_a_checkpoint_holds():
    # The trainer reserves a row per frame it rolls out (--frames may exceed rollout_frames);
    # a checkpoint keeps them, and a model built from the config alone (sampling, evaluation)
    # takes the checkpoint's row count. New rows start as a fresh BatchNorm's (mean 0, var 1).
    torch.manual_seed(0)
    cfg = tiny("mocogan", rollout_frames=4, clip_frames=4)
    mm = build_models(cfg).generator.motion_module
    assert mm.frame_mean.shape[0] == 4
    ref = mm.frame_mean        # a wrapper's reference (DDP) stays the module's buffer
    d = mm.frame_mean.shape[1]
    mm.frame_mean.add_(torch.arange(4.0)[:, None])
    mm.reserve_frames(7)
    assert mm.frame_mean is ref and mm.frame_mean.shape == mm.frame_var.shape == (7, d)
    assert torch.equal(mm.frame_mean[:4], torch.arange(4.0)[:, None].expand(4, d))
    assert torch.equal(mm.frame_mean[4:], torch.zeros(3, d))
    assert torch.equal(mm.frame_var, torch.ones(7, d))
    mm.reserve_frames(5)       # never fewer
    assert mm.frame_mean.shape[0] == 7
    fresh = build_models(cfg).generator.motion_module
    fresh.load_state_dict(mm.state_dict())
    assert torch.equal(fresh.frame_mean, mm.frame_mean)
    noise = build_models(tiny("mocogan", gru_input="noise")).generator.motion_module
    noise.reserve_frames(9)    # fresh noise each frame: no statistics to keep
    assert not hasattr(noise, "frame_mean")


def test_gru_running_statistics_stay_float32_under_bf16_autocast():
    # --amp on a bf16 device: the GRU's rollout runs in fp32 whatever autocast asks, and its
    # per-frame statistics are kept in fp32 (lerp_ into an fp32 buffer refused a bf16 mean:
    # mocogan --amp failed at its first step when the output layer ran in bf16).
    torch.manual_seed(0)
    g = build_models(tiny("mocogan", rollout_frames=3)).generator
    mm = g.motion_module
    raw = _record_raw_frames(mm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = g.motion(4, 3, generator=torch.Generator().manual_seed(2))["y"]
    # the recurrence itself stays fp32 under autocast (hgan.models.gru_unroll)
    assert raw[0].dtype == torch.float32 and y.isfinite().all()
    assert mm.frame_mean.dtype == mm.frame_var.dtype == torch.float32
    for t in range(3):
        torch.testing.assert_close(mm.frame_mean[t], 0.1 * raw[t].float().mean(0))
        torch.testing.assert_close(mm.frame_var[t], 0.9 + 0.1 * raw[t].float().var(0))


def test_each_video_draws_its_own_content():
    # z_c is fixed within a video and drawn per video: with G_I's motion rows zeroed, a
    # video's frames are one image, and no two videos of a batch share it (training mode, as
    # the trainer calls it: at initialisation eval-mode outputs are ~1e-4 small).
    torch.manual_seed(4)
    cfg = tiny("hgan")
    g = build_models(cfg).generator
    with torch.no_grad():
        g.image_generator.main[0].weight[cfg.content_dim:] = 0
        v, _ = g(3, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(v, v[:, :1].expand_as(v))
    assert all((v[i, 0] - v[j, 0]).abs().max() > 0.1 for i, j in ((0, 1), (0, 2), (1, 2)))


def test_motion_gradients_reach_f_through_q0_and_p0():
    # The training loss reaches f through both halves of y0: the motion module's gradients are
    # those of f composed with the rollout by hand.
    torch.manual_seed(0)
    g = build_models(tiny("hgan", integrator="reference")).generator
    mm = g.motion_module
    r = torch.randn(3, 5, 20, generator=torch.Generator().manual_seed(1))
    params = list(mm.config_map.parameters())
    got = torch.autograd.grad((g.motion(3, 5, generator=torch.Generator().manual_seed(2))["y"]
                               * r).sum(), params)
    y0 = mm.config_map(torch.randn(3, 20, generator=torch.Generator().manual_seed(2)))
    q, p, _ = mm.hamiltonian.rollout(y0[:, :10], y0[:, 10:], 5, backend="reference")
    want = torch.autograd.grad((torch.cat([q, p], -1) * r).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    # only q0 is read at frame 0's first half: its rows of f's last layer get their gradient
    only_q = torch.autograd.grad(g.motion(3, 1)["q"].sum(), mm.config_map[-1].bias)[0]
    assert (only_q[:10] == 3).all() and (only_q[10:] == 0).all()


def test_mocogan_feedback_backpropagates_through_time():
    # Each output is the next frame's input: a loss on late frames reaches the GRU through every
    # earlier step, as the written-out recurrence (the feedback not cut) says.
    torch.manual_seed(0)
    g = build_models(tiny("mocogan", rollout_frames=4)).generator
    mm = g.motion_module
    n, frames = 5, 4
    r = torch.randn(n, frames, 20, generator=torch.Generator().manual_seed(3))
    params = [mm.cell.weight_ih, mm.cell.weight_hh, mm.out.weight]
    y = g.motion(n, frames, generator=torch.Generator().manual_seed(5))["y"]
    got = torch.autograd.grad((y * r).sum(), params)
    h, x, want = torch.zeros(n, mm.cell.hidden_size), torch.randn(
        n, 20, generator=torch.Generator().manual_seed(5)), []
    for _ in range(frames):
        h = _gru_step(mm.cell, x, h)
        x = h @ mm.out.weight.T + mm.out.bias
        want.append((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))
    for a, b in zip(got, torch.autograd.grad((torch.stack(want, 1) * r).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_defaults_are_the_documented_ones():
    """ModelConfig() is the docs/training.md flags table (and the models table): oracle the
    values written out here from those tables, not the dataclass read back."""
    want = dict(model="hgan", resolution=32, channels=3, k=10, motion_dim=20, content_dim=50,
                hidden=100, depth=2, hamiltonian="general", activation="softplus", dt=0.05,
                ngf=32, ndf=32, clip_frames=16, rollout_frames=30, gru_input="feedback",
                gru_backend="auto",
                integrator="auto", scheme="order2", fused_precision="auto", channels_last=False)
    assert ModelConfig().to_dict() == want


@pytest.mark.parametrize("kw,message", [
    (dict(activation="elu"), "unknown activation 'elu'; choose one of softplus, tanh, relu"),
    (dict(integrator="rk4"),
     "unknown integrator 'rk4'; choose one of auto, reference, analytic, fused"),
    (dict(fused_precision="tf32x3", integrator="reference"),
     "fused_precision 'tf32x3' sets the fused kernels' dot products; integrator 'reference' "
     "computes in float32"),
    (dict(fused_precision="bf16x3", integrator="analytic"),
     "fused_precision 'bf16x3' sets the fused kernels' dot products; integrator 'analytic' "
     "computes in float32"),
    (dict(channels=0), "channels must be a positive integer, got 0"),
    (dict(content_dim=0), "content_dim must be a positive integer, got 0"),
    (dict(ngf=0), "ngf must be a positive integer, got 0"),
    (dict(ndf=-2), "ndf must be a positive integer, got -2"),
])
def test_each_config_value_is_checked_with_its_own_message(kw, message):
    """Every choice and size field is refused at ModelConfig (the documented one-line error,
    written out), not later inside a network or the integrator."""
    import re
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ModelConfig(**kw)


def test_from_dict_names_unknown_fields():
    """A saved config with fields ModelConfig lacks is one ValueError naming them, sorted (not
    the dataclass's TypeError about one unexpected keyword)."""
    d = {**ModelConfig().to_dict(), "ngff": 8, "alpha": 1}
    with pytest.raises(ValueError, match=r"^unknown ModelConfig fields: alpha, ngff$"):
        ModelConfig.from_dict(d)


def test_build_models_takes_a_saved_config_dict():
    """build_models(dict) reads it as ModelConfig.from_dict: a dict saved before `scheme`
    existed builds the official step (docs: configs without a field were trained without it)."""
    d = {k: v for k, v in tiny("hgan", k=3, motion_dim=8).to_dict().items() if k != "scheme"}
    m = build_models(d)
    assert isinstance(m.config, ModelConfig) and m.config.scheme == "official"
    assert m.generator.motion_module.scheme == "official" and m.config.k == 3
    assert m.generator.sample(2, 3, generator=torch.Generator().manual_seed(0)).shape == \
        (2, 3, 3, 32, 32)


def test_build_models_puts_all_three_networks_on_the_device():
    """Every parameter and buffer of G (motion module and G_I), D_I and D_V is on the device
    build_models was given (the meta device: no memory, any machine)."""
    m = build_models(tiny("mocogan"), device="meta")
    for net in (m.generator, m.image_disc, m.video_disc):
        tensors = list(net.parameters()) + list(net.buffers())
        assert tensors and all(t.device.type == "meta" for t in tensors), type(net).__name__


def test_video_disc_names_a_clip_without_its_batch_axis():
    """A 4-D clip [T, C, H, W] is refused with the documented message (Conv3d would take it as
    one unbatched clip, and the error would come from deep inside D_V)."""
    d = build_models(tiny(clip_frames=4)).video_disc
    with pytest.raises(ValueError, match=r"expects \[N, 4, C, H, W\] clips, got \(3, 4, 32, 32\)"):
        d(torch.randn(3, 4, 32, 32))


def test_sample_keeps_no_graph():
    """sample() is documented "(no graph)": float32 videos that carry no autograd history,
    also when called with gradients enabled in training mode."""
    torch.manual_seed(0)
    g = build_models(tiny("hgan")).generator
    with torch.enable_grad():
        v = g.sample(2, 3, generator=torch.Generator().manual_seed(0))
    assert v.dtype == torch.float32 and not v.requires_grad and v.grad_fn is None


@pytest.mark.parametrize("model,kw", [("hgan", {}), ("hnn_gan", {}), ("mocogan", {}),
                                      ("mocogan", {"gru_input": "noise"})])
def test_a_videos_content_does_not_depend_on_its_length(model, kw):
    """With one seed, a 3-frame and a 7-frame sample give G_I the same z_c per video (a longer
    sample of a seed shows the same scene), also when the motion noise grows with the length
    (mocogan --gru-input noise draws [frames, n, D]). Oracle: the z_c columns of G_I's input,
    which must be constant over a video's frames and equal across the two lengths."""
    torch.manual_seed(0)
    g = build_models(tiny(model, integrator="analytic", **kw)).generator.eval()
    seen = []
    g.image_generator.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    for frames in (3, 7):
        g.sample(2, frames, generator=torch.Generator().manual_seed(4))
    short, long = (w.reshape(2, -1, w.shape[1])[..., :50] for w in seen)
    torch.testing.assert_close(short, short[:, :1].expand_as(short), rtol=0, atol=0)
    torch.testing.assert_close(long[:, 0], short[:, 0], rtol=0, atol=0)
    assert (short[0, 0] - short[1, 0]).abs().max() > 0.1    # two videos, two contents
