"""Ground truth of the Toy Physics systems against closed forms, scipy and invariants."""
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from hgan.data import SYSTEMS, get_system
from hgan.data.simulate import (DT, energy_drift, integrate, mass_spring_exact, rk4,
                                simulate_split)

CONSERVATIVE = [s for s in SYSTEMS if not s.endswith("_friction")]
FRICTION = [s for s in SYSTEMS if s.endswith("_friction")]


def _sim(name, n, frames, seed=0):
    return simulate_split(get_system(name), seed, "train", np.arange(n), frames)


@pytest.mark.parametrize("name", CONSERVATIVE)
def test_energy_drift_512_frames_and_canvas(name):
    system = get_system(name)
    sim = _sim(name, 3, 512)
    e = system.hamiltonian(sim["states"], sim["params"])  # [n, T], float64 ground truth
    denom = np.abs(e[:, 0])
    if system.base == "double_pendulum":  # H crosses zero there: use arm 1's m g l scale too
        pr = sim["params"]
        denom = np.maximum(denom, pr["m"][:, 0] * pr["g"] * pr["l"][:, 0])
    drift = np.abs(e - e[:, :1]).max(1) / denom
    assert drift.max() < 1e-6, drift
    pos = system.positions(sim["states"], sim["params"])
    assert np.abs(pos).max() <= system.canvas  # no particle ever leaves the canvas
    for k, (lo, hi) in system.param_ranges.items():
        assert ((sim["params"][k] >= lo) & (sim["params"][k] <= hi)).all()


def test_a_two_body_orbit_below_the_energy_scale_is_held_to_its_own_energy():
    # two_body_colors trajectory 1098 (seed 0, train) has |H(0)| = 1.15 under g m^2 = 2.66;
    # measured against that scale it drifted 4.7e-7 and passed, against |H(0)| 1.1e-6.
    system = get_system("two_body_colors")
    sim = simulate_split(system, 0, "train", np.array([1098]), 512)
    e = system.hamiltonian(sim["states"], sim["params"])
    assert np.abs(e[:, 0]) < system.energy_scale(sim["params"])    # the case in question
    drift = np.abs(e - e[:, :1]).max(1) / np.abs(e[:, 0])
    assert drift.max() < 1e-6, drift


@pytest.mark.parametrize("name", FRICTION)
def test_friction_loses_energy_monotonically(name):
    system = get_system(name)
    sim = _sim(name, 4, 200)
    e = system.hamiltonian(sim["states"], sim["params"])
    assert (np.diff(e, axis=1) < 1e-12).all()
    assert (e[:, -1] < 0.9 * e[:, 0]).all()


@pytest.mark.parametrize("name", FRICTION)
def test_friction_dissipates_energy_at_the_specs_rate(name):
    # The spec's dp/dt = -dH/dq - 0.05 dH/dp makes dH/dt = -0.05 |dH/dp|^2 along a trajectory.
    # Fit the rate from float64 H of the frames: H(t+2dt) - H(t) against Simpson's integral
    # of |dH/dp|^2, dH/dp by central differences of H itself.
    system = get_system(name)
    sim = _sim(name, 2, 60)
    x, pr, k = sim["states"], sim["params"], system.dof
    e = system.hamiltonian(x, pr)
    eps = 1e-6
    dhdp = np.stack([(system.hamiltonian(x + eps * u, pr) - system.hamiltonian(x - eps * u, pr))
                     / (2 * eps) for u in np.eye(2 * k)[k:]], -1)
    g = (dhdp ** 2).sum(-1)
    lost = e[:, 2:] - e[:, :-2]
    work = DT / 3 * (g[:, :-2] + 4 * g[:, 1:-1] + g[:, 2:])
    rate = -(lost * work).sum() / (work ** 2).sum()
    assert abs(rate / 0.05 - 1) < 1e-2, rate  # Simpson at dt = 0.05: ~1e-3 off


@pytest.mark.parametrize("base", ["mass_spring", "pendulum", "double_pendulum", "two_body",
                                  "three_body", "double_pendulum_colors", "two_body_colors"])
def test_vector_field_is_hamiltons_equations(base):
    # dq/dt = dH/dp, dp/dt = -dH/dq against central differences of H itself.
    system = get_system(base)
    rng = np.random.default_rng(1)
    pr = {k: np.array([system.sample_params(rng)[k]]) for k in system.param_names}
    x = system.sample_state(rng, {k: v[0] for k, v in pr.items()})[None]
    f = system.vector_field(x, pr)[0]
    eps, k = 1e-6, system.dof
    grad = np.array([(system.hamiltonian(x + eps * e, pr) - system.hamiltonian(x - eps * e, pr))[0]
                     / (2 * eps) for e in np.eye(2 * k)])
    np.testing.assert_allclose(f, np.concatenate([grad[k:], -grad[:k]]), rtol=1e-6, atol=1e-7)


def test_mass_spring_closed_form():
    system = get_system("mass_spring")
    pr = {"k": np.array([2.0, 2.0]), "m": np.array([0.5, 0.5])}
    x0 = np.array([[0.7, 0.1], [-0.2, 0.9]])
    exact = mass_spring_exact(x0, pr, 100)
    t = np.arange(100) * DT
    w = np.sqrt(2.0 / 0.5)
    # q = q0 cos(wt) + p0/(m w) sin(wt) solves q'' = -w^2 q with q(0) = q0, m q'(0) = p0.
    q = x0[:, :1] * np.cos(w * t) + x0[:, 1:] / (0.5 * w) * np.sin(w * t)
    np.testing.assert_allclose(exact[..., 0], q, atol=1e-12)
    p = -x0[:, :1] * 0.5 * w * np.sin(w * t) + x0[:, 1:] * np.cos(w * t)  # m dq/dt
    np.testing.assert_allclose(exact[..., 1], p, atol=1e-12)
    numeric, _ = rk4(system, x0, pr, 100, 10)
    np.testing.assert_allclose(exact, numeric, atol=1e-7)


@pytest.mark.parametrize("m, g, l", [(0.5, 3.0, 1.0), (0.7, 3.0, 0.6)])
def test_pendulum_small_angle_period(m, g, l):
    # 2 pi sqrt(l / g) in seconds, whatever m: l != 1 tells the kinetic term p^2 / (2 m l^2)
    # from p^2 / (2 m l). Frames are the spec's 0.05 s apart, written out (not DT, which an
    # oracle built on it would follow).
    system = get_system("pendulum")
    pr = {"m": np.array([m]), "g": np.array([g]), "l": np.array([l])}
    states, _, _ = integrate(system, np.array([[1e-3, 0.0]]), pr, 400)
    q = states[0, :, 0]
    i = np.flatnonzero((q[:-1] > 0) & (q[1:] <= 0))  # downward zero crossings
    tc = (i + q[i] / (q[i] - q[i + 1])) * 0.05  # linear interpolation between frames
    period = np.diff(tc).mean()
    assert abs(period / (2 * np.pi * np.sqrt(l / g)) - 1) < 5e-3
    assert DT == 0.05


def test_the_double_pendulums_second_bob_hangs_from_the_first_at_its_own_angle():
    # Both angles from the downward vertical (the spec's), bob 2 = bob 1 + l2 (sin q2,
    # -cos q2): worked out for l1 = 0.8, l2 = 0.9.
    system = get_system("double_pendulum")
    pr = {"m": np.array([[1.0, 1.0]]), "g": np.array([3.0]), "l": np.array([[0.8, 0.9]])}
    for q, bob1, bob2 in (((np.pi / 2, 0.0), (0.8, 0.0), (0.8, -0.9)),
                          ((0.0, np.pi / 2), (0.0, -0.8), (0.9, -0.8)),
                          ((0.0, np.pi), (0.0, -0.8), (0.0, 0.1))):
        pos = system.positions(np.array([[q[0], q[1], 0.0, 0.0]]), pr)
        np.testing.assert_allclose(pos[0], [bob1, bob2], atol=1e-12)


def test_energy_scale_of_the_pendulums_is_m_g_l():
    # The work to lift a bob level with its pivot: H(pi/2, 0) - H(0, 0) for the pendulum, the
    # outer arm's lift for a double pendulum of equal arms. l != 1 tells m g l from m g.
    system = get_system("pendulum_colors")
    pr = {"m": np.array([0.7]), "g": np.array([3.4]), "l": np.array([0.6])}
    lift = system.hamiltonian(np.array([[np.pi / 2, 0.0]]), pr) - \
        system.hamiltonian(np.zeros((1, 2)), pr)
    np.testing.assert_allclose(system.energy_scale(pr), lift, rtol=1e-12)
    system = get_system("double_pendulum_colors")
    pr = {"m": np.array([[0.45, 0.45]]), "g": np.array([2.9]), "l": np.array([[0.8, 0.8]])}
    lift = system.hamiltonian(np.array([[0.0, np.pi / 2, 0.0, 0.0]]), pr) - \
        system.hamiltonian(np.zeros((1, 4)), pr)
    np.testing.assert_allclose(system.energy_scale(pr), lift, rtol=1e-12)


def test_energy_drift_is_the_largest_relative_excursion():
    # Hand-built mass-spring energies (p = 0, q = sqrt(2 E / k)): max_t |H(t) - H(0)| / |H(0)|
    # is 0.5 for the spike, 0.1 for the small step (a mean over frames would give 0.12, 0.02),
    # 0.3 for the last row (measured from its last frame instead: 0.2).
    system = get_system("mass_spring")
    pr = {"k": np.full(3, 2.0), "m": np.full(3, 0.5)}
    e = np.array([[1.0, 1.0, 1.5, 1.0, 1.0], [2.0, 2.2, 2.0, 2.0, 2.0], [1.0, 1.3, 1.0, 1.0, 1.2]])
    states = np.stack([np.sqrt(e), np.zeros_like(e)], -1)
    np.testing.assert_allclose(energy_drift(system, states, pr), [0.5, 0.1, 0.3], rtol=1e-12)
    # The double pendulum's H crosses zero: an H(0) = 0 start (both arms horizontal) is
    # measured against m g l, as in test_energy_drift_512_frames_and_canvas.
    system = get_system("double_pendulum_colors")
    pr = {"m": np.array([[0.45, 0.45]]), "g": np.array([2.9]), "l": np.array([[0.8, 0.8]])}
    q2 = np.array([np.pi / 2, np.pi / 2, np.arccos(-0.1), np.pi / 2])  # H = 0, 0, 0.1 m g l, 0
    states = np.stack([np.full(4, np.pi / 2), q2, np.zeros(4), np.zeros(4)], -1)[None]
    np.testing.assert_allclose(energy_drift(system, states, pr), [0.1], rtol=1e-9)


@pytest.mark.parametrize("name", ["pendulum_colors", "double_pendulum", "three_body"])
def test_matches_scipy_dop853(name):
    system = get_system(name)
    sim = _sim(name, 2, 60, seed=3)
    for j in range(2):
        pr = {k: v[j:j + 1] for k, v in sim["params"].items()}
        ref = solve_ivp(lambda t, y: system.vector_field(y[None], pr)[0], (0, 59 * DT),
                        sim["states"][j, 0], method="DOP853", rtol=1e-12, atol=1e-12,
                        t_eval=np.arange(60) * DT).y.T
        np.testing.assert_allclose(sim["states"][j], ref, atol=1e-6)


def test_colors_variant_sampling():
    sim = _sim("double_pendulum_colors", 16, 8)
    ci = sim["color_index"]
    assert (ci[:, 0] != ci[:, 1]).all() and ci.min() >= 0 and ci.max() < 6
    assert len({tuple(c) for c in ci}) > 3  # random per trajectory
    half = 0.4 * get_system("double_pendulum_colors").canvas
    assert (np.abs(sim["offset"]) <= half).all() and np.abs(sim["offset"]).max() > 0.1
    assert get_system("three_body").recipe.startswith("HGN")
    assert abs(get_system("pendulum").canvas - 1.3989) < 1e-4
    assert abs(get_system("double_pendulum").canvas - 2.3989) < 1e-4


def test_unknown_system_lists_valid_names():
    with pytest.raises(ValueError, match="valid systems: mass_spring, pendulum"):
        get_system("pendulm")
    with pytest.raises(ValueError, match="missing parameter 'g'"):
        get_system("pendulum").hamiltonian(np.zeros((1, 2)), {"m": 1.0, "l": 1.0})


def _ring(n, r, speed):
    """n unit masses on a circle of radius r at angles 2 pi k / n, moving tangentially."""
    a = 2 * np.pi * np.arange(n) / n
    q = r * np.stack([np.cos(a), np.sin(a)], -1)
    return np.concatenate([q.ravel(), (speed * np.stack([-np.sin(a), np.cos(a)], -1)).ravel()])


@pytest.mark.parametrize("name", ["two_body", "two_body_colors", "three_body"])
def test_a_body_flying_off_the_canvas_is_flagged_outside(name):
    # Oracles: bodies pushed apart from +-(1, 0) at speed 3 (a third at rest in the middle,
    # pulled equally both ways) cross the canvas edge (2.75, 3 or 5) within 2 s whatever the
    # pull between them (it slows them by less than g m^2 t / 4 <= 1 over 2 s); on the circular
    # orbits (n = 2: v = 1 / (2 sqrt(r)); n = 3: v = 1 / sqrt(sqrt(3) r)) nobody leaves.
    system = get_system(name)
    nb = system.n_bodies
    pr = {"m": np.ones((2, nb)), "g": np.ones(2)}
    escape = np.zeros(4 * nb)
    escape[:4] = (1, 0, -1, 0)
    escape[2 * nb:2 * nb + 4] = (3, 0, -3, 0)
    bound = _ring(nb, 0.5, 1 / (2 * np.sqrt(0.5))) if nb == 2 else _ring(3, 1.0, 3 ** -0.25)
    states, inside, _ = integrate(system, np.stack([escape, bound]), pr, 41)   # 2 s
    assert inside.tolist() == [False, True]
    pos = system.positions(states[1:], {k: v[1:] for k, v in pr.items()})
    np.testing.assert_allclose(np.linalg.norm(pos, axis=-1), 0.5 if nb == 2 else 1.0, rtol=1e-6)


def test_draws_that_leave_the_canvas_or_drift_are_drawn_again_and_counted(monkeypatch):
    # The first draws of trajectories 0 and 2 are reported as drifting, trajectory 1's as
    # leaving the canvas (a pendulum never does either): each must be replaced by its stream's
    # next draw, two counted as inaccurate and one as rejected (counts unequal, so that the
    # two counters could not be swapped unnoticed).
    import hgan.data.simulate as simulate
    system = get_system("pendulum")
    real, rounds = simulate.integrate, []

    def integrate_once_wrong(system, x0, pr, frames):
        states, inside, accurate = real(system, x0, pr, frames)
        if not rounds:
            accurate[[0, 2]], inside[1] = False, False
        rounds.append(len(x0))
        return states, inside, accurate

    monkeypatch.setattr(simulate, "integrate", integrate_once_wrong)
    out = simulate_split(system, 0, "train", np.arange(3), 5)
    assert rounds == [3, 3] and (out["inaccurate"], out["rejected"]) == (2, 1)
    for i, draws in ((0, 2), (1, 2), (2, 2)):
        rng = simulate.trajectory_rng(0, "train", i)
        for _ in range(draws):
            x0 = system.sample_state(rng, system.sample_params(rng))
        np.testing.assert_array_equal(out["states"][i, 0], x0)


def test_a_drifting_trajectory_is_integrated_again_with_finer_steps():
    # A swing to 2.6 rad at one RK4 step per frame drifts 7.8e-7 > DRIFT_TOL and lies 4e-6
    # off the float64 reference; twice the steps bring it within 2e-7. integrate must return
    # that finer trajectory, flagged accurate, not the coarse one for a re-draw.
    system = get_system("pendulum")
    pr = {"m": np.array([0.5]), "g": np.array([3.0]), "l": np.array([1.0])}
    x0 = np.array([[2.6, 0.0]])
    states, inside, accurate = integrate(system, x0, pr, 200, substeps=1)
    assert inside.all() and accurate.all()
    ref = solve_ivp(lambda t, y: system.vector_field(y[None], pr)[0], (0, 199 * DT), x0[0],
                    method="DOP853", rtol=1e-12, atol=1e-12, t_eval=np.arange(200) * DT).y.T
    np.testing.assert_allclose(states[0], ref, atol=1e-6)


def test_the_adaptive_integrator_alone_meets_its_tolerance_on_the_closed_form():
    # dopri5 on its own: through integrate, its drift check and refinement would hide a poor
    # step (a first-same-as-last slope from the wrong stage lands 1.5e-5 off here, and the
    # refinement integrated it again until it passed). At ADAPTIVE_TOL = 1e-9 the mass spring
    # stays within 1e-7 of its closed form over 100 frames (measured 2.7e-9).
    from hgan.data.simulate import dopri5
    system = get_system("mass_spring")
    pr = {"k": np.array([2.0, 2.0]), "m": np.array([0.5, 0.5])}
    x0 = np.array([[0.7, 0.1], [-0.2, 0.9]])
    states, inside = dopri5(system, x0, pr, 100)
    assert inside.all()
    np.testing.assert_allclose(states, mass_spring_exact(x0, pr, 100), rtol=0, atol=1e-7)


def _kepler(e, frames, a=1.0, gm=2.0):
    """Relative position and velocity [frames, 2] of a Kepler ellipse (semi-major axis a,
    eccentricity e, G M = gm) released at apocentre, pericentre along +x, every DT: Kepler's
    equation E - e sin E = pi + n t, n = sqrt(gm / a^3), solved by Newton in float64."""
    n = np.sqrt(gm / a ** 3)
    mean = np.pi + n * np.arange(frames) * DT
    big_e = mean.copy()
    for _ in range(50):
        big_e -= (big_e - e * np.sin(big_e) - mean) / (1 - e * np.cos(big_e))
    rate = n / (1 - e * np.cos(big_e))
    b = a * np.sqrt(1 - e * e)
    r = np.stack([a * (np.cos(big_e) - e), b * np.sin(big_e)], -1)
    v = np.stack([-a * np.sin(big_e) * rate, b * np.cos(big_e) * rate], -1)
    return r, v


def test_the_adaptive_integrator_follows_an_eccentric_kepler_orbit_through_pericentre():
    # Two unit masses (g = 1, so G M = 2 for their separation r = q1 - q2) on an ellipse of
    # a = 1, e = 0.8, from apocentre (|r| = 1.8) through pericentre (|r| = 0.2, 9x faster)
    # near frame 44. Unlike the mass spring, this makes dopri5 reject and retry steps: at
    # ADAPTIVE_TOL it stays within 1e-7 of Kepler's equation (measured 1.4e-8); accepting
    # steps 100x over the tolerance lands 3.9e-7 off, accepting every step 0.1 off.
    from hgan.data.simulate import dopri5
    system = get_system("two_body")
    r, v = _kepler(0.8, 100)
    want = np.concatenate([r / 2, -r / 2, v / 2, -v / 2], -1)   # m = 1: p = velocity
    pr = {"m": np.ones((1, 2)), "g": np.ones(1)}
    states, inside = dopri5(system, want[None, 0], pr, 100)
    assert inside.all() and np.linalg.norm(r, axis=-1).min() < 0.21   # pericentre passed
    np.testing.assert_allclose(states[0], want, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", ["pendulum", "three_body"])
def test_refinement_doubles_the_steps_or_tightens_the_tolerance_tenfold_per_level(monkeypatch,
                                                                                  name):
    # A trajectory that keeps drifting is integrated again MAX_REFINE times, each time with
    # twice the RK4 substeps (10, 20, 40, 80: up to 8x) or, for the adaptive three_body, a
    # tolerance ten times tighter (1e-9 down to 1e-12), then reported inaccurate. The drift
    # is reported above DRIFT_TOL every time, so every level runs.
    import hgan.data.simulate as simulate
    system = get_system(name)
    calls = []
    rk4, dopri5 = simulate.rk4, simulate.dopri5
    monkeypatch.setattr(simulate, "rk4", lambda s, x0, pr, frames, substeps, **kw: (
        calls.append(substeps) or rk4(s, x0, pr, frames, substeps, **kw)))
    monkeypatch.setattr(simulate, "dopri5", lambda s, x0, pr, frames, tol=simulate.ADAPTIVE_TOL: (
        calls.append(tol) or dopri5(s, x0, pr, frames, tol)))
    monkeypatch.setattr(simulate, "energy_drift",
                        lambda system, states, pr: np.full(len(states), 2 * simulate.DRIFT_TOL))
    rng = np.random.default_rng(0)
    pr = system.sample_params(rng)
    x0 = system.sample_state(rng, pr)[None]
    pr = {k: np.asarray(v)[None] for k, v in pr.items()}
    _, inside, accurate = integrate(system, x0, pr, 3)
    if name == "three_body":
        np.testing.assert_allclose(calls, [1e-9, 1e-10, 1e-11, 1e-12], rtol=1e-12)
    else:
        assert calls == [10, 20, 40, 80]
    assert inside.all() and not accurate.any()


@pytest.mark.parametrize("name", ["two_body", "three_body"])
def test_bodies_leaving_the_canvas_at_different_frames_are_each_flagged(name):
    # The escape of the test above at speeds 6 and 3 leaves the canvas at two different frames,
    # with the circular orbit between them in the batch: after the first has left, the
    # integrator carries fewer trajectories than it reports on, and the second exit must
    # still be flagged on the right one (RK4 for two_body, dopri5 for three_body).
    system = get_system(name)
    nb = system.n_bodies
    pr = {"m": np.ones((3, nb)), "g": np.ones(3)}
    fast, slow = np.zeros(4 * nb), np.zeros(4 * nb)
    for x, speed in ((fast, 6.0), (slow, 3.0)):
        x[:4] = (1, 0, -1, 0)
        x[2 * nb:2 * nb + 4] = (speed, 0, -speed, 0)
    bound = _ring(nb, 0.5, 1 / (2 * np.sqrt(0.5))) if nb == 2 else _ring(3, 1.0, 3 ** -0.25)
    states, inside, _ = integrate(system, np.stack([fast, bound, slow]), pr, 41)   # 2 s
    assert inside.tolist() == [False, True, False]
    pos = system.positions(states[1:2], {k: v[1:2] for k, v in pr.items()})
    np.testing.assert_allclose(np.linalg.norm(pos, axis=-1), 0.5 if nb == 2 else 1.0, rtol=1e-6)



@pytest.mark.parametrize("name", ["two_body", "three_body"])
def test_a_trajectory_that_starts_outside_the_canvas_is_flagged_though_it_comes_back(name):
    # Two bodies 0.05 beyond the canvas edge (2.75 or 3), at +-(edge + 0.05, 0.5), flying
    # inwards at speed 3 (a third at rest in the middle, pulled equally both ways): inside
    # from the first step on, but frame 0 already shows a body off the canvas. The same
    # start 0.05 inside the edge stays inside (both cover 0.45 in 9 frames, and pass each
    # other 1 apart). RK4 for two_body, dopri5 for three_body.
    system = get_system(name)
    nb, edge = system.n_bodies, system.canvas
    starts = []
    for x in (edge + 0.05, edge - 0.05):
        s = np.zeros(4 * nb)
        s[:4] = (x, 0.5, -x, -0.5)
        s[2 * nb:2 * nb + 4] = (-3.0, 0.0, 3.0, 0.0)
        starts.append(s)
    pr = {"m": np.ones((2, nb)), "g": np.ones(2)}
    states, inside, _ = integrate(system, np.stack(starts), pr, 10)
    assert inside.tolist() == [False, True]
    pos = system.positions(states[1:], {k: v[1:] for k, v in pr.items()})
    assert np.abs(pos[0, 1:]).max() < edge   # the inside one: within the canvas throughout


@pytest.mark.parametrize("tol", [1e-9, 1e-11])
def test_each_trajectory_of_an_adaptive_batch_moves_as_it_does_alone(tol):
    # dopri5 lets every trajectory run ahead to later frames while another takes the small
    # steps of a close encounter. Each one's states must be those it gets integrated alone
    # (where there is nothing to run ahead of), to the bit: trajectories landing on frames at
    # different passes, leaving the canvas mid-run (rows after that frame are never written)
    # and rejecting steps, side by side: ten draws of three_body and, between them, the two
    # escapes of test_bodies_leaving_the_canvas_at_different_frames_are_each_flagged (speeds 6
    # and 3: they leave at different frames), 40 frames.
    from hgan.data.simulate import _draw, dopri5
    system = get_system("three_body")
    draws = [_draw(system, np.random.default_rng([11, i])) for i in range(10)]
    escapes = []
    for speed in (6.0, 3.0):
        escapes.append(np.zeros(12))
        escapes[-1][:4], escapes[-1][6:10] = (1, 0, -1, 0), (speed, 0, -speed, 0)
    x0 = np.stack([d[1] for d in draws[:3]] + escapes + [d[1] for d in draws[3:]])
    pr = {k: np.array([d[0][k] for d in draws[:3]] + [np.ones_like(draws[0][0][k])] * 2
                      + [d[0][k] for d in draws[3:]]) for k in system.param_names}
    states, inside = dopri5(system, x0, pr, 40, tol)
    assert not inside[3] and not inside[4] and inside.sum() >= 8
    for i in range(len(x0)):
        one = {k: v[i:i + 1] for k, v in pr.items()}
        alone, ins = dopri5(system, x0[i:i + 1], one, 40, tol)
        assert ins[0] == inside[i]
        pos = system.positions(alone, one)[0]
        last = 39 if ins[0] else int(np.argmax(~(np.abs(pos) <= system.canvas).all(axis=(1, 2))))
        assert np.array_equal(states[i, :last + 1], alone[0, :last + 1]), i


def test_the_adaptive_integrator_gives_up_on_a_singular_or_unfollowable_trajectory(
        monkeypatch, no_hang):
    # Two bodies of three_body on the same spot: the first slope is NaN, and dopri5 rejected
    # that step, and every smaller one, forever. A slope that is finite but varies too fast
    # for any step above MIN_STEP did the same. Each now stops as if it left the canvas,
    # frame 1 written NaN (as rk4 leaves a state that went NaN), and the trajectory beside
    # it is integrated as it is alone.
    import dataclasses
    from hgan.data.simulate import dopri5
    system = get_system("three_body")
    x0 = np.zeros((2, 12))
    x0[0, :6] = (1.0, 0.0, 1.0, 0.0, -1.0, 0.5)   # bodies 0 and 1 coincide
    x0[1, :6] = (1.0, 0.0, -1.0, 0.0, 0.0, 1.0)
    pr = {"m": np.ones((2, 3)), "g": np.ones(2)}
    with no_hang(), np.errstate(all="ignore"):
        states, inside = dopri5(system, x0, pr, 10)
    assert inside.tolist() == [False, True]
    assert np.array_equal(states[0, 0], x0[0]) and np.isnan(states[0, 1]).all()
    alone, _ = dopri5(system, x0[1:], {k: v[1:] for k, v in pr.items()}, 10)
    assert np.array_equal(states[1], alone[0])

    def wild(x, pr):   # |dH/dq| <= 1e150: finite, but no step above 1e-159 keeps its error
        return 1e150 * np.sin(1e150 * x[..., :6]), x[..., 6:]
    from hgan.data import systems
    monkeypatch.setitem(systems.PHYSICS, "three_body",
                        dataclasses.replace(system.physics, gradient=wild))
    with no_hang():
        states, inside = dopri5(system, x0[1:], {k: v[1:] for k, v in pr.items()}, 10)
    assert inside.tolist() == [False] and np.isnan(states[0, 1]).all()
    # Every state stayed finite, so the split's error names the stalled step, not only NaN.
    import hgan.data.simulate as simulate
    monkeypatch.setattr(simulate, "MAX_ROUNDS", 2)
    with no_hang(), pytest.raises(simulate.NoAcceptedDraw) as e:
        simulate.simulate_split(system, 0, "train", np.arange(3), 10)
    assert ("of the 3 that left the canvas in the last round became NaN or infinite or "
            "could take no step above 1e-12 of a frame interval instead (first at frame 1)"
            in str(e.value)), str(e.value)


def test_a_per_body_parameter_without_its_body_axis_is_refused():
    # An [N] mass for the double pendulum (one value per arm expected, [N, 2]) would read
    # m[..., 0] as the first trajectory's mass: it is refused, naming the parameter.
    system = get_system("double_pendulum_colors")
    pr = {"m": np.array([0.45, 0.5, 0.55]), "g": np.full(3, 3.0), "l": np.full((3, 2), 0.8)}
    with pytest.raises(ValueError, match=r"parameter 'm' needs a last axis of 2 \(one per "
                                         r"body\), got shape \(3,\)"):
        system.hamiltonian(np.zeros((3, 5, 4)), pr)
    with pytest.raises(ValueError, match="parameter 'm' needs a last axis of 2"):
        system.positions(np.zeros((3, 5, 4)), pr)
