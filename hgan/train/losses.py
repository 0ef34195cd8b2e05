"""GAN objective (MoCoGAN's, on logits), the R1 penalty and discriminator accuracy."""
import torch
import torch.nn.functional as F


def d_loss(real_logits, fake_logits):
    """-log D(real) - log(1 - D(fake)) on logits, computed in fp32 (safe under autocast)."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def g_loss(fake_logits):
    """Non-saturating generator loss -log D(fake)."""
    fake_logits = fake_logits.float()
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def accuracy(real_logits, fake_logits):
    """Fraction of real and fake inputs the discriminator classifies correctly."""
    correct = (real_logits > 0).float().sum() + (fake_logits < 0).float().sum()
    return correct / (real_logits.numel() + fake_logits.numel())


def r1_penalty(disc, real, gamma, scaler=None):
    """(logits, gamma/2 * E ||grad_x D(x)||^2) on real inputs, in fp32 outside autocast.

    With a GradScaler the input gradient is taken of the *scaled* output (so fp16 backward
    does not underflow) and unscaled by hand before forming the penalty, as in PyTorch's AMP
    gradient-penalty recipe. The returned logits also serve the BCE term, so D sees the real
    batch once (BatchNorm statistics stay those of a single forward).
    """
    x = real.detach().float().requires_grad_(True)
    with torch.autocast(x.device.type, enabled=False):
        logits = disc(x)
        out = logits.sum()
        if scaler is not None and scaler.is_enabled():
            (g,) = torch.autograd.grad(scaler.scale(out), x, create_graph=True)
            g = g / scaler.get_scale()
        else:
            (g,) = torch.autograd.grad(out, x, create_graph=True)
        penalty = 0.5 * gamma * g.pow(2).flatten(1).sum(1).mean()
    return logits, penalty
