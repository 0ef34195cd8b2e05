"""The learned Hamiltonian H(q, p) as an nn.Module, and the cyclic-coordinate loss.

General form: one MLP on [q; p]. Separable form H = K(p) + V(q): two MLPs whose layers are
assembled on each call into one block-diagonal MLP on [q; p] (V's units first, K's second;
the last layer concatenated, the output biases summed), so every integrator backend runs it
through the same kernel and autograd routes the gradients back to the blocks. With the
separable form either leapfrog scheme is the exact Stormer-Verlet step (symplectic, reversible).
"""
import torch
from torch import nn

from .leapfrog.common import ACTIVATIONS
from .leapfrog.dispatch import leapfrog
from .leapfrog.reference import mlp_energy


def _mlp(n_in, hidden, depth):
    dims = [n_in] + [hidden] * depth + [1]
    return nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))


class HamiltonianMLP(nn.Module):
    """H(q, p) with ``depth`` hidden layers of width ``hidden``.

    separable=True builds K(p) and V(q) with hidden // 2 units each, so the assembled MLP has
    the same width ``hidden`` as the general form (and the same fused-kernel eligibility).
    """

    def __init__(self, k, hidden=100, depth=2, activation="softplus", separable=False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if k < 1 or depth < 1 or hidden < 1:
            raise ValueError(f"need k >= 1, hidden >= 1 and depth >= 1, got k={k}, "
                             f"hidden={hidden}, depth={depth}")
        if separable and (hidden % 2 or hidden < 2):
            raise ValueError(f"separable form splits hidden between K and V: it must be even, "
                             f"got {hidden}")
        self.k, self.hidden, self.depth = k, hidden, depth
        self.activation, self.separable = activation, separable
        if separable:
            self.kinetic = _mlp(k, hidden // 2, depth)    # K(p)
            self.potential = _mlp(k, hidden // 2, depth)  # V(q)
        else:
            self.layers = _mlp(2 * k, hidden, depth)

    def extra_repr(self):
        return f"activation={self.activation!r}, separable={self.separable}"

    def weights_and_biases(self):
        """The MLP on [q; p] in nn.Linear layout (block-diagonal for the separable form)."""
        if not self.separable:
            return [m.weight for m in self.layers], [m.bias for m in self.layers]
        weights, biases = [], []
        for i, (v, kin) in enumerate(zip(self.potential, self.kinetic)):
            if i == len(self.potential) - 1:
                weights.append(torch.cat([v.weight, kin.weight], 1))  # [1, hidden]
                biases.append(v.bias + kin.bias)
            else:
                weights.append(torch.block_diag(v.weight, kin.weight))
                biases.append(torch.cat([v.bias, kin.bias]))
        return weights, biases

    def _check_state(self, names, q, p):
        # Names the state rather than the weights: a network of the wrong k would otherwise
        # fail inside the matmul (forward) or blame weights[0] (rollout).
        for name, t in zip(names, (q, p)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 2 or t.shape[1] != self.k:
                raise ValueError(f"{name} must be [B, {self.k}] (this Hamiltonian was built for "
                                 f"k = {self.k}), got shape {tuple(t.shape)}")
        if q.shape[0] != p.shape[0]:
            raise ValueError(f"{names[0]} and {names[1]} must have the same batch size, got "
                             f"{q.shape[0]} and {p.shape[0]}")
        dtype = next(self.parameters()).dtype
        for name, t in zip(names, (q, p)):
            if t.dtype != dtype:   # the matmul's "mat1 and mat2 must have the same dtype"
                raise TypeError(f"{name} has dtype {t.dtype}, this Hamiltonian's weights "
                                f"{dtype}: convert one to the other (.to(dtype))")
        device = next(self.parameters()).device
        for name, t in zip(names, (q, p)):
            if t.device != device:   # the matmul's "Expected all tensors to be on the same
                # device"; the rollout's check would blame weights[0], never passed here
                raise ValueError(f"{name} is on {t.device}, this Hamiltonian's weights on "
                                 f"{device}: move one to the other (.to(device))")

    def forward(self, q, p):
        """H at rows (q, p) [B, k] -> [B]."""
        self._check_state(("q", "p"), q, p)
        weights, biases = self.weights_and_biases()
        return mlp_energy(torch.cat([q, p], 1), weights, biases, self.activation)

    def rollout(self, q0, p0, frames, dt=0.05, backend="auto", scheme="order2",
                precision="auto"):
        """Leapfrog rollout: q, p [B, frames, k] and dHdq [B, frames-1, k]."""
        self._check_state(("q0", "p0"), q0, p0)
        weights, biases = self.weights_and_biases()
        return leapfrog(q0, p0, weights, biases, dt=dt, frames=frames,
                        activation=self.activation, backend=backend, scheme=scheme,
                        precision=precision)


def cyclic_loss(dHdq, lam=0.01):
    """L_cyc = lam / B * sum over frames t < T-1 and coordinates i of |dH/dq_i(q_t, p_t)|."""
    if not isinstance(dHdq, torch.Tensor):
        # the whole (q, p, dHdq) of a rollout is the likely slip
        raise TypeError(f"dHdq must be a torch.Tensor [B, T-1, k] (the rollout's third result), "
                        f"got {type(dHdq).__name__}")
    if dHdq.dim() != 3:
        raise ValueError(f"dHdq must be [B, T-1, k], got shape {tuple(dHdq.shape)}")
    if dHdq.shape[0] == 0:
        raise ValueError("dHdq has an empty batch: L_cyc is a mean over the batch")
    return lam / dHdq.shape[0] * dHdq.abs().sum()
