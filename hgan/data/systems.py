"""The Toy Physics systems: Hamiltonians, parameters, initial conditions, particle positions.

Facts follow the Hamiltonian Dynamics Suite (Botev et al. 2021) as summarised in the
project's toy-physics spec; three_body follows the HGN environment because the suite has no
three-body Toy Physics set. Each system records where its recipe comes from (`recipe`),
which the generator stores in the file attributes.

State layout everywhere: x = concat[q, p]; n-body positions are flattened body by body
(x1, y1, x2, y2, ...), momenta likewise.
"""
from dataclasses import dataclass, field

import numpy as np

FRICTION = 0.05  # dp/dt = -dH/dq - FRICTION * dH/dp in the "_friction" variants
N_COLORS_VARIANT = 6  # colour palette of the "_colors" variants
OFFSET_FRACTION = 0.4  # canvas offset U(+-0.4 * canvas_size / 2) in the "_colors" variants

_SUITE = "dm_hamiltonian_dynamics_suite (Botev et al. 2021), toy_physics"
_HGN = "HGN environments (Toth et al. 2019), three-body; the suite has no three-body set"


@dataclass(frozen=True)
class System:
    """One named dataset variant. Ranges are (lo, hi); lo == hi means a constant."""

    name: str
    base: str  # mass_spring | pendulum | double_pendulum | two_body | three_body
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
    def param_names(self):
        return tuple(self.param_ranges)

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
        """Energy H(q, p) of states [..., 2*dof]; params name -> array broadcastable to
        states[..., 0] (an [N] array for [N, T, 2*dof] states is expanded to [N, 1])."""
        x = np.asarray(states, dtype=np.float64)
        if x.shape[-1] != 2 * self.dof:
            raise ValueError(f"{self.name}: states must end in {2 * self.dof} (q then p), "
                             f"got shape {x.shape}")
        pr = _broadcast_params(self, params, x.shape[:-1])
        return _HAMILTONIANS[self.base](x, pr)

    def vector_field(self, x, pr):
        """dx/dt for float64 states [..., 2*dof] (friction included for _friction variants)."""
        dq, dp = _GRADIENTS[self.base](x, pr)  # dH/dq, dH/dp
        if self.friction:
            return np.concatenate([dp, -dq - FRICTION * dp], axis=-1)
        return np.concatenate([dp, -dq], axis=-1)

    def positions(self, states, params):
        """World positions [..., n_bodies, 2] of the particles (before any canvas offset)."""
        x = np.asarray(states, dtype=np.float64)
        pr = _broadcast_params(self, params, x.shape[:-1])
        return _POSITIONS[self.base](x, pr)

    def particle_radius(self, params):
        """World radius sqrt(m/pi) per trajectory and body: [N, n_bodies]."""
        m = np.asarray(params.get("m", np.ones(1)), dtype=np.float64)
        return np.repeat(np.sqrt(m / np.pi)[:, None], self.n_bodies, axis=1)

    def energy_scale(self, params):
        """Denominator floor of the relative energy drift: H itself can cross zero for the
        double pendulum, so drift is measured against max(|H0|, this scale)."""
        pr = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        if self.base == "mass_spring":
            return pr["k"] * 0.5 * self.radius[0] ** 2
        if self.base in ("pendulum", "double_pendulum"):
            return pr["m"] * pr["g"] * pr["l"]
        return pr["g"] * pr["m"] ** 2

    # ---- sampling ------------------------------------------------------------------------
    def sample_params(self, rng):
        return {k: (lo if lo == hi else rng.uniform(lo, hi)) for k, (lo, hi) in
                self.param_ranges.items()}

    def sample_state(self, rng, pr):
        """One initial state [2*dof] drawn from a per-trajectory Generator."""
        return _SAMPLERS[self.base](self, rng, pr)

    def _annulus(self, rng):
        v = rng.standard_normal(2)
        v /= np.linalg.norm(v)
        lo, hi = self.radius
        r = np.sqrt(rng.uniform(lo * lo, hi * hi)) if self.uniform_annulus else rng.uniform(lo, hi)
        return v * r


def _broadcast_params(system, params, lead_shape):
    out = {}
    for name in system.param_names:
        if name not in params:
            raise ValueError(f"{system.name}: missing parameter {name!r} "
                             f"(needs {', '.join(system.param_names)})")
        v = np.asarray(params[name], dtype=np.float64)
        if v.ndim == 1 and len(lead_shape) > 1 and v.shape[0] == lead_shape[0]:
            v = v.reshape(v.shape + (1,) * (len(lead_shape) - 1))
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
    # Both arms share m and l in the suite; keep m1, m2, l1, l2 distinct in the algebra.
    q1, q2, p1, p2 = x[..., 0], x[..., 1], x[..., 2], x[..., 3]
    m1 = m2 = pr["m"]
    l1 = l2 = pr["l"]
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
    m, g = pr["m"], pr["g"]
    kin = (p ** 2).sum((-1, -2)) / (2 * m)
    pot = 0.0
    n = q.shape[-2]
    for i in range(n):
        for j in range(i + 1, n):
            pot = pot - g * m * m / np.linalg.norm(q[..., i, :] - q[..., j, :], axis=-1)
    return kin + pot


def _pairs(n):
    """Pair list (i < j) and incidence matrix [P, n] (+1 at i, -1 at j) of n bodies."""
    i, j = np.triu_indices(n, 1)
    inc = np.zeros((len(i), n))
    inc[np.arange(len(i)), i] = 1.0
    inc[np.arange(len(i)), j] = -1.0
    return i, j, inc


_PAIRS = {n: _pairs(n) for n in (2, 3)}


def _g_nbody(x, pr):
    q, p = _nbody_split(x)  # [..., B, 2]
    m, g = pr["m"][..., None, None], pr["g"][..., None, None]
    i, j, inc = _PAIRS[q.shape[-2]]
    r = q[..., i, :] - q[..., j, :]  # [..., P, 2]: q_i - q_j
    f = r * ((r * r).sum(-1, keepdims=True) ** -1.5)  # d(-1/|q_i - q_j|)/dq_i
    dq = np.swapaxes(np.swapaxes(f, -1, -2) @ inc, -1, -2) * (g * m * m)  # [..., B, 2]
    lead = x.shape[:-1]
    return dq.reshape(lead + (-1,)), (p / m).reshape(lead + (-1,))


# ---- world positions [..., n_bodies, 2] -----------------------------------------------
def _pos_mass_spring(x, pr):
    return np.stack([np.zeros_like(x[..., 0]), x[..., 0]], -1)[..., None, :]


def _pos_pendulum(x, pr):
    q, l = x[..., 0], pr["l"]
    return np.stack([l * np.sin(q), -l * np.cos(q)], -1)[..., None, :]


def _pos_double_pendulum(x, pr):
    l = pr["l"]
    b1 = np.stack([l * np.sin(x[..., 0]), -l * np.cos(x[..., 0])], -1)
    b2 = b1 + np.stack([l * np.sin(x[..., 1]), -l * np.cos(x[..., 1])], -1)
    return np.stack([b1, b2], -2)


def _pos_nbody(x, pr):
    return _nbody_split(x)[0]


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
    # Circular orbit about the centre of mass: |v| = sqrt(g m / (4 r)), which is the suite's
    # 1 / (2 sqrt(r)) at m = g = 1.
    vel = pos[::-1] * np.array([1.0, -1.0]) / (2 * r ** 1.5) * np.sqrt(pr["g"] * pr["m"])
    q = np.concatenate([pos, -pos])
    p = pr["m"] * np.concatenate([vel, -vel])
    return np.concatenate([q, p])


def _rot(v, angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _init_three_body(system, rng, pr):
    lo, hi = system.radius
    d = rng.standard_normal(2)
    radius = rng.uniform(lo, hi)
    p0 = d / np.linalg.norm(d) * radius
    v0 = _rot(p0, np.pi / 2)
    if rng.uniform() < 0.5:
        v0 = -v0
    v0 = v0 * np.sqrt(np.sin(np.pi / 3) / (2 * np.cos(np.pi / 6) ** 2)) / radius ** 1.5
    third = 2 * np.pi / 3
    pos = [p0, _rot(p0, third), _rot(_rot(p0, third), third)]
    vel = [v0, _rot(v0, third), _rot(_rot(v0, third), third)]
    vel = np.concatenate(vel) * (1 + 0.1 * rng.uniform(-1, 1, size=6))
    return np.concatenate([np.concatenate(pos), pr["m"] * vel])


_HAMILTONIANS = dict(mass_spring=_h_mass_spring, pendulum=_h_pendulum,
                     double_pendulum=_h_double_pendulum, two_body=_h_nbody, three_body=_h_nbody)
_GRADIENTS = dict(mass_spring=_g_mass_spring, pendulum=_g_pendulum,
                  double_pendulum=_g_double_pendulum, two_body=_g_nbody, three_body=_g_nbody)
_POSITIONS = dict(mass_spring=_pos_mass_spring, pendulum=_pos_pendulum,
                  double_pendulum=_pos_double_pendulum, two_body=_pos_nbody,
                  three_body=_pos_nbody)
_SAMPLERS = dict(mass_spring=_init_mass_spring, pendulum=_init_pendulum,
                 double_pendulum=_init_double_pendulum, two_body=_init_two_body,
                 three_body=_init_three_body)


def _build():
    c = lambda v: (v, v)  # noqa: E731 - a constant parameter
    out = {}

    def add(name, base, dof, nb, ranges, radius, colors, bound, uniform=False, friction=False,
            offset=False, recipe=_SUITE):
        out[name] = System(name, base, dof, nb, ranges, radius, uniform, colors, friction,
                           offset, bound, recipe)

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
            add(name, base, s.dof, s.n_bodies, ranges, radius, N_COLORS_VARIANT, bound,
                uniform=True, friction=fr, offset=True)
    return out


_REGISTRY = _build()
SYSTEMS = tuple(_REGISTRY)


def get_system(name):
    """The System called `name`; ValueError listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown system {name!r}; valid systems: {', '.join(SYSTEMS)}") from None
