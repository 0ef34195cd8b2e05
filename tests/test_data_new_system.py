"""docs/data.md "Adding a system": a new base is one Physics record and one make_system call,
and generation, the file reader and the probe follow it with no other edit. The oracle is a
2-D isotropic oscillator's closed form, q(t) = q0 cos(wt) + p0 / (m w) sin(wt)."""
import numpy as np
import pytest

from hgan.data import open_h5
from hgan.data import systems
from hgan.data.generate import generate_dataset
from hgan.data.simulate import DT
from hgan.evaluate import probe


def _h(x, pr):
    q, p = x[..., :2], x[..., 2:]
    return 0.5 * pr["k"] * (q ** 2).sum(-1) + (p ** 2).sum(-1) / (2 * pr["m"])


def _g(x, pr):
    return pr["k"][..., None] * x[..., :2], x[..., 2:] / pr["m"][..., None]


def _positions(x, pr, offset):
    q = x[..., :2] + (0.0 if offset is None else offset)
    return q[..., None, :]


def _sample(system, rng, pr):
    return np.concatenate([system._annulus(rng), system._annulus(rng) * 0.5])


OSC = systems.Physics(_h, _g, _positions, _sample, lambda s, pr: pr["k"] * s.radius[0] ** 2)


@pytest.fixture
def oscillator(monkeypatch):
    monkeypatch.setitem(systems.PHYSICS, "oscillator_2d", OSC)
    system = systems.make_system("oscillator_2d", "oscillator_2d", 2, 1,
                                 dict(k=(1.5, 2.5), m=(0.5, 1.0)), (0.3, 0.6), 1, 1.5)
    monkeypatch.setitem(systems._REGISTRY, "oscillator_2d", system)
    return system


def test_a_new_system_generates_its_closed_form_and_reads_back(oscillator, tmp_path):
    paths = generate_dataset("oscillator_2d", tmp_path, train=5, test=0, frames=40,
                             resolution=16, progress=False)
    with open_h5(paths["train"]) as f:
        assert f.system is oscillator
        states, k, m = f.states[()], f.params["k"], f.params["m"]
        frames = f.frames[()]
    assert states.shape == (5, 40, 4) and frames.shape == (5, 40, 16, 16, 3)
    assert len(np.unique(k)) == 5 and ((k >= 1.5) & (k <= 2.5)).all()  # drawn per trajectory
    w = np.sqrt(k / m)[:, None, None]
    t = (np.arange(40) * DT)[None, :, None]
    q0, p0 = states[:, :1, :2], states[:, :1, 2:]
    exact = q0 * np.cos(w * t) + p0 / (m[:, None, None] * w) * np.sin(w * t)
    assert np.abs(states[..., :2] - exact).max() < 1e-6  # RK4, 10 substeps per frame
    # The ball moves: its frames differ, and no frame is empty.
    assert (frames.reshape(5, 40, -1).max(-1) > 0).all()
    assert (frames[:, 0] != frames[:, 20]).any()


@pytest.mark.parametrize("adaptive", [False, True])
def test_draws_that_go_nan_are_said_apart_from_those_that_leave(oscillator, monkeypatch,
                                                                tmp_path, capsys, adaptive,
                                                                no_hang):
    # dH/dq NaN wherever k > 2 (about half the draws): those draws become NaN at their first
    # step and are re-drawn like those that leave the canvas, so the set silently held only
    # k <= 2; the split's line now says how many went NaN, even without a progress bar.
    # With adaptive steps (dopri5) a NaN step was rejected, and retried smaller, forever.
    def g(x, pr):
        dq, dp = _g(x, pr)
        return np.where((pr["k"] > 2.0)[..., None], np.nan, dq), dp
    monkeypatch.setitem(systems.PHYSICS, "oscillator_2d", systems.Physics(
        _h, g, _positions, _sample, OSC.energy_scale, adaptive=adaptive))
    with no_hang(), np.errstate(invalid="ignore"):
        paths = generate_dataset("oscillator_2d", tmp_path, train=12, test=0, frames=6,
                                 resolution=16, progress=False)
    with open_h5(paths["train"]) as f:
        rejected, k = int(f.attrs["rejected"]), f.params["k"]
    assert (k <= 2.0).all() and rejected > 0
    err = capsys.readouterr().err
    went = ("became NaN or infinite or could take no step above 1e-12 of a frame interval"
            if adaptive else "became NaN or infinite")
    assert (f"{paths['train']}: 12 trajectories, {rejected} rejected (left the canvas; "
            f"{rejected} of them {went} instead: a singular point of the "
            f"system's H, which the accepted trajectories avoid (docs/data.md)), 0 re-drawn for "
            f"accuracy") in err
    # a system whose draws stay finite says nothing without a progress bar
    monkeypatch.setitem(systems.PHYSICS, "oscillator_2d", OSC)
    generate_dataset("oscillator_2d", tmp_path / "b", train=12, test=0, frames=6,
                     resolution=16, progress=False)
    assert capsys.readouterr().err == ""


def test_the_probe_reads_a_new_system_by_its_physics_flags(oscillator):
    assert probe.angular_dims(oscillator) == ()
    assert not probe.is_nbody("oscillator_2d") and not probe.is_angular("oscillator_2d")
    states = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(probe.colour_ordered(oscillator, states,
                                                       np.zeros((2, 1), int)), states)
    spinner = systems.Physics(_h, _g, _positions, _sample, OSC.energy_scale, angular=True)
    systems.PHYSICS["oscillator_2d"] = spinner  # restored by the fixture's monkeypatch
    assert probe.angular_dims(oscillator) == (0, 1) and probe.is_angular("oscillator_2d")


def test_a_gradient_that_is_not_hs_is_named_when_no_draw_is_accepted(oscillator, monkeypatch):
    # A new system's dH/dp with the mass left out: every trajectory drifts in energy and is
    # re-drawn; the error said only "each left the canvas or drifted in energy".
    import hgan.data.simulate as simulate
    monkeypatch.setattr(simulate, "MAX_ROUNDS", 8)
    wrong = systems.Physics(_h, lambda x, pr: (pr["k"][..., None] * x[..., :2], x[..., 2:]),
                            _positions, _sample, OSC.energy_scale)
    monkeypatch.setitem(systems.PHYSICS, "oscillator_2d", wrong)
    with pytest.raises(simulate.NoAcceptedDraw) as e:
        simulate.simulate_split(oscillator, 0, "train", np.arange(4), 40)
    msg = str(e.value)
    assert "(0 left the canvas, 8 drifted in energy)" in msg, msg
    assert msg.endswith("PHYSICS['oscillator_2d'].gradient is not the gradient of its "
                        "hamiltonian"), msg
    # At q = 0, p = (1, 0), m = 0.5: H's gradient is (0, 0, 2, 0), the wrong one (0, 0, 1, 0),
    # a difference of 1 against a largest entry of 2.
    x, pr = np.array([[0.0, 0.0, 1.0, 0.0]]), dict(k=np.array([2.0]), m=np.array([0.5]))
    assert "(relative difference 0.5)" in simulate._gradient_check(oscillator, x, pr)
    monkeypatch.setitem(systems.PHYSICS, "oscillator_2d", OSC)
    assert simulate._gradient_check(oscillator, x, pr) == ""
    # The right gradient, on a canvas nothing fits in: the canvas is named, not the gradient.
    import dataclasses
    with pytest.raises(simulate.NoAcceptedDraw) as e:
        simulate.simulate_split(dataclasses.replace(oscillator, canvas=0.0), 0, "train",
                                np.arange(4), 40)
    assert "(8 left the canvas, 0 drifted in energy)" in str(e.value)
    assert "gradient" not in str(e.value)


def test_gravity_between_four_bodies_is_newtons():
    # Pairs are built for any number of bodies; check dH/dq against finite differences.
    rng = np.random.default_rng(0)
    x = rng.normal(size=16) * 2.0  # 4 bodies: q (8), p (8)
    pr = {"m": np.array([1.0, 0.5, 2.0, 1.5]), "g": np.array(1.3)}
    dq, dp = systems._g_nbody(x, pr)
    eps = 1e-6
    fd = [(systems._h_nbody(x + eps * e, pr) - systems._h_nbody(x - eps * e, pr)) / (2 * eps)
          for e in np.eye(16)]
    np.testing.assert_allclose(np.concatenate([dq, dp]), fd, rtol=1e-6, atol=1e-8)


def test_make_system_names_what_is_missing():
    with pytest.raises(ValueError, match="base 'spring2' has no PHYSICS entry"):
        systems.make_system("s", "spring2", 1, 1, dict(m=(1, 1)), (0.1, 1.0), 1, 1.0)
    with pytest.raises(ValueError, match="no range for parameter.* m;"):
        systems.make_system("s", "mass_spring", 1, 1, dict(k=(1, 1)), (0.1, 1.0), 1, 1.0)
    with pytest.raises(ValueError, match="no range for parameter.* l"):
        systems.make_system("s", "double_pendulum", 2, 2, dict(m=(1, 1), g=(1, 1)), (1, 2), 2, 3.0)


def _wrong_gradient(x, pr):  # [..., 2*dof] states, but dH/dq and dH/dp without their last axis
    return pr["k"] * x[..., 0], x[..., 2] / pr["m"]


def _wrong_positions(x, pr, offset):  # no body axis: [..., 2]
    return x[..., :2]


def _wrong_sample(system, rng, pr):  # q alone: 2 numbers where the state has 4
    return system._annulus(rng)


@pytest.mark.parametrize("broken, function, what, shape", [
    (dict(gradient=_wrong_gradient), "gradient", "dH/dq", r"\(\d+,\), expected \(\d+, 2\)"),
    (dict(positions=_wrong_positions), "positions", "positions",
     r"\((\d+, )+2\), expected \((\d+, )+1, 2\)"),
    (dict(sample_state=_wrong_sample), "sample_state", "the initial state",
     r"\(2,\), expected \(4,\)"),
])
def test_a_physics_function_of_the_wrong_shape_is_named(oscillator, tmp_path, broken, function,
                                                         what, shape):
    # Before, these were a numpy broadcast error deep in simulate.py, an AxisError in numpy's
    # own code, and (for a state of 1 number, broadcast into the row) no error at all.
    import dataclasses
    systems.PHYSICS["oscillator_2d"] = dataclasses.replace(OSC, **broken)
    with pytest.raises(ValueError, match=rf"^system 'oscillator_2d': PHYSICS\['oscillator_2d'\]"
                                         rf"\.{function} returned {what} of shape {shape}"):
        generate_dataset("oscillator_2d", tmp_path, train=2, test=0, frames=4, resolution=16,
                         progress=False)
    assert not list(tmp_path.rglob("*.h5"))


def test_an_initial_state_of_one_number_is_not_broadcast_into_the_state(oscillator, tmp_path):
    # The case that passed silently: a 1-number state filled every coordinate with it.
    import dataclasses
    systems.PHYSICS["oscillator_2d"] = dataclasses.replace(
        OSC, sample_state=lambda system, rng, pr: np.array([0.3]))
    with pytest.raises(ValueError, match=r"sample_state returned the initial state of shape "
                                         r"\(1,\), expected \(4,\)"):
        generate_dataset("oscillator_2d", tmp_path, train=2, test=0, frames=4, resolution=16,
                         progress=False)


def test_a_hamiltonian_of_the_wrong_shape_is_named(oscillator):
    import dataclasses
    systems.PHYSICS["oscillator_2d"] = dataclasses.replace(
        OSC, hamiltonian=lambda x, pr: 0.5 * (x ** 2))   # forgot the sum: [..., 4]
    with pytest.raises(ValueError, match=r"hamiltonian returned H of shape \(3, 5, 4\), "
                                         r"expected \(3, 5\)"):
        oscillator.hamiltonian(np.zeros((3, 5, 4)), {"k": np.ones(3), "m": np.ones(3)})


@pytest.mark.parametrize("change, message", [
    # numpy's own words were "high - low < 0", naming neither the system nor the range
    (dict(ranges=dict(k=(2.5, 1.5), m=(0.5, 1.0))),
     r"the range of 'k' is \(2.5, 1.5\); it needs 0 < lo <= hi"),
    (dict(radius=(0.6, 0.3)), r"radius is \(0.6, 0.3\); it needs 0 <= lo <= hi"),
    # generated and written, then refused by open_h5 as a stored parameter that is not positive
    (dict(ranges=dict(k=(1.5, 2.5), m=(-0.5, 1.0))),
     r"the range of 'm' is \(-0.5, 1.0\); it needs 0 < lo <= hi"),
    (dict(ranges=dict(k=(1.5, 2.5), m=0.5)), r"the range of 'm' must be a \(lo, hi\) pair"),
    (dict(radius=0.5), r"radius must be a \(lo, hi\) pair of numbers, got 0.5"),   # TypeError
    (dict(ranges=dict(k=(1.5, float("nan")), m=(0.5, 1.0))), r"the range of 'k' must be finite"),
    (dict(canvas=0.0), r"canvas \(the half-size no particle may leave\) must be a positive"),
])
def test_a_range_radius_or_canvas_that_cannot_be_drawn_is_named(change, message):
    args = dict(ranges=dict(k=(1.5, 2.5), m=(0.5, 1.0)), radius=(0.3, 0.6), canvas=1.5)
    args.update(change)
    with pytest.raises(ValueError, match=r"^system 'osc': " + message):
        systems.make_system("osc", "mass_spring", 1, 1, args["ranges"], args["radius"], 1,
                            args["canvas"])


@pytest.mark.parametrize("colors", [2, 0, 2.0])
def test_a_palette_too_small_for_the_bodies_is_named(colors):
    # before: "could not broadcast input array from shape (2,) into shape (3,)" in
    # simulate.py, once a chunk had been integrated
    with pytest.raises(ValueError, match=rf"^system 'three': {colors!r} colours for 3 bodies; "
                                         r"each body .* at least 3 \(or 1"):
        systems.make_system("three", "three_body", 6, 3, dict(m=(1, 1), g=(1, 1)), (0.9, 1.2),
                            colors, 3.0)
    for fine in (1, 3, 6):
        systems.make_system("three", "three_body", 6, 3, dict(m=(1, 1), g=(1, 1)), (0.9, 1.2),
                            fine, 3.0)


def test_a_system_name_added_twice_is_named():
    # _build's add(...) filled a dict: a second "pendulum" replaced the suite's one silently
    registry = {}
    systems._add(registry, "pendulum", "pendulum", 1, 1, dict(m=(0.5, 0.5), g=(3, 3), l=(1, 1)),
                 (1.3, 2.3), 1, 1.5)
    first = registry["pendulum"]
    with pytest.raises(ValueError, match=r"^system 'pendulum' is added twice in "
                                         r"hgan/data/systems.py _build \(as 'pendulum' first\)"):
        systems._add(registry, "pendulum", "mass_spring", 1, 1, dict(k=(2, 2), m=(0.5, 0.5)),
                     (0.1, 1.0), 1, 1.5)
    assert registry == {"pendulum": first}
    assert list(systems._build()) == list(systems.SYSTEMS)


def test_a_hamiltonian_that_is_nan_fails_the_energy_check(oscillator, monkeypatch):
    # H NaN at every state, its gradient finite: the drift was NaN, NaN > tol is False, and
    # every trajectory was written as if its energy had been checked.
    import hgan.data.simulate as simulate
    monkeypatch.setattr(simulate, "MAX_ROUNDS", 8)
    monkeypatch.setitem(systems.PHYSICS, "oscillator_2d", systems.Physics(
        lambda x, pr: _h(x, pr) * np.nan, _g, _positions, _sample, OSC.energy_scale))
    integrations = []
    rk4 = simulate.rk4
    monkeypatch.setattr(simulate, "rk4", lambda *a: integrations.append(a[-1]) or rk4(*a))
    with pytest.raises(simulate.NoAcceptedDraw, match=r"\(0 left the canvas, 8 drifted in "
                                                        r"energy\)"):
        simulate.simulate_split(oscillator, 0, "train", np.arange(4), 10)
    # and is re-drawn without finer re-integrations, which cannot make H finite: two rounds
    # of 4 draws at the usual substeps
    assert integrations == [simulate.SUBSTEPS] * 2


def _h_singular(x, pr):   # a 1/|q| well whose centre the drawn state starts on
    q, p = x[..., :2], x[..., 2:]
    return -pr["k"] / np.linalg.norm(q, axis=-1) + (p ** 2).sum(-1) / (2 * pr["m"])


def _g_singular(x, pr):
    q = x[..., :2]
    r3 = np.linalg.norm(q, axis=-1, keepdims=True) ** 3
    return pr["k"][..., None] * q / r3, x[..., 2:] / pr["m"][..., None]


@pytest.mark.parametrize("adaptive", [False, True])
def test_dynamics_that_go_nan_are_named_not_only_counted_as_leaving(oscillator, monkeypatch,
                                                                    adaptive, no_hang):
    # Every draw started at q = 0: its states went NaN at frame 1, failed |x| <= canvas and
    # the error said only "8 left the canvas": the recipe or the canvas, not the physics.
    # dopri5 (adaptive) hung here instead.
    import hgan.data.simulate as simulate
    monkeypatch.setattr(simulate, "MAX_ROUNDS", 8)
    monkeypatch.setitem(systems.PHYSICS, "oscillator_2d", systems.Physics(
        _h_singular, _g_singular, _positions,
        lambda system, rng, pr: np.concatenate([[0.0, 0.0], system._annulus(rng)]),
        OSC.energy_scale, adaptive=adaptive))
    with no_hang(), np.errstate(all="ignore"), pytest.raises(simulate.NoAcceptedDraw) as e:
        simulate.simulate_split(oscillator, 0, "train", np.arange(4), 10)
    msg = str(e.value)
    assert "(8 left the canvas, 0 drifted in energy)" in msg, msg
    went = ("became NaN or infinite or could take no step above 1e-12 of a frame interval"
            if adaptive else "became NaN or infinite")
    assert (f"; 4 of the 4 that left the canvas in the last round {went} instead (first at "
            f"frame 1); H is not finite at 4 of the last 4 drawn initial states: "
            f"PHYSICS['oscillator_2d'] reaches a singular point") in msg, msg
    # and a canvas that is merely too small says nothing of the kind
    import dataclasses
    monkeypatch.setitem(systems.PHYSICS, "oscillator_2d", OSC)
    with pytest.raises(simulate.NoAcceptedDraw) as e:
        simulate.simulate_split(dataclasses.replace(oscillator, canvas=0.1), 0, "train",
                                np.arange(4), 10)
    assert "singular" not in str(e.value) and "NaN" not in str(e.value)


def test_a_nan_hamiltonian_is_named_in_the_error(oscillator, monkeypatch):
    import hgan.data.simulate as simulate
    monkeypatch.setattr(simulate, "MAX_ROUNDS", 8)
    monkeypatch.setitem(systems.PHYSICS, "oscillator_2d", systems.Physics(
        lambda x, pr: _h(x, pr) * np.nan, _g, _positions, _sample, OSC.energy_scale))
    with pytest.raises(simulate.NoAcceptedDraw, match=r"\(0 left the canvas, 8 drifted in "
                                                        r"energy\).*; H is not finite at 4 of "
                                                        r"the last 4 drawn initial states"):
        simulate.simulate_split(oscillator, 0, "train", np.arange(4), 10)
