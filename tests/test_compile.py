"""torch.compile of G_I, D_I, D_V and the motion module: no graph breaks, no steady-state
recompiles, same results and gradients as eager.

Compiled with backend="aot_eager": Dynamo tracing and AOT autograd exactly as inductor sees
them, without minutes of C++ code generation on a 2-core CI machine (one test runs the real
inductor backend on a tiny G_I). fullgraph=True turns any graph break into an error, and a
CompileCounter counts (re)compilations.

The motion module compiles its noise-free part only (hgan: the configuration map; mocogan:
the GRU recurrence; hnn_gan: nothing): the leapfrog integrator stays eager for every backend
(see HamiltonianMotion.compile) and the noise is drawn eagerly from the torch.Generator.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from hgan.models import ModelConfig, build_models
from hgan.train.config import RunConfig
from hgan.train.loop import Trainer, cpu_has_fast_bf16

# Emulated bf16 (no AVX512-BF16/AMX) is no training path (hgan.train.loop.amp_policy).
native_bf16 = pytest.mark.skipif(not cpu_has_fast_bf16(),
                                 reason="bf16 training on a CPU without native bf16 (emulated "
                                        "kernels) is not numerically reliable")

B, T = 2, 4


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles new instances with a new counter backend; compiled code is cached
    per code object (shared by every instance of a class), so without a reset the tests'
    entries would pile up to Dynamo's recompile limit (8) and fail under fullgraph."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_config(model="hgan", integrator="reference", channels_last=True):
    return ModelConfig(model=model, resolution=16, ngf=4, ndf=4, k=2, motion_dim=4,
                       content_dim=4, hidden=8, clip_frames=T, rollout_frames=T + 2,
                       integrator=integrator,
                       channels_last=channels_last)


def tiny(channels_last=True, seed=0, model="hgan", integrator="reference"):
    torch.manual_seed(seed)
    return build_models(tiny_config(model, integrator, channels_last))


def compile_all(models):
    """Compile in place as the trainer's --compile does (Module.compile keeps state_dict
    keys); R1's double backward runs them under set_stance("force_eager")."""
    counters = {}
    for name, m in (("G_I", models.generator.image_generator), ("D_I", models.image_disc),
                    ("D_V", models.video_disc), ("motion", models.generator.motion_module)):
        counters[name] = CompileCounterWithBackend("aot_eager")
        m.compile(backend=counters[name], fullgraph=True)
    return counters


def tiny_trainer(model, integrator, amp, r1_gamma):
    cfg = RunConfig(batch_size=B, frames=T, amp=amp, amp_dtype="bf16" if amp else "auto",
                    r1_gamma=r1_gamma, device="cpu", progress=False,
                    model=tiny_config(model, integrator))
    return Trainer(cfg, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("model, integrator, amp, r1_gamma", [
    ("hgan", "reference", False, 1.0),
    ("hgan", "analytic", True, 0.0),
    ("mocogan", "auto", True, 0.0),
])
def test_trainer_steady_state_has_no_graph_breaks_or_recompiles(model, integrator, amp, r1_gamma,
                                                                request, monkeypatch):
    """The trainer's own step: the integrator (reference: create_graph; analytic: its
    autograd.Function) stays eager around the compiled nets and configuration map, R1 (double
    backward) runs them with compilation stood down. bf16 cases run on exact bf16
    convolution stand-ins (conftest.exact_bf16_convolutions), traced like the real ones:
    this CPU's own are wrong at these shapes (which made the cases skip on CI's machine),
    and what is tested here is the graph, not oneDNN's arithmetic."""
    if amp:
        request.getfixturevalue("exact_bf16_convolutions")
        monkeypatch.setattr("hgan.train.loop.cpu_has_fast_bf16", lambda: True)
    trainer = tiny_trainer(model, integrator, amp, r1_gamma)
    if amp:
        assert trainer.amp_dtype == torch.bfloat16
    counters = compile_all(trainer.models)
    torch.manual_seed(0)
    real = torch.rand(B, T, 3, 16, 16) * 2 - 1
    for _ in range(2):  # warm-up: every shape each net sees in a step has been compiled
        trainer.step(real)
    warm = {k: c.frame_count for k, c in counters.items()}
    assert all(n >= 1 for n in warm.values()), f"every net went through the compiler: {warm}"
    # one graph for the D step (detached fakes, and reals in the fakes' dtype and layout: the
    # test's reals are contiguous fp32), one for the G step (fakes that carry a gradient)
    assert warm["D_I"] == warm["D_V"] == 2, warm
    for _ in range(3):
        stats = trainer.step(real)
        assert all(torch.isfinite(v).all() for v in stats.values())
    assert {k: c.frame_count for k, c in counters.items()} == warm, "steady state recompiled"


@native_bf16
def test_reals_cast_to_bf16_before_a_discriminator_give_the_same_logits_under_autocast():
    """Why the trainer may hand D its real batch in the fakes' bf16 (one compiled graph fewer):
    each discriminator's first layer is a convolution, which autocast runs on a bf16 copy of
    its input anyway, so the logits are bit-identical, in either memory layout."""
    models = tiny()
    torch.manual_seed(0)
    clip = (torch.rand(B, T, 16, 16, 3) * 2 - 1).permute(0, 1, 4, 2, 3)  # the loader's layout
    with torch.autocast("cpu", torch.bfloat16):
        for disc, x in ((models.image_disc, clip[:, 0]), (models.video_disc, clip)):
            for x in (x, x.contiguous()):
                fp32, bf16 = disc(x), disc(x.to(torch.bfloat16))
                assert torch.equal(fp32, bf16), type(disc).__name__


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
    assert all(counters[k].frame_count == 1 for k in ("G_I", "D_I", "D_V")), \
        "the nets really ran compiled"
    assert len(grads[0]) == len(grads[1]) > 0
    for ge, gc in zip(*grads):
        torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model, integrator, compiled_frames", [
    ("hgan", "analytic", 1),
    ("hgan", "reference", 1),
    ("mocogan", "auto", 1),
    ("hnn_gan", "analytic", 0),   # no configuration map: nothing in the motion module compiles
])
def test_compiled_and_eager_motion_agree(model, integrator, compiled_frames):
    """Same noise (drawn eagerly from the same generator seed), same trajectories and the
    same gradients for every motion parameter; state_dict keys unchanged by compile."""
    eager = tiny(seed=1, model=model, integrator=integrator).generator.motion_module
    compiled = tiny(seed=1, model=model, integrator=integrator).generator.motion_module
    keys = list(compiled.state_dict())
    counter = CompileCounterWithBackend("aot_eager")
    compiled.compile(backend=counter, fullgraph=True)
    assert list(compiled.state_dict()) == keys
    results = []
    for mod in (eager, compiled):
        out = mod(3, T, generator=torch.Generator().manual_seed(7))
        loss = out["y"].square().sum() + (out["dHdq"].abs().sum() if "dHdq" in out else 0)
        params = list(mod.parameters())
        # the Hamiltonian's output bias never reaches the dynamics: its gradient is None
        results.append((out, torch.autograd.grad(loss, params, allow_unused=True)))
    assert counter.frame_count == compiled_frames
    (out_e, grads_e), (out_c, grads_c) = results
    assert out_e.keys() == out_c.keys()
    for name in out_e:
        torch.testing.assert_close(out_c[name], out_e[name], rtol=1e-6, atol=1e-6)
    assert [g is None for g in grads_e] == [g is None for g in grads_c]
    assert sum(g is not None for g in grads_e) > 0
    for ge, gc in zip(grads_e, grads_c):
        if ge is not None:
            torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-6)


def _inductor_cxx():
    """The C++ compiler inductor would use (its own search: config.cpp.cxx, g++ on Linux)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        return get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or a torch without this helper
        return None


@pytest.mark.slow
def test_inductor_compiles_a_tiny_image_generator():
    """The real default backend (inductor, C++ code generation) on the smallest G_I: ~11 s
    cold on a 2-core CPU, ~3 s with inductor's on-disk cache warm."""
    if _inductor_cxx() is None:
        pytest.skip("inductor on CPU generates C++ and found no C++ compiler (g++ on PATH)")
    models = tiny(seed=3, channels_last=False)
    g_i = models.generator.image_generator.eval()
    z = torch.randn(2, models.config.latent_dim)
    with torch.no_grad():
        expected = g_i(z)
        g_i.compile(fullgraph=True)
        got = g_i(z)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


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
