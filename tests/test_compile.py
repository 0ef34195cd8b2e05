"""torch.compile of G_I, D_I, D_V: no graph breaks, no steady-state recompiles, same grads.

Compiled with backend="aot_eager": Dynamo tracing and AOT autograd exactly as inductor sees
them, without minutes of C++ code generation on a 2-core CI machine. fullgraph=True turns
any graph break into an error, and a CompileCounter counts (re)compilations.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from hgan.models import ModelConfig, build_models
from hgan.train.config import RunConfig
from hgan.train.loop import Trainer

B, T = 2, 4


def tiny(channels_last=True, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(resolution=16, ngf=4, ndf=4, k=2, motion_dim=4, content_dim=4, hidden=8,
                      clip_frames=T, integrator="reference", channels_last=channels_last)
    return build_models(cfg)


def compile_all(models):
    """Compile in place as the trainer's --compile does (Module.compile keeps state_dict
    keys); R1's double backward runs them under set_stance("force_eager")."""
    counters = {}
    for name, m in (("G_I", models.generator.image_generator), ("D_I", models.image_disc),
                    ("D_V", models.video_disc)):
        counters[name] = CompileCounterWithBackend("aot_eager")
        m.compile(backend=counters[name], fullgraph=True)
    return counters


def tiny_trainer(amp, r1_gamma):
    cfg = RunConfig(batch_size=B, frames=T, amp=amp, amp_dtype="bf16" if amp else "auto",
                    r1_gamma=r1_gamma, device="cpu", progress=False,
                    model=ModelConfig(resolution=16, ngf=4, ndf=4, k=2, motion_dim=4,
                                      content_dim=4, hidden=8, clip_frames=T,
                                      integrator="reference", channels_last=True))
    return Trainer(cfg, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("amp, r1_gamma", [(False, 1.0), (True, 0.0)])
def test_trainer_steady_state_has_no_graph_breaks_or_recompiles(amp, r1_gamma):
    """The trainer's own step: the reference integrator (create_graph) stays eager around
    the compiled nets, R1 (double backward) runs them with compilation stood down."""
    trainer = tiny_trainer(amp, r1_gamma)
    counters = compile_all(trainer.models)
    torch.manual_seed(0)
    real = torch.rand(B, T, 3, 16, 16) * 2 - 1
    for _ in range(2):  # warm-up: every shape each net sees in a step has been compiled
        trainer.step(real)
    warm = {k: c.frame_count for k, c in counters.items()}
    assert all(n >= 1 for n in warm.values()), "every net went through the compiler"
    for _ in range(3):
        stats = trainer.step(real)
        assert all(torch.isfinite(v).all() for v in stats.values())
    assert {k: c.frame_count for k, c in counters.items()} == warm, "steady state recompiled"


def test_compiled_and_eager_gradients_agree():
    eager, compiled = tiny(seed=1), tiny(seed=1)
    counters = compile_all(compiled)
    torch.manual_seed(2)
    z = torch.randn(2 * B, eager.config.latent_dim)
    clip = torch.randn(B, T, 3, 16, 16)
    grads = []
    for models in (eager, compiled):
        g_i = models.generator.image_generator
        img = g_i(z.contiguous())
        out = (models.image_disc(img).square().sum()
               + models.video_disc(clip).square().sum())
        params = (list(g_i.parameters())
                  + list(models.image_disc.parameters()) + list(models.video_disc.parameters()))
        grads.append(torch.autograd.grad(out, params))
    assert all(c.frame_count == 1 for c in counters.values()), "the nets really ran compiled"
    assert len(grads[0]) == len(grads[1]) > 0
    for ge, gc in zip(*grads):
        torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-6)


def test_channels_last_layouts_reach_the_convolutions():
    models = tiny()  # build_models with channels_last=True, D_V as channels_last_3d
    assert models.image_disc.main[0].weight.is_contiguous(memory_format=torch.channels_last)
    img = models.generator.image_generator(torch.randn(3 * T, models.config.latent_dim))
    assert img.is_contiguous(memory_format=torch.channels_last)
    # Generated videos are stored B, T, H, W, C: after D_V's transpose(1, 2) a clip is
    # channels_last_3d with no copy, matching D_V's channels_last_3d weights.
    clip = img.reshape(3, T, *img.shape[1:])
    assert clip.transpose(1, 2).is_contiguous(memory_format=torch.channels_last_3d)
    assert models.video_disc.main[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    # Same logits as the default layout (float64: only summation order may differ).
    ref = tiny(channels_last=False).video_disc.double()
    ref.load_state_dict(models.video_disc.state_dict())
    torch.testing.assert_close(models.video_disc.double()(clip.double()),
                               ref(clip.detach().double().contiguous()), rtol=1e-12, atol=1e-12)
