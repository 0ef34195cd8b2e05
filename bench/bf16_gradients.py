"""How far `--amp`'s bf16 gradients are from float64 ones, next to how far one batch's
gradient is from another's.

    PYTHONPATH=. python bench/bf16_gradients.py                  # hgan, default sizes, CPU
    python bench/bf16_gradients.py --model mocogan --device cuda --seeds 1 2 3 4

For each parameter of G_I, D_I and D_V at initialisation: the relative L2 distance of its
bf16-autocast gradient (and of its fp32 one) to the float64 gradient of the same batch and
noise, and the distance of the float64 gradient of another batch to that of this one. The
generator's gradient is its adversarial loss's (`g_loss` through both discriminators), the
discriminators' is `d_loss` with uniform-noise videos as the real batch (no dataset needed).
The motion latents are drawn once in fp32 and held fixed: the rollout runs in fp32 under
`--amp` as well. bf16 error well below the batch-to-batch distance means bf16 rounding is a
small addition to the noise SGD already sees.

No GPU needed; on a CPU without native bf16 (AVX512-BF16/AMX) bf16 runs through slow reference
kernels and `--amp` trains in fp32 anyway (docs/training.md#mixed-precision).
"""
import argparse
import copy
from operator import attrgetter

import torch

from hgan.models import ModelConfig, build_models
from hgan.train.losses import d_loss, g_loss

NETS = ("generator.image_generator", "image_disc", "video_disc")


def gradients(models, source, seed, batch, frames, dtype, amp):
    """{parameter name: gradient (float64)} of G_I (generator loss) and of D_I, D_V
    (discriminator loss) for one batch: noise from `seed`, motion from the fp32 `source`."""
    dev = next(source.generator.parameters()).device
    g = torch.Generator(dev).manual_seed(seed)
    cf = models.config.clip_frames
    with torch.no_grad():
        z_c = source.generator.content(batch, generator=g)
        y = source.generator.motion(batch, frames, generator=g)["y"]
        real = torch.rand(batch, frames, models.config.channels, models.config.resolution,
                          models.config.resolution, generator=g, device=dev) * 2 - 1
    j = torch.randint(0, frames, (batch,), generator=g, device=dev)
    s = torch.randint(0, frames - cf + 1, (batch,), generator=g, device=dev)
    rows = torch.arange(batch, device=dev)
    clip_idx = s[:, None] + torch.arange(cf, device=dev)
    d_i, d_v = models.image_disc, models.video_disc
    with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
        fake = models.generator.render(z_c.to(dtype), y.to(dtype))
        img, clip = fake[rows, j], fake[rows[:, None], clip_idx]
        real = real.to(dtype)
        loss_g = g_loss(d_i(img)) + g_loss(d_v(clip))
        loss_d = (d_loss(d_i(real[rows, j]), d_i(img.detach()))
                  + d_loss(d_v(real[rows[:, None], clip_idx]), d_v(clip.detach())))
    out = {}
    for path, loss in ((NETS[0], loss_g), (NETS[1], loss_d), (NETS[2], loss_d)):
        named = list(attrgetter(path)(models).named_parameters())
        grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True)
        out.update({f"{path}.{k}": gr.double() for (k, _), gr in zip(named, grads)})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="hgan")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    args = ap.parse_args(argv)
    if args.device == "cpu":
        from hgan.train.loop import cpu_has_fast_bf16
        if not cpu_has_fast_bf16():
            print("note: this CPU has no native bf16; its bf16 kernels are slow references")
    torch.manual_seed(0)
    # the analytic integrator: the motion latents are drawn without a graph in fp32 anyway
    models = build_models(ModelConfig(model=args.model, integrator="analytic"), args.device)
    if args.frames < models.config.clip_frames or args.batch < 2:
        ap.error(f"need --frames >= {models.config.clip_frames} (the clips D_V takes) and "
                 "--batch >= 2 (BatchNorm)")
    wide = copy.deepcopy(models)
    for path in NETS:
        attrgetter(path)(wide).double()
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    ratios = {}   # parameter -> [bf16 error / other batch's distance, per seed]
    for seed in args.seeds:
        run = lambda m, s, dt, amp: gradients(m, models, s, args.batch, args.frames, dt, amp)  # noqa: E731
        ref = run(wide, seed, torch.float64, False)
        other = run(wide, seed + 1000, torch.float64, False)
        fp32, bf16 = run(models, seed, torch.float32, False), run(models, seed, torch.float32, True)
        print(f"seed {seed}: relative L2 distance to the float64 gradient of the same batch")
        print(f"  {'parameter':42s} {'fp32':>9s} {'bf16':>9s} {'other batch':>12s}")
        for k in ref:
            e32, e16, eb = rel(fp32[k], ref[k]), rel(bf16[k], ref[k]), rel(other[k], ref[k])
            ratios.setdefault(k, []).append(e16 / eb)
            print(f"  {k:42s} {e32:9.2e} {e16:9.2e} {eb:12.2e}")
    worst = {k: max(v) for k, v in ratios.items()}
    small = sum(v < 0.2 for v in worst.values())
    top = max(worst, key=worst.get)
    print(f"bf16 error below 0.2x the other batch's distance for {small} of {len(worst)} "
          f"parameters over seeds {args.seeds}, at most {worst[top]:.3f}x ({top}) "
          f"({args.model}, batch {args.batch}, {args.frames} frames, {args.device}, "
          f"torch {torch.__version__})")
    for k, v in sorted(worst.items(), key=lambda kv: -kv[1]):
        if v >= 0.2:
            print(f"  {k}: up to {v:.2f}x")


if __name__ == "__main__":
    main()
