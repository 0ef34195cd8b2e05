"""The physics metrics with per-body parameters (two_body_colors masses, double pendulum arms)."""
import numpy as np

from hgan.data import get_system
from hgan.evaluate import probe


def test_energy_drift_with_per_body_masses_matches_closed_form():
    # Two bodies at rest 2 apart: H = -g m1 m2 / 2, then with body 1 moving at p:
    # H = |p|^2 / (2 m1) - g m1 m2 / 2. Masses 0.5 and 1.5, g = 1.
    system = get_system("two_body_colors")
    m1, m2, g = 0.5, 1.5, 1.0
    rest = [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    moving = [-1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    h = np.array([-g * m1 * m2 / 2, 1.0 / (2 * m1) - g * m1 * m2 / 2])  # -0.375, 0.625
    drift = probe.energy_drift(system, np.array([[rest, moving]]),
                               {"m": [[m1, m2]], "g": [g]})
    # The spec's std/|mean|: 0.5 / 0.125, though |mean| is far below g * mean(m)^2 = 1.
    np.testing.assert_allclose(drift, [h.std() / abs(h.mean())], rtol=1e-12)
    np.testing.assert_allclose(drift, [4.0], rtol=1e-12)
    # Swapping the masses changes H: the metric uses each body's own mass.
    swapped = probe.energy_drift(system, np.array([[rest, moving]]),
                                 {"m": [[m2, m1]], "g": [g]})
    assert not np.isclose(swapped[0], drift[0])


def test_constant_params_keep_the_body_axis():
    params = {"m": np.array([[0.4, 0.6], [0.5, 0.5], [0.6, 0.4]]), "g": np.array([2.5, 3.0, 4.0]),
              "l": np.array([[0.8, 1.0], [0.9, 0.9], [1.0, 0.8]])}
    out = probe.constant_params(params, 4)
    np.testing.assert_array_equal(out["m"], np.tile([0.5, 0.5], (4, 1)))
    np.testing.assert_array_equal(out["g"], np.full(4, 3.0))
    system = get_system("double_pendulum_colors")
    states = np.zeros((4, 3, 4))  # hanging at rest: H = -(m1 + m2) g l1 - m2 g l2
    drift = probe.energy_drift(system, states, out)
    np.testing.assert_array_equal(drift, np.zeros(4))
    np.testing.assert_allclose(system.hamiltonian(states, out),
                               np.full((4, 3), -(1.0 * 3.0 * 0.9) - 0.5 * 3.0 * 0.9))


def test_energy_drift_divides_by_the_size_of_a_negative_mean_energy():
    # Two bodies of mass 1 at rest (g = 1), 0.5 then 0.25 apart: H = -2, -4 (mean -3, std 1),
    # and |mean| is above the system's scale g * mean(m)^2 = 1: drift 1/3.
    system = get_system("two_body_colors")
    states = np.array([[[-0.25, 0.0, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0],
                        [-0.125, 0.0, 0.125, 0.0, 0.0, 0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(system.hamiltonian(states, {"m": np.array([[1.0, 1.0]]),
                                                           "g": np.array([1.0])}), [[-2.0, -4.0]])
    drift = probe.energy_drift(system, states, {"m": [[1.0, 1.0]], "g": [1.0]})
    np.testing.assert_allclose(drift, [1 / 3], rtol=1e-12)


def test_a_double_pendulum_drift_is_floored_at_m_g_l_where_its_energy_crosses_zero():
    # Hanging at rest, then with p1 = p2 = 0 at angles where the potential is 0 on average:
    # H = -(m1 + m2) g l1 cos q1 - m2 g l2 cos q2. With m = l = g = 1: rest -3, and q1 = q2 = pi/2
    # gives 0, q1 = q2 = pi gives +3: mean 0, std sqrt(6). Against |mean| the drift would be
    # infinite; against the energy scale m g l = 1 it is sqrt(6).
    system = get_system("double_pendulum_colors")
    pr = {"m": [[1.0, 1.0]], "l": [[1.0, 1.0]], "g": [1.0]}
    states = np.array([[[0.0, 0.0, 0.0, 0.0], [np.pi / 2, np.pi / 2, 0.0, 0.0],
                        [np.pi, np.pi, 0.0, 0.0]]])
    np.testing.assert_allclose(system.hamiltonian(states, {k: np.asarray(v) for k, v in pr.items()}),
                               [[-3.0, 0.0, 3.0]], atol=1e-12)
    np.testing.assert_allclose(probe.energy_drift(system, states, pr), [np.sqrt(6.0)], rtol=1e-12)
    assert probe.drift_relative_to(system) == "max(|mean H|, energy scale)"
    assert probe.drift_relative_to(get_system("two_body")) == "|mean H|"
