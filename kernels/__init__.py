"""hgan.kernels: the leapfrog integrator of the learned Hamiltonian, usable on its own.

Depends on torch (and on triton for the fused backend only, imported on first use); never on
the rest of hgan. Public API:

    q, p, dHdq = leapfrog(q0, p0, weights, biases, dt=0.05, frames=T, backend="auto",
                          scheme="order2", precision="auto")
    H = HamiltonianMLP(k)(q, p);  q, p, dHdq = HamiltonianMLP(k).rollout(q0, p0, T)
    loss = cyclic_loss(dHdq, lam=0.01)

Submodules: hgan.kernels.leapfrog.{reference, analytic, fused, dispatch, common, check}, and
the fused backend's Triton kernels {latency, throughput, streamed, tile, ops}. Beside them,
hgan.kernels.gru: the MoCoGAN baseline's GRU rollout in two Triton kernels (used by
hgan.models.gru_unroll; imported on its own, never by this package). The name
``leapfrog`` on this package is the function, which carries the submodules as attributes:
``from hgan.kernels.leapfrog import analytic``, ``import hgan.kernels.leapfrog.analytic as
A`` and ``hgan.kernels.leapfrog.analytic`` (once imported) all give the module.
"""
from .leapfrog.common import PRECISION_CHOICES, PRECISIONS, SCHEMES, leapfrog_flops
from .leapfrog.dispatch import DERIVATIVE_ORDERS, FUSED_CONTRACT, leapfrog
from .hamiltonian import HamiltonianMLP, cyclic_loss


def _bind_submodules():
    # The function hides the subpackage of its name: the subpackage's modules loaded so far
    # are bound on it too (later ones bind themselves, leapfrog/__init__.py), so that
    # `import hgan.kernels.leapfrog.analytic as A` and `hgan.kernels.leapfrog.fused` work.
    import sys
    prefix = __name__ + ".leapfrog."
    for name, module in list(sys.modules.items()):
        if name.startswith(prefix) and "." not in name[len(prefix):]:
            setattr(leapfrog, name[len(prefix):], module)


_bind_submodules()

__all__ = ["leapfrog", "HamiltonianMLP", "cyclic_loss", "FUSED_CONTRACT", "DERIVATIVE_ORDERS",
           "SCHEMES", "PRECISIONS", "PRECISION_CHOICES", "leapfrog_flops"]
