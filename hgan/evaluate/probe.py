"""Physics probe: read the true state (q, p) out of videos, and the metrics built on it.

The project renders its own data, so every real frame has a known state. A small CNN
trained on real frames (two consecutive frames -> the state at the first) is then applied
to any video. Its metrics:

- ``probe_rmse``: its error on held-out real data (per state dimension), reported beside
  everything else because it bounds what the other numbers can resolve;
- ``energy_drift``: std/|mean| of the true Hamiltonian (true parameters) of the probed
  states along each video (|mean| floored at the energy scale where H crosses zero);
  ``noise_floor`` is the drift that the probe's own error alone
  produces on exactly conserved real trajectories (true states plus Gaussian noise of the
  measured RMSE), so real videos should sit near it and broken dynamics clearly above;
- ``frechet_state_distance``: Frechet distance between probed state trajectories
  (flattened [T-1, 2k]) of real and generated videos.
"""
import hashlib
import json
import os
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from hgan.data.systems import get_system
from hgan.evaluate.atomic import write_atomically
from hgan.evaluate.fvd import feature_stats, frechet_distance, to_uint8

PROBE_VERSION = 3  # 3: n-body targets listed by colour (colour_ordered); older caches retrain


def angular_dims(system):
    """Indices of angle coordinates: the frames show q mod 2*pi, so the probe reads the angle
    as (cos q, sin q) and returns it wrapped to (-pi, pi]."""
    return tuple(range(system.dof)) if system.physics.angular else ()


def wrap_angles(states, angular):
    states = np.array(states, dtype=np.float64, copy=True)
    if angular:
        a = list(angular)
        states[..., a] = np.angle(np.exp(1j * states[..., a]))
    return states


def is_nbody(system_name):
    """Whether a system, by name (as results.json stores it), has bodies alike but for their
    colour (Physics.interchangeable); False for a name this package does not know."""
    return _physics_flag(system_name, "interchangeable")


def is_angular(system_name):
    """Whether a system, by name, has angles for coordinates (Physics.angular)."""
    return _physics_flag(system_name, "angular")


def _physics_flag(system_name, flag):
    try:
        return getattr(get_system(system_name).physics, flag)
    except ValueError:
        return False


def colour_ordered(system, states, color_index):
    """n-body states [N, ..., S] (q then p, x, y per body) with each trajectory's bodies listed
    by colour; other systems' unchanged.

    Why: a body's colour is drawn per trajectory (a permutation of the palette) and nothing
    else in a frame marks its index, so targets in index order cannot be read off the video:
    a probe trained on them learns their mean (three_body: RMSE 1.02-1.06 of each dimension's
    std, against 0.05-0.09 listed by colour; 256 trajectories of 64 frames, 600 steps). The
    n-body Hamiltonians are symmetric under permuting bodies together with their masses
    (params_colour_ordered), so every energy is unchanged. A double pendulum's arms differ by
    where they hang, and its H is not symmetric: it keeps its order."""
    states = np.asarray(states)
    order = _colour_order(system, color_index, len(states))
    if order is None:
        return states
    lead = states.shape[:-1]
    bodies = states.reshape(lead + (2, system.n_bodies, 2))  # (q, p), body, (x, y)
    idx = order.reshape((len(states),) + (1,) * (len(lead) - 1) + (1, system.n_bodies, 1))
    return np.take_along_axis(bodies, idx, axis=-2).reshape(states.shape)


def params_colour_ordered(system, params, color_index):
    """Per-body parameters (name -> [N, n_bodies]) in colour_ordered's body order."""
    n = len(np.asarray(color_index))
    order = _colour_order(system, color_index, n)
    if order is None:
        return params
    return {k: (np.take_along_axis(np.asarray(v), order, axis=1) if k in system.body_params
                else v) for k, v in params.items()}


def _colour_order(system, color_index, n):
    if not system.physics.interchangeable:
        return None
    color_index = np.asarray(color_index)
    if color_index.shape != (n, system.n_bodies):
        raise ValueError(f"color_index has shape {color_index.shape}, expected "
                         f"{(n, system.n_bodies)} for {n} trajectories")
    return np.argsort(color_index, axis=1, kind="stable")


class ColourOrderedRows:
    """A trajectory-indexed view (an HDF5 dataset, read lazily) of states listed by colour:
    what train_probe reads its targets from."""

    def __init__(self, system, states, color_index):
        self.system, self.states = system, states
        self.color_index = np.asarray(color_index)
        self.shape = states.shape

    def __len__(self):
        return len(self.states)

    def __getitem__(self, rows):
        return colour_ordered(self.system, np.asarray(self.states[rows]),
                              self.color_index[rows])


class PhysicsProbe(nn.Module):
    """[B, 2, H, W, 3] uint8 frame pairs -> [B, S] states (normalised inside)."""

    def __init__(self, state_dim, resolution=32, width=16, angular=()):
        super().__init__()
        if resolution % 8:
            raise ValueError(f"probe resolution must be a multiple of 8, got {resolution}")
        angular = tuple(int(i) for i in angular)
        self.config = {"state_dim": state_dim, "resolution": resolution, "width": width,
                       "angular": angular}
        self.angular = list(angular)
        self.linear = [i for i in range(state_dim) if i not in angular]
        w = width
        # Input channels: frame t, frame t+1 and their difference (the difference carries p).
        # Stride 2 from the first layer: ~1.5 M multiply-adds per pair at width 16, so the
        # probe trains in seconds on a CPU (a full-resolution first layer cost 12x more).
        self.features = nn.Sequential(
            nn.Conv2d(9, w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
        )
        # Flatten, not pool: the state is a position, and pooling would discard it.
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * (resolution // 8) ** 2, 128),
                                  nn.SiLU(), nn.Linear(128, state_dim + len(angular)))
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    def forward(self, pairs):
        if pairs.dtype != torch.uint8 or pairs.dim() != 5 or pairs.shape[1] != 2 or pairs.shape[-1] != 3:
            raise ValueError(f"probe input must be uint8 frame pairs [B, 2, H, W, 3], "
                             f"got {pairs.dtype} {tuple(pairs.shape)}")
        res = self.config["resolution"]
        if pairs.shape[2:4] != (res, res):
            raise ValueError(f"probe was trained at {res}x{res}, got {tuple(pairs.shape[2:4])} frames")
        x = pairs.float().div(255).permute(0, 1, 4, 2, 3)  # [B, 2, 3, H, W]
        x = torch.cat([x[:, 0], x[:, 1], x[:, 1] - x[:, 0]], dim=1)
        return self.decode(self.head(self.features(x)))

    def encode(self, states):
        """Training targets [B, S + A]: normalised linear coordinates, then (cos, sin) pairs."""
        lin = (states[:, self.linear] - self.state_mean[self.linear]) / self.state_std[self.linear]
        ang = states[:, self.angular]
        return torch.cat([lin, torch.cos(ang), torch.sin(ang)], dim=1)

    def decode(self, raw):
        out = raw.new_empty(raw.shape[0], self.config["state_dim"])
        nl, na = len(self.linear), len(self.angular)
        out[:, self.linear] = raw[:, :nl] * self.state_std[self.linear] + self.state_mean[self.linear]
        out[:, self.angular] = torch.atan2(raw[:, nl + na:], raw[:, nl:nl + na])
        return out

    def raw(self, pairs):
        x = pairs.float().div(255).permute(0, 1, 4, 2, 3)
        return self.head(self.features(torch.cat([x[:, 0], x[:, 1], x[:, 1] - x[:, 0]], dim=1)))

    @torch.no_grad()
    def states(self, videos, batch_size=1024):
        """uint8 videos [N, T, H, W, 3] -> probed states [N, T-1, S] (pairs t, t+1).

        Videos go to the probe's device as uint8 once; pairs are formed there, per batch."""
        device = self.state_mean.device
        videos = torch.as_tensor(np.asarray(videos)).to(device)
        n, t = videos.shape[:2]
        if t < 2:
            raise ValueError(f"the probe needs at least 2 frames per video, got {t}")
        flat = videos.flatten(0, 1)  # [N T, H, W, 3]
        first = torch.arange(n * t, device=device).view(n, t)[:, :-1].flatten()  # pair starts
        out = torch.cat([self(torch.stack([flat[i], flat[i + 1]], dim=1))
                         for i in first.split(batch_size)])
        return out.view(n, t - 1, -1).double().cpu().numpy()


def generated_to_probe(videos):
    """Generated [N, T, 3, H, W] in [-1, 1] -> uint8 [N, T, H, W, 3], the FVD quantisation."""
    return to_uint8(videos).permute(0, 2, 3, 4, 1).cpu().numpy()


def split_indices(n, holdout=0.2):
    """Fixed split: the last `holdout` fraction of trajectories is never trained on."""
    n_test = max(1, int(round(n * holdout)))
    if n - n_test < 1:
        raise ValueError(f"need at least 2 trajectories to split train/held-out, got {n}")
    return np.arange(n - n_test), np.arange(n - n_test, n)


def lr_schedule(opt, lr, steps):
    """The probe's one-cycle learning rate: a warm-up over the first tenth of `steps`, then a
    cosine decay from `lr`."""
    # OneCycleLR warms up from step 0 to step pct_start * steps - 1 and divides by that span,
    # which is exactly zero for 10 steps at 10 % (ZeroDivisionError). 10 to 14 steps therefore
    # warm up over half a step: step 0 runs at lr / 25, as 11 to 19 steps at 10 % already do.
    # Fewer than 10 keep the negative span, i.e. no warm-up, which OneCycleLR handles.
    pct_start = max(0.1, 1.5 / steps) if steps >= 10 else 0.1
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start)


# torch.manual_seed and the initialisation it seeds are one step: a probe trained in a thread
# beside others starts from the weights it would alone.
_INIT_LOCK = threading.Lock()


def train_probe(frames, states, *, angular=(), steps=600, batch_size=64, lr=2e-3, width=16, seed=0,
                max_frames=100_000, progress=True, device="cpu", rows=None):
    """Fit a probe on uint8 frames [N, T, H, W, 3] and states [N, T, S] (the train split: the
    first `rows` trajectories, all if None; arrays or HDF5 datasets, read lazily).

    At most `max_frames` frames (about 300 MB at 32x32) are used: whole leading trajectories,
    so the read from HDF5 is one contiguous slice, and only that is read (a paper-size split
    is tens of GB). They move to `device` once, as uint8, and every batch is drawn there: a
    GPU then never waits on host copies (copying each batch from the CPU held the probe to a
    few steps per second)."""
    device = torch.device(device)
    rows = len(frames) if rows is None else min(rows, len(frames))
    n_use = max(1, min(rows, max_frames // frames.shape[1]))
    frames = torch.from_numpy(np.asarray(frames[:n_use])).to(device)
    states = torch.from_numpy(np.asarray(states[:n_use], dtype=np.float32)).to(device)
    n, t, res = frames.shape[0], frames.shape[1], frames.shape[2]
    with _INIT_LOCK:  # several probes may train at once in threads (hgan.experiments --probes)
        torch.manual_seed(seed)  # before the probe is built: its initial weights from `seed`
        probe = PhysicsProbe(states.shape[-1], resolution=res, width=width, angular=angular)
    probe = probe.to(device)
    flat = states.reshape(-1, states.shape[-1])
    probe.state_mean.copy_(flat.mean(0))
    probe.state_std.copy_(flat.std(0).clamp_min(1e-6))
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    sched = lr_schedule(opt, lr, steps)
    bar = tqdm(range(steps), desc="probe", disable=not progress, leave=False)
    for step in bar:
        i = torch.randint(0, n, (batch_size,), generator=gen, device=device)
        j = torch.randint(0, t - 1, (batch_size,), generator=gen, device=device)
        pairs = torch.stack([frames[i, j], frames[i, j + 1]], dim=1)
        loss = F.mse_loss(probe.raw(pairs), probe.encode(states[i, j]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:  # reading the loss waits for the device
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return probe.eval()


def probe_cache_path(data_path):
    return os.path.splitext(data_path)[0] + ".probe.pt"


def _data_key(data_path, **cfg):
    st = os.stat(data_path)
    blob = json.dumps({"size": st.st_size, "mtime": st.st_mtime_ns, "v": PROBE_VERSION, **cfg},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def probe_is_cached(data_path, **train_kw) -> bool:
    """Whether load_or_train_probe(data_path, ..., **train_kw) would load its cache (a file
    left by other settings or an older dataset is retrained over)."""
    path = probe_cache_path(data_path)
    if not os.path.exists(path):
        return False
    key = _data_key(data_path, **{k: v for k, v in train_kw.items() if k != "progress"})
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("key") == key
    except Exception:  # a damaged or half-replaced file: not a cache to count on
        return False


def load_or_train_probe(data_path, frames, states, *, cache=True, device="cpu", **train_kw):
    """The probe for one dataset on `device`, cached beside it (``<name>.probe.pt``) and keyed
    by a hash of the file's size and mtime and the training settings, so a regenerated file
    retrains. The cache is written atomically (several evaluations may share one dataset)."""
    key = _data_key(data_path, **{k: v for k, v in train_kw.items() if k != "progress"})
    path = probe_cache_path(data_path)
    if cache and os.path.exists(path):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") == key:
            probe = PhysicsProbe(**blob["config"])
            probe.load_state_dict(blob["state_dict"])
            return probe.to(device).eval()
    train_idx, _ = split_indices(len(frames))
    probe = train_probe(frames, states, rows=len(train_idx), device=device, **train_kw)
    if cache:
        blob = {"key": key, "config": probe.config,
                "state_dict": {k: v.cpu() for k, v in probe.state_dict().items()}}
        write_atomically(path, lambda f: torch.save(blob, f))
    return probe


def probe_rmse(probe, frames, states):
    """Per-dimension RMSE of probed vs true states on videos [N, T, H, W, 3], states [N, T, S]
    (angle errors taken modulo 2*pi)."""
    est = probe.states(frames)
    err = wrap_angles(est - np.asarray(states, dtype=np.float64)[:, :-1], probe.angular)
    return np.sqrt((err ** 2).reshape(-1, err.shape[-1]).mean(0))


def energy_drift(system, states, params):
    """std/|mean| of the true H along each video: states [N, T, S], params name -> [N], or
    [N, n_bodies] for per-body parameters (system.param_shape). Returns [N].

    |mean| is floored at the energy scale only where H crosses zero (the double pendulum:
    System.drift_denominator, as the data's own accuracy check)."""
    states = np.asarray(states, dtype=np.float64)
    n = len(states)
    params = {k: np.asarray(v, dtype=np.float64).reshape((n,) + system.param_shape(k))
              for k, v in params.items()}
    h = np.asarray(system.hamiltonian(states, params), dtype=np.float64)  # [N, T]
    return h.std(axis=1) / np.broadcast_to(system.drift_denominator(h.mean(axis=1), params), (n,))


def drift_relative_to(system) -> str:
    """How energy_drift's denominator reads, for results.json (older files lack it)."""
    return "max(|mean H|, energy scale)" if system.physics.h_crosses_zero else "|mean H|"


def floored_drift(results) -> bool:
    """True for a results.json written before energy_drift divided by |mean H| alone where H
    does not cross zero (no "relative_to"): it divided by max(|mean H|, energy scale) for
    every system, which shrank the n-body sets' drift up to ~6x; another metric."""
    d = (results.get("physics") or {}).get("energy_drift")
    return (bool(d) and "relative_to" not in d
            and not _physics_flag(results.get("system"), "h_crosses_zero"))


def noise_floor(system, states, params, rmse, seed=0):
    """Drift the probe's error alone gives: true states [N, T-1, S] + N(0, rmse^2) noise."""
    rng = np.random.default_rng(seed)
    noisy = np.asarray(states, dtype=np.float64) + rng.standard_normal(np.shape(states)) * rmse
    return energy_drift(system, noisy, params)


def embed_angles(states, angular):
    """States [..., S] with each angle coordinate replaced by (cos q, sin q): [..., S + A].
    Wrapped to (-pi, pi], a rotating pendulum's angle jumps by 2 pi where it passes the top,
    and a Gaussian fitted to the raw values puts the two sides of that jump far apart."""
    states = np.asarray(states, dtype=np.float64)
    if not angular:
        return states
    a = list(angular)
    rest = [i for i in range(states.shape[-1]) if i not in a]
    return np.concatenate([states[..., rest], np.cos(states[..., a]), np.sin(states[..., a])],
                          axis=-1)


def frechet_state_distance(real_states, gen_states, angular=()):
    """Frechet distance of flattened probed trajectories [N, T-1, S] (equal lengths), angle
    coordinates (indices `angular`) taken as (cos q, sin q)."""
    if np.shape(real_states)[1:] != np.shape(gen_states)[1:]:
        raise ValueError(f"trajectory shapes differ: {np.shape(real_states)} vs {np.shape(gen_states)}")
    r = embed_angles(real_states, angular).reshape(len(real_states), -1)
    g = embed_angles(gen_states, angular).reshape(len(gen_states), -1)
    return frechet_distance(*feature_stats(g), *feature_stats(r))


def constant_params(params, n):
    """Generated videos have no parameters of their own: use the dataset's (median) values,
    per body for per-body parameters ([N, n_bodies] in, [n, n_bodies] out)."""
    out = {}
    for k, v in params.items():
        med = np.median(np.asarray(v, dtype=np.float64), axis=0)
        out[k] = np.broadcast_to(med, (n,) + med.shape).copy()
    return out


def summarize(values):
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std())}
