"""What a motion module learned (hgan.evaluate.structure), against hand-built inputs and the
module's own rollout."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hgan.evaluate import structure
from hgan.models import ModelConfig, build_models

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    cfg = ModelConfig(model="hgan", k=3, motion_dim=6, content_dim=8, hidden=16, ngf=8, ndf=8)
    return build_models(cfg).generator


def _initial_state(g, n, seed):
    eps = torch.randn(n, g.config.motion_dim, generator=torch.Generator().manual_seed(seed))
    return g.motion_module.initial_state(eps)


def test_motion_points_are_q_one_leapfrog_step_after_the_initial_state(generator):
    g = generator
    q0, p0 = _initial_state(g, 6, seed=3)
    with torch.enable_grad():
        q, _, _ = g.motion_module.hamiltonian.rollout(q0, p0, 2, dt=g.config.dt)
    want = q[:, 1].detach().double().numpy()
    got = structure.motion_points(g, n=6, seed=3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.abs(got - q0.detach().double().numpy()).max() > 1e-4  # a step was taken


def test_the_active_floor_spans_the_rollout_duration(generator):
    # 5 frames are 4 steps of dt: the floor is the rate that moves a momentum by 1% of the
    # momenta's spread in 4 dt.
    g = generator
    with torch.enable_grad():
        p = g.motion(8, 5, generator=torch.Generator().manual_seed(2))["p"].detach().double()
    am = structure.active_momenta(g, n=8, frames=5, seed=2)
    want = structure.ACTIVE_FLOOR * float(p.numpy().std()) / (4 * g.config.dt)
    assert am["floor"] == pytest.approx(want, rel=0.01)


@pytest.mark.parametrize("duration, active", [(2.0, 1), (0.5, 0)])
def test_the_active_floor_is_a_rate(duration, active):
    # One dimension at 0.01 (10% of the largest is 0.001): the floor 0.01 * spread / duration
    # alone decides, 0.005 over 2 time units (active), 0.02 over 0.5 (not).
    got = structure.count_active([0.01, 0.0, 0.0], p_spread=1.0, duration=duration)
    assert got["floor"] == pytest.approx(0.01 / duration, rel=1e-12)
    assert got["active_dims"] == active


def test_rollout_summary_is_the_median_over_rollouts_of_the_max_over_time(monkeypatch):
    # 3 rollouts x 4 steps. Per rollout max |dH| over time: 0.5, 0.3, 0.9 (median 0.5); the
    # max over rollouts per step would give 0, 0.3, 0.5, 0.9 (median 0.4).
    fwd = np.array([[0.0, 0.1, -0.5, 0.2], [0.0, 0.3, 0.1, 0.0], [0.0, -0.05, 0.02, 0.9]])
    bwd = np.array([[0.0, -0.2, 0.1, 0.05], [0.0, 0.4, -0.6, -0.1], [0.0, 0.01, 0.0, -0.02]])
    monkeypatch.setattr(structure, "_learned_energy",
                        lambda g, n, steps, dt, seed: (fwd if dt > 0 else bwd).copy())
    stub = SimpleNamespace(motion_module=SimpleNamespace(hamiltonian=object()))
    s = structure.energy_rollouts(stub, n=3, steps=3, seed=0, dt=0.1)["summary"]
    assert s["forward_max_abs_rel_drift"] == 0.5 and s["backward_max_abs_rel_drift"] == 0.2
    assert s["forward_final_rel_drift"] == 0.2 and s["backward_final_rel_drift"] == -0.02
    assert s["dt"] == 0.1 and s["steps"] == 3 and s["n"] == 3


class _GivenRollout:
    """A Hamiltonian generator whose rollout is given: `out` is what its motion returns
    (any of "q", "p", "dHdq"), `h` its learned H(q, p)."""

    def __init__(self, out, dt=0.25, h=None):
        self.out, self.device = out, torch.device("cpu")
        self.config = SimpleNamespace(dt=dt)
        self.motion_module = SimpleNamespace(hamiltonian=h or object())

    def motion(self, n, frames, *, dt=None, generator=None):
        return dict(self.out)


def _p_of_unit_spread(frames, k=2):
    p = torch.zeros(1, frames, k, dtype=torch.float64)
    p[0, ::2] = 1.0
    p[0, 1::2] = -1.0
    return p * (1.0 / float(p.std()))


def test_active_momenta_average_the_magnitude_of_dp_dt():
    # dp_0/dt swings in sign and size over the four steps (mean |dp/dt| 3, mean dp/dt 0: any
    # step left out or counted twice changes the mean), dp_1/dt is 0.5 throughout. Momenta of
    # spread 1: floor 0.01, threshold 10% of 3 = 0.3; both count.
    dhdq = torch.tensor([[[1.0, -0.5], [-2.0, -0.5], [3.0, -0.5], [-6.0, -0.5]]])
    g = _GivenRollout({"dHdq": dhdq, "p": _p_of_unit_spread(5)})
    am = structure.active_momenta(g, n=1, frames=5)
    np.testing.assert_allclose(am["mean_abs_dpdt"], [3.0, 0.5], rtol=1e-12)
    assert am["floor"] == pytest.approx(0.01) and am["threshold"] == pytest.approx(0.3)
    assert am["active_dims"] == 2 and am["k"] == 2


def test_active_momenta_without_dhdq_take_finite_differences_of_p():
    # p_0 steps by 1 each frame, p_1 once by 0.5: rates 1 / 0.25 = 4 and 0.5 / 4 / 0.25.
    p = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.5]]])
    am = structure.active_momenta(_GivenRollout({"p": p}), n=1, frames=5)
    np.testing.assert_allclose(am["mean_abs_dpdt"], [4.0, 0.5], rtol=1e-6)


def test_nothing_moving_is_no_active_dimension():
    # Momenta all equal and never changing: no spread, no rate, and no dimension is active.
    got = structure.count_active([0.0, 0.0, 0.0], p_spread=0.0, duration=1.0)
    assert got["active_dims"] == 0


def test_learned_energy_drift_is_relative_to_the_size_of_a_negative_h0():
    # H = q: -2, -3, -1 along the rollout, i.e. changes of -1 and +1 on |H0| = 2.
    q = torch.tensor([[[-2.0], [-3.0], [-1.0]]])
    g = _GivenRollout({"q": q, "p": torch.zeros_like(q)}, h=lambda q, p: q.sum(-1))
    out = structure.energy_rollouts(g, n=1, steps=2, dt=0.1)
    np.testing.assert_allclose(out["forward"], [[0.0, -0.5, 0.5]], rtol=1e-12)
    assert out["summary"]["forward_max_abs_rel_drift"] == pytest.approx(0.5)


def test_learned_energy_drift_is_relative_to_the_initial_energy():
    # H = q: 2, 3, 5 along the rollout: changes of 0.5 and 1.5 of H0 (relative to the mean
    # |H| of 10/3 they would read 0.3 and 0.9).
    q = torch.tensor([[[2.0], [3.0], [5.0]]])
    g = _GivenRollout({"q": q, "p": torch.zeros_like(q)}, h=lambda q, p: q.sum(-1))
    out = structure.energy_rollouts(g, n=1, steps=2, dt=0.1)
    np.testing.assert_allclose(out["forward"], [[0.0, 0.5, 1.5]], rtol=1e-12)
    # and below 1 too: H = 0.2, 0.3, 0.1 changes by +-0.5 of H0 (a floor of 1 on |H0|, not
    # the 1e-12 that only guards a zero, would read +-0.1)
    q = torch.tensor([[[0.2], [0.3], [0.1]]], dtype=torch.float64)
    g = _GivenRollout({"q": q, "p": torch.zeros_like(q)}, h=lambda q, p: q.sum(-1))
    out = structure.energy_rollouts(g, n=1, steps=2, dt=0.1)
    np.testing.assert_allclose(out["forward"], [[0.0, 0.5, -0.5]], rtol=1e-12)


def test_forward_and_backward_rollouts_start_from_one_state(generator, monkeypatch):
    # The docstring's promise: the same seed, so the +dt and -dt curves leave from the same
    # (q0, p0), and then part (a time step of opposite sign).
    g, starts = generator, []
    motion = g.motion

    def recording(n, frames, **kw):
        out = motion(n, frames, **kw)
        starts.append((kw["dt"], out["q"][:, :2].detach().clone(), out["p"][:, 0].detach().clone()))
        return out

    monkeypatch.setattr(g, "motion", recording)
    structure.energy_rollouts(g, n=4, steps=2, seed=5)
    (dt_f, q_f, p_f), (dt_b, q_b, p_b) = starts
    assert dt_f == -dt_b == g.config.dt
    torch.testing.assert_close(q_f[:, 0], q_b[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(p_f, p_b, rtol=0, atol=0)
    assert (q_f[:, 1] - q_b[:, 1]).abs().max() > 1e-6


@pytest.mark.parametrize("rates", [[float("nan"), 1.0], [float("inf"), 1.0]])
def test_non_finite_rates_are_not_counted(rates):
    # NaN would compare as inactive and inf would set the threshold to inf: neither is a count.
    got = structure.count_active(rates, p_spread=1.0, duration=1.0)
    assert got["active_dims"] is None and "non-finite" in got["note"]


def test_active_momenta_average_over_every_rollout():
    # Two rollouts: dp_0/dt is 1 throughout the first and -3 throughout the second, so the
    # mean |dp_0/dt| over rollouts and steps is 2 (the first rollout alone would read 1);
    # dp_1/dt is 0.5 in both.
    dhdq = torch.tensor([[[-1.0, 0.5]] * 4, [[3.0, 0.5]] * 4])
    p = torch.cat([_p_of_unit_spread(5), -_p_of_unit_spread(5)])
    am = structure.active_momenta(_GivenRollout({"dHdq": dhdq, "p": p}), n=2, frames=5)
    np.testing.assert_allclose(am["mean_abs_dpdt"], [2.0, 0.5], rtol=1e-12)
    assert am["active_dims"] == 2
