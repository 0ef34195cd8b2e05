"""A state of the wrong k is named as such, not blamed on the weights or left to the matmul."""
import pytest
import torch

from hgan.kernels.hamiltonian import HamiltonianMLP
from hgan.kernels.leapfrog.dispatch import leapfrog


@pytest.fixture(params=[False, True], ids=["general", "separable"])
def h2(request):
    torch.manual_seed(0)
    return HamiltonianMLP(2, hidden=32, separable=request.param)


def test_rollout_with_wrong_k_names_q0_and_the_expected_k(h2):
    with pytest.raises(ValueError, match=r"q0 must be \[B, 2\].*k = 2.*\(8, 3\)") as e:
        h2.rollout(torch.randn(8, 3), torch.randn(8, 3), 4, backend="reference")
    assert "weights" not in str(e.value)
    with pytest.raises(ValueError, match=r"p0 must be \[B, 2\].*\(8, 3\)"):
        h2.rollout(torch.randn(8, 2), torch.randn(8, 3), 4, backend="reference")


def test_energy_with_wrong_k_names_q_or_p(h2):
    with pytest.raises(ValueError, match=r"q must be \[B, 2\].*k = 2.*\(8, 3\)"):
        h2(torch.randn(8, 3), torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"p must be \[B, 2\].*\(8, 1\)"):
        h2(torch.randn(8, 2), torch.randn(8, 1))
    with pytest.raises(ValueError, match="same batch size"):
        h2(torch.randn(8, 2), torch.randn(7, 2))
    assert h2(torch.randn(8, 2), torch.randn(8, 2)).shape == (8,)


@pytest.mark.parametrize("call", ["energy", "rollout"])
def test_a_state_in_another_dtype_than_the_weights_is_named(h2, call):
    # H(q, p) on a float32 network left a float64 state to the matmul ("mat1 and mat2 must
    # have the same dtype"); the rollout blamed weights[0].
    q = torch.randn(8, 2, dtype=torch.float64)
    name = "q" if call == "energy" else "q0"
    with pytest.raises(TypeError, match=rf"^{name} has dtype torch.float64, this Hamiltonian's "
                                        r"weights torch.float32"):
        h2(q, q) if call == "energy" else h2.rollout(q, q, 3, backend="reference")
    h = h2.double()                                  # converted, it runs
    assert (h(q, q) if call == "energy" else h.rollout(q, q, 3)[0]).dtype == torch.float64


def test_leapfrog_function_names_the_state_when_only_k_differs(h2):
    w, b = h2.weights_and_biases()
    with pytest.raises(ValueError, match=r"q0 and p0 have k = 3.*expects k = 2") as e:
        leapfrog(torch.randn(8, 3), torch.randn(8, 3), w, b, frames=3, backend="reference")
    assert "must be [out" not in str(e.value)
    # A first layer no [q; p] fits (odd width) is the weights' fault, as before.
    odd = [w[0][:, :3]] + list(w[1:])
    with pytest.raises(ValueError, match=r"weights\[0\] must be \[out, 4\]"):
        leapfrog(torch.randn(8, 2), torch.randn(8, 2), odd, b, frames=3, backend="reference")


@pytest.mark.parametrize("call", ["energy", "rollout"])
def test_a_state_on_another_device_than_the_weights_is_named(h2, call):
    # H(q, p) left a state on another device to the matmul ("Tensor on device cpu is not on
    # the expected device meta!"; on a GPU "Expected all tensors to be on the same device"),
    # and the rollout blamed weights[0], which its caller never passed. The meta device
    # stands in for a GPU: any device other than the weights' takes this path.
    q = torch.randn(8, 2, device="meta")
    name = "q" if call == "energy" else "q0"
    with pytest.raises(ValueError, match=rf"^{name} is on meta, this Hamiltonian's weights on "
                                         r"cpu: move one to the other \(.to\(device\)\)$"):
        h2(q, q) if call == "energy" else h2.rollout(q, q, 3, backend="reference")
    h = h2.to("meta")                                 # moved, it runs
    assert (h(q, q) if call == "energy" else h.rollout(q, q, 3)[0]).device.type == "meta"
