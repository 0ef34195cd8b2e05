"""torch.compile of G_I, D_I, D_V: no graph breaks, no steady-state recompiles, same grads.

Compiled with backend="aot_eager": Dynamo tracing and AOT autograd exactly as inductor sees
them, without minutes of C++ code generation on a 2-core CI machine. fullgraph=True turns
any graph break into an error, and a CompileCounter counts (re)compilations.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from hgan.models import ModelConfig, build_models
from hgan.train.losses import d_loss, g_loss, r1_penalty

B, T = 2, 4


def tiny(channels_last=True, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(resolution=16, ngf=4, ndf=4, k=2, motion_dim=4, content_dim=4, hidden=8,
                      clip_frames=T, integrator="reference", channels_last=channels_last)
    models = build_models(cfg)
    if channels_last:
        models.video_disc.to(memory_format=torch.channels_last_3d)
    return models


def compile_all(models):
    counters = {}
    for name in ("image_generator", "image_disc", "video_disc"):
        owner = models.generator if name == "image_generator" else models
        counters[name] = CompileCounterWithBackend("aot_eager")
        setattr(owner, name, torch.compile(getattr(owner, name), backend=counters[name],
                                           fullgraph=True))
    return counters


def step(models, real, opt_g, opt_d, *, amp, r1_gamma=0.0):
    g, d_i, d_v = models.generator, models.image_disc, models.video_disc
    idx = torch.arange(B)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        fake, mot = g(B, T)  # motion: reference integrator, eager (create_graph inside)
        li = d_i(torch.cat([real[idx, idx % T], fake.detach()[idx, idx % T]]))
        lv = d_v(torch.cat([real, fake.detach()]))
        loss_d = d_loss(li[:B], li[B:]) + d_loss(lv[:B], lv[B:])
    if r1_gamma:
        # Double backward runs through the eager module, which shares the parameters.
        _, penalty = r1_penalty(getattr(d_i, "_orig_mod", d_i), real[:, 0], r1_gamma)
        loss_d = loss_d + penalty
    loss_d.backward()
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss_g = g_loss(d_i(fake[idx, idx % T])) + g_loss(d_v(fake))
    loss_g.backward()
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    return loss_d.item(), loss_g.item()


@pytest.mark.slow
@pytest.mark.parametrize("amp", [False, True])
def test_steady_state_has_no_graph_breaks_or_recompiles(amp):
    models = tiny()
    counters = compile_all(models)
    opt_g = torch.optim.Adam(models.generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(list(models.image_disc.parameters())
                             + list(models.video_disc.parameters()), lr=1e-3)
    real = torch.rand(B, T, 3, 16, 16) * 2 - 1
    for _ in range(2):  # warm-up: D_I sees batches 2B and B, D_V sees 2B and B
        step(models, real, opt_g, opt_d, amp=amp, r1_gamma=1.0)
    warm = {k: c.frame_count for k, c in counters.items()}
    assert all(n >= 1 for n in warm.values()), "every module went through the compiler"
    losses = [step(models, real, opt_g, opt_d, amp=amp, r1_gamma=1.0) for _ in range(3)]
    assert {k: c.frame_count for k, c in counters.items()} == warm, "steady state recompiled"
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses)


def test_compiled_and_eager_gradients_agree():
    eager, compiled = tiny(seed=1), tiny(seed=1)
    compile_all(compiled)
    torch.manual_seed(2)
    z = torch.randn(2 * B, eager.config.latent_dim)
    clip = torch.randn(B, T, 3, 16, 16)
    grads = []
    for models in (eager, compiled):
        g_i = models.generator.image_generator
        img = g_i(z.contiguous())
        out = (models.image_disc(img).square().sum()
               + models.video_disc(clip).square().sum())
        params = (list(getattr(g_i, "_orig_mod", g_i).parameters())
                  + list(models.image_disc.parameters()) + list(models.video_disc.parameters()))
        grads.append(torch.autograd.grad(out, params))
    assert len(grads[0]) == len(grads[1]) > 0
    for ge, gc in zip(*grads):
        torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-6)


def test_channels_last_layouts_reach_the_convolutions():
    models = tiny()
    img = models.generator.image_generator(torch.randn(3, models.config.latent_dim))
    assert img.is_contiguous(memory_format=torch.channels_last)
    w = models.video_disc.main[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last_3d)
    # A [B, T, H, W, C]-stored clip is channels_last_3d after D_V's transpose(1, 2).
    clip = img.reshape(1, 3, *img.shape[1:])
    assert clip.transpose(1, 2).is_contiguous(memory_format=torch.channels_last_3d)
