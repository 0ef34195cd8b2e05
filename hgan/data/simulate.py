"""Vectorised ground-truth trajectories with per-trajectory seeding and rejection.

Every trajectory i of a split owns a numpy Generator seeded from (seed, split id, i); its
parameters, initial state, re-draws after a rejection, colours and offset all come from that
stream. Batches are therefore only a speed device: the same seed gives the same arrays
whatever the chunking.

Ground truth: classical RK4 in float64 with `substeps` steps per frame interval, vectorised
over the batch (scipy's solve_ivp per trajectory is ~100x slower here); three_body uses an
adaptive Dormand-Prince 5(4) with one step size per trajectory instead, because its close
encounters need steps that would be wasted on every other trajectory. A conservative
trajectory whose relative energy drift exceeds DRIFT_TOL is integrated again with twice the
substeps (or a 10x tighter tolerance), up to MAX_REFINE times, then re-drawn and counted as
`inaccurate`; mass_spring without friction uses the closed form q = a cos(wt + b).
Generation runs chunk after chunk through `simulate_chunks`, which integrates each chunk's
re-draws together with the next chunk's fresh trajectories.
"""
import numpy as np

DT = 0.05
# Every GIF plays in real time, one frame per time step (20 frames per second), real videos
# (`hgan.data show`) and generated ones alike: generated motion is judged against real motion
# at the same speed (samples played at 10 fps looked half as fast as the data).
REAL_TIME_FPS = round(1 / DT)
SUBSTEPS = 10  # RK4 steps per frame interval, as the suite's 10 internal steps per dt
DRIFT_TOL = 5e-7  # re-integrate above this; the spec demands < 1e-6 over 512 frames
MAX_REFINE = 3  # up to 8x substeps (1000x tighter tolerance) before a re-draw
ADAPTIVE_TOL = 1e-9  # dopri5 tolerance (rtol = atol) for three_body
# dopri5 gives a trajectory up below this step (the smallest step taken for 2,048 three_body
# draws and their 2,912 re-draws was 4.8e-6)
MIN_STEP = DT * 1e-12
MAX_ROUNDS = 1000  # rejection rounds before giving up (a broken recipe, not bad luck)

SPLIT_IDS = {"train": 0, "test": 1}


class NoAcceptedDraw(ValueError):
    """Rejection sampling gave up on a trajectory (a ValueError: with a sound recipe only
    trajectories far too long for the canvas get here, and the CLIs report it as bad input)."""


def trajectory_rng(seed, split, index):
    return np.random.default_rng([int(seed), SPLIT_IDS.get(split, 2), int(index)])


def rk4(system, x0, pr, frames, substeps):
    """States [n, frames, 2*dof] from x0 [n, 2*dof] sampled every DT, and `inside` [n].

    A trajectory is dropped from the vectorised batch the first frame a particle leaves the
    canvas (it will be rejected anyway; in three_body over half are), and its remaining rows
    are left unfilled.
    """
    h = DT / substeps
    n = x0.shape[0]
    out = np.empty((n, frames, x0.shape[1]))
    x = x0.astype(np.float64, copy=True)
    out[:, 0] = x
    inside = _inside(system, x[:, None], pr)
    live = np.flatnonzero(inside)
    x, p = x[live], {k: v[live] for k, v in pr.items()}
    f = system.vector_field
    for t in range(1, frames):
        if live.size == 0:
            break
        for _ in range(substeps):
            k1 = f(x, p)
            k2 = f(x + 0.5 * h * k1, p)
            k3 = f(x + 0.5 * h * k2, p)
            k4 = f(x + h * k3, p)
            x = x + (h / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)
        out[live, t] = x
        keep = _inside(system, x[:, None], p)
        if not keep.all():
            inside[live[~keep]] = False
            live, x = live[keep], x[keep]
            p = {k: v[keep] for k, v in p.items()}
    return out, inside


# Dormand-Prince 5(4) tableau (the method behind solve_ivp's RK45).
_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
      [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
      [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656]]
_B5 = [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]
_B4 = [5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]


def dopri5(system, x0, pr, frames, tol=ADAPTIVE_TOL):
    """Adaptive RK45 with a step size per trajectory, vectorised: each pass advances every
    trajectory still in flight by its own step, cut short to land on its next frame. For
    close encounters (three_body), where fixed steps would need 30x more work for the worst
    few.

    Trajectories do not wait for each other at frames: one in a close encounter takes its
    many small steps while the others move on to later frames. Passes are then as many as
    the busiest trajectory's steps over the whole run, not the sum over frames of the
    busiest trajectory's steps in each (measured at 2 x 1,024 three_body draws and their
    re-draws: 23,800 passes instead of 146,000), and Python overhead per pass is what costs
    here (a median pass holds 2 trajectories when they wait at frames). Every trajectory
    makes the same steps either way, so the states are the same to the bit.

    A trajectory whose step error is not finite (its state or a slope became NaN or
    infinite) or whose step shrank below MIN_STEP cannot go on: rejected steps would shrink
    it forever (these hung generation). It stops there like one that left the canvas, its
    frame written NaN as rk4 leaves a state that went NaN; both happen at a singular point
    of H, and simulate_chunks reports them as such."""
    n = x0.shape[0]
    out = np.empty((n, frames, x0.shape[1]))
    x = x0.astype(np.float64, copy=True)
    out[:, 0] = x
    inside = _inside(system, x[:, None], pr)
    act = np.flatnonzero(inside) if frames > 1 else np.empty(0, np.int64)
    h = np.full(n, DT / 4)
    rem = np.full(n, DT)        # time left to each trajectory's next frame
    frame = np.ones(n, np.int64)  # the frame each trajectory is heading for
    f = system.vector_field
    fsal = None  # f(x) per trajectory, kept from the last accepted step
    while act.size:
        p = _take(pr, act)
        xa = x[act]
        h_act = h[act]
        hh = np.minimum(h_act, rem[act])
        hc = hh[:, None]
        k = [f(xa, p) if fsal is None else fsal[act]]
        for a in _A[1:]:
            k.append(f(xa + hc * sum(c * kk for c, kk in zip(a, k) if c), p))
        y5 = xa + hc * sum(c * kk for c, kk in zip(_B5, k) if c)
        k.append(f(y5, p))
        y4 = xa + hc * sum(c * kk for c, kk in zip(_B4, k) if c)
        scale = tol * (1.0 + np.maximum(np.abs(xa), np.abs(y5)))
        err = np.sqrt((((y5 - y4) / scale) ** 2).mean(-1))
        ok = err <= 1.0
        acc = act[ok]
        x[acc] = y5[ok]
        if fsal is None:
            fsal = np.empty_like(x)
        fsal[acc] = k[6][ok]  # first-same-as-last: f(y5) starts the next step
        if not ok.all():
            fsal[act[~ok]] = k[0][~ok]
        rem[acc] -= hh[ok]
        grow = np.clip(0.9 * np.maximum(err, 1e-10) ** -0.2, 0.2, 5.0)
        # A step cut short to land on the frame says nothing about the step size.
        h_next = np.where(ok & (hh < h_act), h_act, hh * grow)
        h[act] = h_next
        going = h_next >= MIN_STEP   # False for NaN too
        if not going.all():
            lost = act[~going]
            out[lost, frame[lost]] = np.nan
            inside[lost] = False
            acc, act = act[ok & going], act[going]
        # hh <= rem, and rem - hh == 0 only where hh == rem: exactly the steps that land
        landed = acc[rem[acc] == 0.0]
        if landed.size:
            out[landed, frame[landed]] = x[landed]
            keep = _inside(system, x[landed][:, None], _take(pr, landed))
            inside[landed[~keep]] = False
            frame[landed] += 1
            rem[landed] = DT
            stop = landed[~keep | (frame[landed] == frames)]
            act = act[~np.isin(act, stop)] if stop.size else act
    return out, inside


def mass_spring_exact(x0, pr, frames):
    """Closed form q = a cos(wt + b), p = -a m w sin(wt + b), w = sqrt(k/m)."""
    k, m = pr["k"][:, None], pr["m"][:, None]
    w = np.sqrt(k / m)
    q0, p0 = x0[:, :1], x0[:, 1:]
    a = np.sqrt(q0 ** 2 + (p0 / (m * w)) ** 2)
    b = np.arctan2(-p0 / (m * w), q0)
    t = np.arange(frames) * DT
    q = a * np.cos(w * t + b)
    p = -a * m * w * np.sin(w * t + b)
    return np.stack([q, p], -1)


def energy_drift(system, states, pr):
    """max_t |H(t) - H(0)| / |H(0)| per trajectory (the spec's relative drift), float64 states.

    |H(0)| is floored at the energy scale only where H crosses zero (System.drift_denominator):
    against g m^2, a two_body_colors trajectory whose relative drift was 1.1e-6 passed as
    4.7e-7 (a review found it at index 1098, seed 0)."""
    e = system.hamiltonian(states, pr)
    return np.abs(e - e[:, :1]).max(1) / system.drift_denominator(e[:, 0], pr)


def integrate(system, x0, pr, frames, substeps=SUBSTEPS):
    """Ground truth [n, frames, 2*dof], `inside` [n] (no particle ever left the canvas) and
    `accurate` [n] (energy drift <= DRIFT_TOL, always true with friction or closed form)."""
    if system.base == "mass_spring" and not system.friction:
        states = mass_spring_exact(x0, pr, frames)
        return states, _inside(system, states, pr), np.ones(len(x0), bool)
    if system.physics.adaptive:
        states, inside = dopri5(system, x0, pr, frames)
    else:
        states, inside = rk4(system, x0, pr, frames, substeps)
    accurate = np.ones(len(x0), bool)
    if system.friction:
        return states, inside, accurate
    todo = np.flatnonzero(inside)
    drift = energy_drift(system, states[todo], _take(pr, todo))
    # An H that is not finite at finite states (every state is inside the canvas) stays so at
    # any step size: re-drawn at once, not after MAX_REFINE integrations at up to 8x substeps.
    accurate[todo[~np.isfinite(drift)]] = False
    todo = todo[_drifts(drift) & np.isfinite(drift)]
    for level in range(1, MAX_REFINE + 1):
        if todo.size == 0:
            break
        sub = _take(pr, todo)
        if system.physics.adaptive:
            redo, ins = dopri5(system, x0[todo], sub, frames, ADAPTIVE_TOL * 10.0 ** (-level))
        else:
            redo, ins = rk4(system, x0[todo], sub, frames, substeps * 2 ** level)
        states[todo] = redo
        inside[todo] = ins
        bad = ins.copy()
        bad[ins] = _drifts(energy_drift(system, redo[ins], _take(sub, np.flatnonzero(ins))))
        todo = todo[bad]
    accurate[todo] = False
    return states, inside, accurate


def _drifts(drift):
    """Where a trajectory fails the energy check. A NaN drift fails it too: `drift > tol` let a
    system whose H is NaN at its states (a log or sqrt of a negative, where its gradient is
    finite) write every trajectory unchecked."""
    return ~(drift <= DRIFT_TOL)


def _take(pr, idx):
    return {k: v[idx] for k, v in pr.items()}


def _inside(system, states, pr):
    """True where every particle centre stays inside the canvas bounds for all frames."""
    pos = system.positions(states, pr)
    return (np.abs(pos) <= system.canvas).all(axis=(1, 2, 3))


def _draw(system, rng):
    pr = system.sample_params(rng)
    return pr, system.sample_state(rng, pr)


class _Chunk:
    """Trajectories of one output chunk while some of them still await an accepted draw."""

    def __init__(self, system, seed, split, indices, frames):
        self.indices = np.asarray(indices)
        self.rngs = [trajectory_rng(seed, split, i) for i in self.indices]
        n = len(self.rngs)
        self.params = {k: np.empty((n,) + system.param_shape(k)) for k in system.param_names}
        self.x0 = np.empty((n, 2 * system.dof))
        self.states = np.empty((n, frames, 2 * system.dof))
        self.draws = np.zeros(n, np.int64)
        self.remaining = n
        self.rejected = self.inaccurate = self.nonfinite = 0
        for j in range(n):
            self.redraw(system, j)

    def redraw(self, system, j):
        if self.draws[j] >= MAX_ROUNDS:
            raise NoAcceptedDraw(f"{system.name}: trajectory {self.indices[j]} found no "
                                 f"accepted draw in {MAX_ROUNDS} (each left the canvas or "
                                 f"drifted in energy): the system's recipe is broken, or the "
                                 f"trajectories are too long for its canvas")
        pr, self.x0[j] = _draw(system, self.rngs[j])
        for k in system.param_names:
            self.params[k][j] = pr[k]
        self.draws[j] += 1

    def result(self, system):
        """Colours and offsets come from each trajectory's stream after its accepted draw."""
        n = len(self.rngs)
        color_index = np.empty((n, system.n_bodies), np.int32)
        offset = np.zeros((n, 2))
        for j, rng in enumerate(self.rngs):
            if system.num_colors == 1:
                color_index[j] = 0
            else:
                color_index[j] = rng.permutation(system.num_colors)[:system.n_bodies]
            if system.base == "mass_spring" and system.random_offset:
                # ideal_mass_spring.py: a random x position U(0, 1), then ONE canvas shift
                # (its offset has shape [n, 1]) that moves x and y alike.
                x = rng.uniform(0.0, 1.0)
                offset[j] = rng.uniform(-system.offset_range, system.offset_range) + \
                    np.array([x, 0.0])
            elif system.random_offset:
                offset[j] = rng.uniform(-system.offset_range, system.offset_range, size=2)
        return dict(states=self.states, params=self.params, color_index=color_index,
                    offset=offset, rejected=self.rejected, inaccurate=self.inaccurate,
                    nonfinite=self.nonfinite)


def simulate_chunks(system, seed, split, index_chunks, frames):
    """Accepted trajectories for consecutive index chunks, yielded in order (see
    simulate_split for the dict). A re-drawn trajectory is integrated together with the next
    chunk's fresh ones instead of in a narrow round of its own: for an adaptive integrator a
    round costs about the same whatever its width (the hardest trajectory sets the number of
    passes), so this removes most rounds. Results are per trajectory, so they do not depend
    on the chunking."""
    chunks = iter(index_chunks)
    open_chunks = []     # chunks admitted and not yet yielded, in output order
    pending = []         # (chunk, j): draws waiting to be integrated
    draws = accepted = left = drifted = 0
    exhausted = False
    while not exhausted or open_chunks:
        if not exhausted:
            indices = next(chunks, None)
            if indices is None:
                exhausted = True
            elif len(indices):
                c = _Chunk(system, seed, split, indices, frames)
                open_chunks.append(c)
                pending.extend((c, j) for j in range(len(indices)))
        if pending:
            x0 = np.stack([c.x0[j] for c, j in pending])
            params = {k: np.array([c.params[k][j] for c, j in pending])
                      for k in system.param_names}
            traj, inside, accurate = integrate(system, x0, params, frames)
            draws, accepted = draws + len(pending), accepted + int((inside & accurate).sum())
            left, drifted = left + int((~inside).sum()), drifted + int((inside & ~accurate).sum())
            if accepted == 0 and draws >= MAX_ROUNDS:
                # MAX_ROUNDS rejections in a row, over the split rather than per trajectory:
                # a broken recipe (a canvas of zero size) is said after a round or a few,
                # not after MAX_ROUNDS rounds of every trajectory (30 s for three_body's 256)
                raise NoAcceptedDraw(f"{system.name}: none of the first {draws} draws was "
                                     f"accepted ({left} left the canvas, {drifted} drifted in "
                                     f"energy): the system's recipe is broken, or the "
                                     f"trajectories are too long for its canvas"
                                     + _nonfinite_check(system, traj, inside, x0, params)
                                     + _gradient_check(system, x0[:1], params))
            nonfinite = _went_nonfinite(system, traj, inside, params)[0]
            redo = []
            for m, (c, j) in enumerate(pending):
                if inside[m] and accurate[m]:
                    c.states[j] = traj[m]
                    c.remaining -= 1
                    continue
                if inside[m]:
                    c.inaccurate += 1
                else:
                    c.rejected += 1
                    c.nonfinite += int(nonfinite[m])
                c.redraw(system, j)
                redo.append((c, j))
            pending = redo
        while open_chunks and open_chunks[0].remaining == 0:
            yield open_chunks.pop(0).result(system)


def _went_nonfinite(system, states, inside, params):
    """(bool [n]: the draw left the canvas by becoming NaN or infinite, int [n]: the frame it
    left on) for a round's draws. A state that is not finite fails `|position| <= canvas` like
    one that left; the integrators fill each trajectory up to and including the frame it left
    on, so that frame tells the two apart (the rows after it were never written)."""
    bad = np.zeros(len(inside), bool)
    first = np.zeros(len(inside), np.int64)
    out = np.flatnonzero(~inside)
    if out.size:
        with np.errstate(all="ignore"):
            pos = system.positions(states[out], _take(params, out))   # [n, T, B, 2]
            ok = (np.abs(pos) <= system.canvas).all(axis=(2, 3))
        first[out] = np.argmax(~ok, axis=1)
        bad[out] = ~np.isfinite(pos[np.arange(out.size), first[out]]).all(axis=(1, 2))
    return bad, first


def went_singular(system):
    """How a draw that met a singular point is said: NaN or infinite, and for dopri5 also a
    step that shrank below MIN_STEP (its frame is written NaN all the same)."""
    return "became NaN or infinite" + (
        f" or could take no step above {MIN_STEP / DT:.0e} of a frame interval"
        if system.physics.adaptive else "")


def _nonfinite_check(system, states, inside, x0, params):
    """'' unless a round's draws went NaN or infinite; else a sentence for the error above.
    A state that is not finite fails `|position| <= canvas` and was counted, and reported,
    only as leaving the canvas; an H that is not finite fails the energy check unexplained."""
    notes = []
    bad, first = _went_nonfinite(system, states, inside, params)
    if bad.any():
        notes.append(f"{int(bad.sum())} of the {int((~inside).sum())} that left the canvas in "
                     f"the last round {went_singular(system)} instead (first at frame "
                     f"{int(first[bad].min())})")
    with np.errstate(all="ignore"):
        h0 = system.hamiltonian(x0, params)
    if not np.isfinite(h0).all():
        notes.append(f"H is not finite at {int((~np.isfinite(h0)).sum())} of the last "
                     f"{len(x0)} drawn initial states")
    if not notes:
        return ""
    return (f"; {'; '.join(notes)}: PHYSICS[{system.base!r}] reaches a singular point (a "
            f"division by zero, a log or square root of a negative number) at the states it "
            f"draws or moves through")


def _gradient_check(system, x, params, tol=1e-4):
    """'' when the system's dH/dq and dH/dp agree with central differences of its H at state
    x [1, 2*dof]; else a sentence for the error above. Every draw drifting in energy is what
    a gradient that is not H's gives (a new system's slip), and nothing else says so."""
    params = {k: v[:1] for k, v in params.items()}
    dq, dp = system.physics.gradient(x, params)   # as the integrators call it: [1] parameters
    want = np.concatenate([dq, dp], -1)[0]
    got = np.empty_like(want)
    for i in range(x.shape[-1]):
        h = 1e-6 * max(1.0, abs(x[0, i]))
        step = np.zeros_like(x)
        step[0, i] = h
        got[i] = (system.hamiltonian(x + step, params) - system.hamiltonian(x - step, params))[0]
        got[i] /= 2 * h
    err = np.abs(got - want).max() / max(np.abs(got).max(), np.abs(want).max(), 1e-12)
    if not err > tol:    # NaN too: a state where H is not finite says nothing here
        return ""
    return (f"; its dH/dq, dH/dp differ from H's finite differences at a drawn state "
            f"(relative difference {err:.2g}): PHYSICS[{system.base!r}].gradient is not the "
            f"gradient of its hamiltonian")


def simulate_split(system, seed, split, indices, frames):
    """Accepted trajectories for `indices` of a split.

    Returns dict: states float64 [n, frames, 2*dof], params name -> [n] or [n, n_bodies]
    (system.param_shape), color_index int32
    [n, n_bodies], offset float64 [n, 2] (world shift of every particle), rejected (count of
    re-draws because a particle left the canvas), nonfinite (how many of those became NaN or
    infinite instead), inaccurate (re-draws for energy drift).
    """
    return next(simulate_chunks(system, seed, split, [indices], frames))
