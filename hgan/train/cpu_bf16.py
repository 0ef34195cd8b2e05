"""Whether this CPU's bf16 convolutions are right at the shapes a run will train with.

Why: oneDNN's bf16 convolution kernels have been seen to return wrong gradients with no
error. On an AVX512-BF16 AMD EPYC (torch 2.13, oneDNN's native bf16 path), the weight
gradient of D_V's Conv3d with a (3, 4, 4) kernel on 2-frame inputs (4-frame clips) came back
NaN, 1e37, or finite and 66% off, depending on the thread count; on an AVX512 Xeon without
native bf16 the emulated kernels left the same gradients non-finite. The same layers at other
channel counts and batches were right. So before a CPU run trains under bf16 autocast, every
convolution of its three networks is run once at its real input shape, memory format and
thread count, in bf16 and in float64, and compared: output, input gradient, weight gradient.
Layers a run keeps in fp32 under autocast (the discriminators' logit layers,
hgan.models.networks.fp32_logits) are left out: their bf16 kernels never run.

The tolerance: bf16 rounds each operand to 8 significant bits (relative 2^-9 = 2e-3; the
healthy layers measured 2e-3..3e-3 of their largest value), so 3e-2 leaves a tenfold margin
while the failures seen were 0.66 and beyond.
"""
import copy

import torch
from torch import nn
from torch.nn import functional as F

TOLERANCE = 3e-2
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
          nn.ConvTranspose3d)


def _conv(m, x, w):
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[w.dim() - 3]
        return fn(x, w, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
    fn = (F.conv1d, F.conv2d, F.conv3d)[w.dim() - 3]
    return fn(x, w, None, m.stride, m.padding, m.dilation, m.groups)


def _grads(m, x, w, g, dtype):
    x = x.detach().to(dtype).requires_grad_()
    w = w.detach().to(dtype).requires_grad_()
    y = _conv(m, x, w)
    gx, gw = torch.autograd.grad(y, (x, w), g.to(dtype))
    return y.detach(), gx, gw


def layer_error(m, x, dtype=torch.bfloat16, generator=None):
    """(worst relative error of output, input and weight gradient, which) of conv `m` on
    input `x` in `dtype` against float64, with a random output gradient."""
    with torch.no_grad():
        y = _conv(m, x.float(), m.weight.float())
    # The output gradient in the layout training hands this layer, its output's (channels-last
    # or channels_last_3d under --channels-last): oneDNN picks its kernels by layout.
    g = torch.empty_like(y).copy_(torch.randn(y.shape, generator=generator))
    worst = (0.0, "output")
    for name, a, r in zip(("output", "input gradient", "weight gradient"),
                          _grads(m, x, m.weight, g, dtype), _grads(m, x, m.weight, g, torch.float64)):
        a = a.double()
        err = float((a - r).abs().max() / r.abs().max().clamp_min(1e-30))
        if not torch.isfinite(a).all():
            err = float("inf")
        if not err <= worst[0]:  # NaN-safe
            worst = (err, name)
    return worst


def check(models, batch, frames, clip_frames, channels_last=False, dtype=torch.bfloat16):
    """None when every convolution of the three networks is right in `dtype` at this run's
    shapes (local batch, training frames, clip frames), else a one-line reason naming the
    first wrong layer. Runs on copies: the networks and every RNG are left as they were."""
    nets = {"generator": models.generator, "image discriminator": models.image_disc,
            "video discriminator": models.video_disc}
    nets = {k: copy.deepcopy(v).float().cpu() for k, v in nets.items()}
    seen = []
    # The forward runs as training does, so a layer autocast leaves in fp32 shows as such.
    amp = dtype in (torch.bfloat16, torch.float16)

    def record(name):
        def hook(m, inputs, output):
            if amp and not torch.is_autocast_enabled("cpu"):
                return
            seen.append((name, m, inputs[0].detach().float().clone(
                memory_format=torch.preserve_format)))
        return hook
    for name, net in nets.items():
        for sub, m in net.named_modules():
            if isinstance(m, _CONVS):
                m.register_forward_hook(record(f"{name} {sub}"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=amp):
        videos, _ = nets["generator"](batch, frames, generator=gen)
        img = videos[:, 0]
        if channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        nets["image discriminator"](img)
        nets["video discriminator"](videos[:, :clip_frames])
    short = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    for name, m, x in seen:
        err, what = layer_error(m, x, dtype, gen)
        if not err <= TOLERANCE:
            how = ("not finite" if err == float("inf")
                   else f"off by {err:.2g} of its largest value against float64")
            return (f"this CPU's {short.get(dtype, dtype)} convolution is wrong at this run's "
                    f"shapes ({name}, input {'x'.join(map(str, x.shape))}: {what} {how})")
    return None
