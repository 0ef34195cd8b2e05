"""The Toy Physics systems: Hamiltonians, parameters, initial conditions, particle positions.

Facts follow the Hamiltonian Dynamics Suite (Botev et al. 2021) as summarised in the
project's toy-physics spec; three_body follows the HGN environment because the suite has no
three-body Toy Physics set. Each system records where its recipe comes from (`recipe`),
which the generator stores in the file attributes.

State layout everywhere: x = concat[q, p]; n-body positions are flattened body by body
(x1, y1, x2, y2, ...), momenta likewise.

Parameters are per trajectory; those named in `body_params` also carry a last axis of
n_bodies entries (the suite draws each body's mass, and each pendulum arm's mass and length,
on its own): m of the n-body systems, m and l (arm 1, arm 2) of the double pendulum.

A base system's physics is one `Physics` record in PHYSICS (docs/data.md, "Adding a
system"); the named datasets built on it are the `add(...)` lines of _build.
"""
import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

FRICTION = 0.05  # dp/dt = -dH/dq - FRICTION * dH/dp in the "_friction" variants
N_COLORS_VARIANT = 6  # colour palette of the "_colors" variants
OFFSET_FRACTION = 0.4  # canvas offset U(+-0.4 * canvas_size / 2) in the "_colors" variants

_SUITE = "dm_hamiltonian_dynamics_suite (Botev et al. 2021), toy_physics"
_HGN = "HGN environments (Toth et al. 2019), three-body; the suite has no three-body set"


@dataclass(frozen=True)
class Physics:
    """What a base system brings; the rest of the package asks it, never the base's name.

    Functions take float64 states x [..., 2*dof] and parameters broadcast against x[..., 0]
    (per-body ones with a last axis of n_bodies)."""

    hamiltonian: Callable  # (x, pr) -> H [...]
    gradient: Callable  # (x, pr) -> (dH/dq, dH/dp), each [..., dof]
    positions: Callable  # (x, pr, offset) -> world positions [..., n_bodies, 2]
    sample_state: Callable  # (system, rng, pr) -> one initial state [2*dof]
    energy_scale: Callable  # (system, pr with per-body values averaged) -> an energy [...]
    body_params: tuple = ()  # parameters drawn per body / arm
    angular: bool = False  # every q is an angle: frames show q mod 2 pi (the probe wraps it)
    interchangeable: bool = False  # bodies alike but for their colour (the probe orders them)
    adaptive: bool = False  # integrated with adaptive steps (dopri5) instead of fixed RK4
    h_crosses_zero: bool = False  # relative drifts divide by max(|H|, energy_scale)


@dataclass(frozen=True)
class System:
    """One named dataset variant. Ranges are (lo, hi); lo == hi means a constant."""

    name: str
    base: str  # a key of PHYSICS: mass_spring | pendulum | double_pendulum | two_body | ...
    dof: int
    n_bodies: int
    param_ranges: dict = field(hash=False)
    radius: tuple  # annulus radius range of the initial state
    uniform_annulus: bool  # r = sqrt(U(lo^2, hi^2)) if True else U(lo, hi)
    num_colors: int
    friction: bool
    random_offset: bool  # random canvas location (colors variants)
    canvas: float  # half-size of the canvas bounds (before widening by the offset range)
    recipe: str

    @property
    def physics(self) -> Physics:
        return PHYSICS[self.base]

    @property
    def body_params(self):
        """Parameters with one value per body / arm: shape [n_bodies]."""
        return self.physics.body_params

    @property
    def param_names(self):
        return tuple(self.param_ranges)

    def param_shape(self, name):
        """Shape of one trajectory's value of parameter `name`: () or (n_bodies,)."""
        return (self.n_bodies,) if name in self.body_params else ()

    @property
    def offset_range(self):
        """Half-width of the random canvas offset (0 when the canvas is fixed)."""
        return OFFSET_FRACTION * self.canvas if self.random_offset else 0.0

    @property
    def full_canvas(self):
        """(min, max) of the rendered canvas: bounds widened by the offset range."""
        half = self.canvas + self.offset_range
        return (-half, half)

    # ---- physics -------------------------------------------------------------------------
    def hamiltonian(self, states, params):
        """Energy H(q, p) of states [..., 2*dof]; params name -> array of shape
        lead + param_shape(name), where lead is a prefix of states.shape[:-1] (an [N] or
        [N, n_bodies] array for [N, T, 2*dof] states is expanded over T)."""
        x = np.asarray(states, dtype=np.float64)
        if x.shape[-1] != 2 * self.dof:
            raise ValueError(f"{self.name}: states must end in {2 * self.dof} (q then p), "
                             f"got shape {x.shape}")
        pr = _broadcast_params(self, params, x.shape[:-1])
        return self._checked("hamiltonian", "H", self.physics.hamiltonian(x, pr), x.shape[:-1])

    def vector_field(self, x, pr):
        """dx/dt for float64 states [..., 2*dof] (friction included for _friction variants)."""
        dq, dp = self.physics.gradient(x, pr)  # dH/dq, dH/dp
        want = x.shape[:-1] + (self.dof,)
        self._checked("gradient", "dH/dq", dq, want)
        self._checked("gradient", "dH/dp", dp, want)
        if self.friction:
            return np.concatenate([dp, -dq - FRICTION * dp], axis=-1)
        return np.concatenate([dp, -dq], axis=-1)

    def positions(self, states, params, offset=None):
        """World positions [..., n_bodies, 2] of the particles; with offset (one [2] world
        shift per trajectory, [N, 2] for [N, T, 2*dof] states) the canvas positions, summed
        in the suite's order."""
        x = np.asarray(states, dtype=np.float64)
        pr = _broadcast_params(self, params, x.shape[:-1])
        off = None
        if offset is not None:
            off = np.asarray(offset, dtype=np.float64)
            off = off.reshape(off.shape[:-1] + (1,) * (x.ndim - off.ndim) + (2,))  # like x[..., :2]
        return self._checked("positions", "positions", self.physics.positions(x, pr, off),
                             x.shape[:-1] + (self.n_bodies, 2))

    def particle_radius(self, params):
        """World radius sqrt(m/pi) per trajectory and body: [N, n_bodies] (as the suite draws
        every particle: each system has a mass parameter `m`)."""
        m = np.asarray(params["m"], dtype=np.float64)
        if "m" not in self.body_params:
            m = np.repeat(m.reshape(-1, 1), self.n_bodies, axis=1)
        return np.sqrt(m / np.pi)

    def energy_scale(self, params):
        """A system's natural energy: the floor of the relative-drift denominator where H can
        cross zero (see drift_denominator). Per-body masses and lengths enter through their
        mean over bodies."""
        pr = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        pr = {k: (v.mean(-1) if k in self.body_params else v) for k, v in pr.items()}
        return self.physics.energy_scale(self, pr)

    def drift_denominator(self, h_ref, params):
        """What a relative energy drift divides by (the data's accuracy check, the probe's
        drift metric): |h_ref|, floored at the energy scale only where H crosses zero
        (Physics.h_crosses_zero: the double pendulum, m g l). Elsewhere the scale stays out:
        for the n-body sets g m^2 reaches about 3.4 where a bound orbit's |H| is 0.05 to 1.2,
        and would shrink their drift up to ~6x; 1e-9 of it only guards a division by 0."""
        floor = self.energy_scale(params)
        if not self.physics.h_crosses_zero:
            floor = 1e-9 * floor
        return np.maximum(np.abs(h_ref), floor)

    # ---- sampling ------------------------------------------------------------------------
    def sample_params(self, rng):
        """One trajectory's parameters; a per-body parameter draws each body on its own.
        Constants consume no random numbers."""
        out = {}
        for k, (lo, hi) in self.param_ranges.items():
            shape = self.param_shape(k)
            if lo == hi:
                out[k] = np.full(shape, lo) if shape else lo
            else:
                out[k] = rng.uniform(lo, hi, size=shape) if shape else rng.uniform(lo, hi)
        return out

    def sample_state(self, rng, pr):
        """One initial state [2*dof] drawn from a per-trajectory Generator."""
        return self._checked("sample_state", "the initial state",
                             self.physics.sample_state(self, rng, pr), (2 * self.dof,))

    def _checked(self, function, what, value, shape):
        """`value` if it has `shape`; else one error naming the Physics function that made it
        (a new system's slip would otherwise be a numpy broadcast error deep in the
        integrator, or, for an initial state of length 1, broadcast silently into q = p)."""
        got = np.shape(value)
        if got != tuple(shape):
            raise ValueError(f"system {self.name!r}: PHYSICS[{self.base!r}].{function} returned "
                             f"{what} of shape {got}, expected {tuple(shape)} (dof "
                             f"{self.dof}, n_bodies {self.n_bodies}; docs/data.md, "
                             f"'Adding a system')")
        return value

    def _annulus(self, rng):
        v = rng.standard_normal(2)
        v /= np.linalg.norm(v)
        lo, hi = self.radius
        r = np.sqrt(rng.uniform(lo * lo, hi * hi)) if self.uniform_annulus else rng.uniform(lo, hi)
        return v * r


def _broadcast_params(system, params, lead_shape):
    """Reshape each parameter lead' + core (lead' a prefix of lead_shape) to
    lead' + (1, ...) + core, so that it broadcasts against states[..., 0]."""
    out = {}
    for name in system.param_names:
        if name not in params:
            raise ValueError(f"{system.name}: missing parameter {name!r} "
                             f"(needs {', '.join(system.param_names)})")
        v = np.asarray(params[name], dtype=np.float64)
        core = system.param_shape(name)
        if core and v.shape[-1:] != core:
            raise ValueError(f"{system.name}: parameter {name!r} needs a last axis of "
                             f"{core[0]} (one per body), got shape {v.shape}")
        lead = v.shape[:v.ndim - len(core)]
        if len(lead) < len(lead_shape) and lead == tuple(lead_shape[:len(lead)]):
            v = v.reshape(lead + (1,) * (len(lead_shape) - len(lead)) + core)
        out[name] = v
    return out


# ---- Hamiltonians and their gradients (dH/dq, dH/dp), hand-derived ----------------------
def _h_mass_spring(x, pr):
    q, p = x[..., 0], x[..., 1]
    return 0.5 * pr["k"] * q ** 2 + p ** 2 / (2 * pr["m"])


def _g_mass_spring(x, pr):
    return pr["k"][..., None] * x[..., :1], x[..., 1:] / pr["m"][..., None]


def _h_pendulum(x, pr):
    q, p = x[..., 0], x[..., 1]
    m, g, l = pr["m"], pr["g"], pr["l"]
    return m * g * l * (1 - np.cos(q)) + p ** 2 / (2 * m * l ** 2)


def _g_pendulum(x, pr):
    m, g, l = pr["m"][..., None], pr["g"][..., None], pr["l"][..., None]
    return m * g * l * np.sin(x[..., :1]), x[..., 1:] / (m * l * l)


def _dp_terms(x, pr):
    # m and l carry (arm 1, arm 2) in their last axis.
    q1, q2, p1, p2 = x[..., 0], x[..., 1], x[..., 2], x[..., 3]
    m1, m2 = pr["m"][..., 0], pr["m"][..., 1]
    l1, l2 = pr["l"][..., 0], pr["l"][..., 1]
    s, c = np.sin(q1 - q2), np.cos(q1 - q2)
    d = m1 + m2 * s * s
    den = 2 * m2 * l1 ** 2 * l2 ** 2 * d
    num = m2 * l2 ** 2 * p1 ** 2 + (m1 + m2) * l1 ** 2 * p2 ** 2 - 2 * m2 * l1 * l2 * p1 * p2 * c
    return q1, q2, p1, p2, m1, m2, l1, l2, s, c, d, den, num


def _h_double_pendulum(x, pr):
    q1, q2, _, _, m1, m2, l1, l2, _, _, _, den, num = _dp_terms(x, pr)
    g = pr["g"]
    return num / den - (m1 + m2) * g * l1 * np.cos(q1) - m2 * g * l2 * np.cos(q2)


def _g_double_pendulum(x, pr):
    q1, q2, p1, p2, m1, m2, l1, l2, s, c, d, den, num = _dp_terms(x, pr)
    g = pr["g"]
    kin = num / den
    # d(kin)/d(q1 - q2): quotient rule with dnum = 2 m2 l1 l2 p1 p2 s, dd = 2 m2 s c.
    dkin = 2 * m2 * l1 * l2 * p1 * p2 * s / den - kin * 2 * m2 * s * c / d
    dq1 = dkin + (m1 + m2) * g * l1 * np.sin(q1)
    dq2 = -dkin + m2 * g * l2 * np.sin(q2)
    dp1 = (2 * m2 * l2 ** 2 * p1 - 2 * m2 * l1 * l2 * p2 * c) / den
    dp2 = (2 * (m1 + m2) * l1 ** 2 * p2 - 2 * m2 * l1 * l2 * p1 * c) / den
    return np.stack([dq1, dq2], -1), np.stack([dp1, dp2], -1)


def _nbody_split(x):
    k = x.shape[-1] // 2
    q = x[..., :k].reshape(x.shape[:-1] + (k // 2, 2))
    p = x[..., k:].reshape(x.shape[:-1] + (k // 2, 2))
    return q, p


def _h_nbody(x, pr):
    q, p = _nbody_split(x)
    m, g = pr["m"], pr["g"]  # m: [..., B]
    kin = ((p ** 2).sum(-1) / (2 * m)).sum(-1)
    pot = 0.0
    n = q.shape[-2]
    for i in range(n):
        for j in range(i + 1, n):
            r = np.linalg.norm(q[..., i, :] - q[..., j, :], axis=-1)
            pot = pot - g * m[..., i] * m[..., j] / r
    return kin + pot


@functools.lru_cache(maxsize=None)
def _pairs(n):
    """Pair list (i < j) and incidence matrix [P, n] (+1 at i, -1 at j) of n bodies."""
    i, j = np.triu_indices(n, 1)
    inc = np.zeros((len(i), n))
    inc[np.arange(len(i)), i] = 1.0
    inc[np.arange(len(i)), j] = -1.0
    return i, j, inc


def _g_nbody(x, pr):
    q, p = _nbody_split(x)  # [..., B, 2]
    m, g = pr["m"][..., None], pr["g"][..., None, None]  # [..., B, 1], [..., 1, 1]
    i, j, inc = _pairs(q.shape[-2])
    r = q[..., i, :] - q[..., j, :]  # [..., P, 2]: q_i - q_j
    # d(-m_i m_j / |q_i - q_j|)/dq_i, per pair
    f = r * ((r * r).sum(-1, keepdims=True) ** -1.5) * (m[..., i, :] * m[..., j, :])
    dq = np.swapaxes(np.swapaxes(f, -1, -2) @ inc, -1, -2) * g  # [..., B, 2]
    lead = x.shape[:-1]
    return dq.reshape(lead + (-1,)), (p / m).reshape(lead + (-1,))


# ---- world positions [..., n_bodies, 2] -----------------------------------------------
def _or0(offset):
    return 0.0 if offset is None else offset


def _pos_mass_spring(x, pr, offset):  # offset: like x[..., :2], or None
    return (np.stack([np.zeros_like(x[..., 0]), x[..., 0]], -1) + _or0(offset))[..., None, :]


def _arm(q, l):
    # (l sin q, -l cos q), written as the suite does: float64 frames are truncated to uint8,
    # so even a last-bit difference in a position can change a pixel.
    return np.stack([np.cos(q - np.pi / 2.0) * l, np.sin(q - np.pi / 2.0) * l], -1)


def _pos_pendulum(x, pr, offset):
    return (_arm(x[..., 0], pr["l"]) + _or0(offset))[..., None, :]


def _pos_double_pendulum(x, pr, offset):
    # The suite shifts bob 1 first and adds arm 2 to the shifted bob.
    b1 = _arm(x[..., 0], pr["l"][..., 0]) + _or0(offset)
    b2 = b1 + _arm(x[..., 1], pr["l"][..., 1])
    return np.stack([b1, b2], -2)


def _pos_nbody(x, pr, offset):
    q = _nbody_split(x)[0]
    return q if offset is None else q + offset[..., None, :]


# ---- initial conditions ----------------------------------------------------------------
def _init_mass_spring(system, rng, pr):
    s = system._annulus(rng)
    return np.array([s[0], s[1] * np.sqrt(pr["k"] * pr["m"])])


def _init_pendulum(system, rng, pr):
    return system._annulus(rng)


def _init_double_pendulum(system, rng, pr):
    a, b = system._annulus(rng), system._annulus(rng)
    return np.array([a[0], b[0], a[1], b[1]])


def _init_two_body(system, rng, pr):
    lo, hi = system.radius
    pos = rng.uniform(lo, hi, size=2)
    r = np.linalg.norm(pos)
    # The suite's start, whatever m and g: p = vel, the circular orbit of m = g = 1. With
    # the colors variant's masses and g this orbit is elliptic or unbound, as in the suite.
    vel = pos[::-1] * np.array([1.0, -1.0]) / (2 * r ** 1.5)
    return np.concatenate([pos, -pos, vel, -vel])


def _rot(v, angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _init_three_body(system, rng, pr):
    # The HGN environment's recipe, draw for draw: radius, a U(-1, 1)^2 point normalised
    # (not isotropic: the diagonals are twice as likely as the axes), and the velocity
    # reversed when a standard normal falls below 0.5 (probability 0.69, not 1/2).
    lo, hi = system.radius
    radius = rng.uniform(lo, hi)
    d = rng.uniform(-1.0, 1.0, size=2)
    p0 = d / np.linalg.norm(d) * radius
    v0 = _rot(p0, np.pi / 2)
    if rng.standard_normal() < 0.5:
        v0 = -v0
    v0 = v0 * np.sqrt(np.sin(np.pi / 3) / (2 * np.cos(np.pi / 6) ** 2)) / radius ** 1.5
    third = 2 * np.pi / 3
    pos = [p0, _rot(p0, third), _rot(_rot(p0, third), third)]
    vel = [v0, _rot(v0, third), _rot(_rot(v0, third), third)]
    vel = np.concatenate(vel) * (1 + 0.1 * rng.uniform(-1, 1, size=6))
    return np.concatenate([np.concatenate(pos), np.repeat(pr["m"], 2) * vel])


# ---- energy scales (system, parameters with per-body values averaged) -------------------
def _scale_spring(system, pr):  # k r^2 / 2 at the smallest start radius
    return pr["k"] * 0.5 * system.radius[0] ** 2


def _scale_pendulum(system, pr):
    return pr["m"] * pr["g"] * pr["l"]


def _scale_gravity(system, pr):
    return pr["g"] * pr["m"] ** 2


PHYSICS = {
    "mass_spring": Physics(_h_mass_spring, _g_mass_spring, _pos_mass_spring, _init_mass_spring,
                           _scale_spring),
    "pendulum": Physics(_h_pendulum, _g_pendulum, _pos_pendulum, _init_pendulum,
                        _scale_pendulum, angular=True),
    "double_pendulum": Physics(_h_double_pendulum, _g_double_pendulum, _pos_double_pendulum,
                               _init_double_pendulum, _scale_pendulum, body_params=("m", "l"),
                               angular=True, h_crosses_zero=True),
    "two_body": Physics(_h_nbody, _g_nbody, _pos_nbody, _init_two_body, _scale_gravity,
                        body_params=("m",), interchangeable=True),
    "three_body": Physics(_h_nbody, _g_nbody, _pos_nbody, _init_three_body, _scale_gravity,
                          body_params=("m",), interchangeable=True, adaptive=True),
}


def make_system(name, base, dof, n_bodies, ranges, radius, colors, canvas, uniform=False,
                friction=False, offset=False, recipe=_SUITE):
    """A System on the base PHYSICS[base], checked: ranges name -> (lo, hi) must hold `m`
    (every particle's radius is sqrt(m / pi)) and each per-body parameter."""
    if base not in PHYSICS:
        raise ValueError(f"system {name!r}: base {base!r} has no PHYSICS entry "
                         f"(bases: {', '.join(PHYSICS)})")
    missing = {"m", *PHYSICS[base].body_params} - set(ranges)
    if missing:
        raise ValueError(f"system {name!r}: no range for parameter(s) "
                         f"{', '.join(sorted(missing))}; every particle's radius is "
                         f"sqrt(m / pi), and per-body parameters need a range")
    # numpy draws U(lo, hi) with lo > hi as "high - low < 0", naming neither system nor
    # parameter, and a parameter <= 0 was generated and written, then refused by open_h5
    # (every stored parameter must be positive): both are said here, at the definition.
    for key, pair in ranges.items():
        lo, hi = _pair(name, f"the range of {key!r}", pair)
        if not 0 < lo <= hi:
            raise ValueError(f"system {name!r}: the range of {key!r} is ({lo!r}, {hi!r}); it "
                             f"needs 0 < lo <= hi (lo == hi: a constant; hgan.data.open_h5 "
                             f"refuses a parameter that is not positive)")
    lo, hi = radius = _pair(name, "radius", radius)
    if not 0 <= lo <= hi:
        raise ValueError(f"system {name!r}: radius is ({lo!r}, {hi!r}); it needs "
                         f"0 <= lo <= hi")
    if not (isinstance(canvas, (int, float, np.integer, np.floating)) and np.isfinite(canvas)
            and canvas > 0):
        raise ValueError(f"system {name!r}: canvas (the half-size no particle may leave) "
                         f"must be a positive number, got {canvas!r}")
    # Each trajectory's bodies take distinct colours, a permutation of the palette cut to
    # n_bodies (simulate._Chunk.result): fewer colours than bodies was numpy's "could not
    # broadcast input array from shape (2,) into shape (3,)" once the first chunk was done.
    if not isinstance(colors, (int, np.integer)) or isinstance(colors, bool) or colors < 1 \
            or 1 < colors < n_bodies:
        raise ValueError(f"system {name!r}: {colors!r} colours for {n_bodies} bodies; each "
                         f"body of a trajectory takes its own colour, so give at least "
                         f"{n_bodies} (or 1: every body the same colour)")
    return System(name, base, dof, n_bodies, dict(ranges), radius, uniform, colors,
                  friction, offset, canvas, recipe)


def _pair(name, what, value):
    """(lo, hi) as two finite floats, or one error naming the system and `what`."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"system {name!r}: {what} must be a (lo, hi) pair of numbers, "
                         f"got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"system {name!r}: {what} must be finite, got {value!r}")
    return lo, hi


def _add(registry, name, *args, **kw):
    """registry[name] = make_system(name, ...), refusing a name already there: a dict would
    let a second add("pendulum", ...) (or a hand-made "<base>_colors" that the variant table
    also makes) replace the first without a word, and every pendulum file with it."""
    if name in registry:
        raise ValueError(f"system {name!r} is added twice in hgan/data/systems.py _build "
                         f"(as {registry[name].base!r} first); give the new one another name")
    registry[name] = make_system(name, *args, **kw)


def _build():
    c = lambda v: (v, v)  # noqa: E731 - a constant parameter
    out = {}
    add = functools.partial(_add, out)

    # Canvas half-sizes: r_max + sqrt(m_max/pi) (mass_spring), l_max + sqrt(m_max/pi)
    # (pendulum), 2 l_max + sqrt(m_max/pi) (double_pendulum); fixed for n-body.
    sq = lambda m: float(np.sqrt(m / np.pi))  # noqa: E731
    add("mass_spring", "mass_spring", 1, 1, dict(k=c(2.0), m=c(0.5)), (0.1, 1.0), 1, 1.0 + sq(0.5))
    add("pendulum", "pendulum", 1, 1, dict(m=c(0.5), g=c(3.0), l=c(1.0)), (1.3, 2.3), 1,
        1.0 + sq(0.5))
    add("double_pendulum", "double_pendulum", 2, 2, dict(m=c(0.5), g=c(3.0), l=c(1.0)),
        (1.3, 2.3), 2, 2.0 + sq(0.5))
    add("two_body", "two_body", 4, 2, dict(m=c(1.0), g=c(1.0)), (0.5, 1.5), 2, 2.75)
    add("three_body", "three_body", 6, 3, dict(m=c(1.0), g=c(1.0)), (0.9, 1.2), 3, 3.0,
        recipe=_HGN)
    variable = {
        "mass_spring": (dict(k=c(2.0), m=(0.2, 1.0)), (0.1, 1.0), 1.0 + sq(1.0)),
        "pendulum": (dict(m=(0.5, 1.5), g=(3.0, 4.0), l=(0.5, 1.0)), (1.3, 2.3), 1.0 + sq(1.5)),
        "double_pendulum": (dict(m=(0.4, 0.6), g=(2.5, 4.0), l=(0.75, 1.0)), (1.0, 2.5),
                            2.0 + sq(0.6)),
        "two_body": (dict(m=(0.5, 1.5), g=(0.5, 1.5)), (0.5, 1.5), 5.0),
    }
    for base, (ranges, radius, bound) in variable.items():
        s = out[base]
        frictions = (False,) if base == "two_body" else (False, True)
        for fr in frictions:
            name = base + "_colors" + ("_friction" if fr else "")
            # datasets.py: two_body_colors keeps its canvas fixed (no random location).
            add(name, base, s.dof, s.n_bodies, ranges, radius, N_COLORS_VARIANT, bound,
                uniform=True, friction=fr, offset=base != "two_body")
    return out


_REGISTRY = _build()
SYSTEMS = tuple(_REGISTRY)


def get_system(name):
    """The System called `name`; ValueError listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown system {name!r}; valid systems: {', '.join(SYSTEMS)}") from None
