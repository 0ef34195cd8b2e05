"""hgan.kernels: the leapfrog integrator of the learned Hamiltonian, usable on its own.

Depends on torch (and on triton for the fused backend only, imported on first use); never on
the rest of hgan. Public API:

    q, p, dHdq = leapfrog(q0, p0, weights, biases, dt=0.05, frames=T, backend="auto",
                          scheme="order2", precision="auto")
    H = HamiltonianMLP(k)(q, p);  q, p, dHdq = HamiltonianMLP(k).rollout(q0, p0, T)
    loss = cyclic_loss(dHdq, lam=0.01)

Submodules: hgan.kernels.leapfrog.{reference, analytic, fused, dispatch, common}. The name
``leapfrog`` on this package is the function; import the submodules with
``from hgan.kernels.leapfrog import analytic`` (sys.modules resolves them).
"""
from .leapfrog.common import PRECISION_CHOICES, PRECISIONS, SCHEMES, leapfrog_flops
from .leapfrog.dispatch import DERIVATIVE_ORDERS, FUSED_CONTRACT, leapfrog
from .hamiltonian import HamiltonianMLP, cyclic_loss

__all__ = ["leapfrog", "HamiltonianMLP", "cyclic_loss", "FUSED_CONTRACT", "DERIVATIVE_ORDERS",
           "SCHEMES", "PRECISIONS", "PRECISION_CHOICES", "leapfrog_flops"]
