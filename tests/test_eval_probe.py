"""Physics probe: it reads states from real frames, and its metrics tell real motion from
the same frames shuffled in time."""
import os

import numpy as np
import pytest
import torch

from hgan.evaluate import probe


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    from hgan.data import generate_dataset, open_h5
    out = generate_dataset("pendulum", tmp_path_factory.mktemp("probe_pendulum"), train=120, test=0,
                           frames=20, seed=3, resolution=32, progress=False)
    ds = open_h5(out["train"])
    return out["train"], ds


@pytest.fixture(scope="module")
def trained(pendulum):
    path, ds = pendulum
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread avoids oversubscription on shared CI
    try:
        pr = probe.load_or_train_probe(path, ds.frames, ds.states, angular=(0,), steps=300,
                                       batch_size=64, width=16, progress=False)
    finally:
        torch.set_num_threads(threads)
    _, test_idx = probe.split_indices(len(ds))
    frames, states = ds.frames[()][test_idx], ds.states[()][test_idx].astype(np.float64)
    params = {k: v[test_idx] for k, v in ds.params.items()}
    return pr, frames, states, params, ds.system


def test_probe_reads_state_on_held_out_data(trained):
    pr, frames, states, _, _ = trained
    rmse = probe.probe_rmse(pr, frames, states)
    spread = states.reshape(-1, states.shape[-1]).std(0)
    assert rmse.shape == (2,)
    assert np.all(rmse < 0.2 * spread), (rmse, spread)


def test_energy_drift_discriminates_real_from_shuffled(trained):
    pr, frames, states, params, system = trained
    rmse = probe.probe_rmse(pr, frames, states)
    true = np.median(probe.energy_drift(system, states, params))
    floor = np.median(probe.noise_floor(system, states[:, :-1], params, rmse))
    real = np.median(probe.energy_drift(system, pr.states(frames), params))
    rng = np.random.default_rng(0)
    shuffled_frames = np.stack([v[rng.permutation(len(v))] for v in frames])
    shuffled = np.median(probe.energy_drift(system, pr.states(shuffled_frames), params))
    assert true < 1e-5  # the data conserve H: any drift below comes from the probe
    assert real < 1.5 * floor, (real, floor)
    assert shuffled > 5 * max(real, floor), (shuffled, real, floor)


def test_frechet_state_distance_discriminates(trained):
    pr, frames, _, _, _ = trained
    real = pr.states(frames)
    rng = np.random.default_rng(1)
    shuffled = pr.states(np.stack([v[rng.permutation(len(v))] for v in frames]))
    half = len(real) // 2
    same = probe.frechet_state_distance(real[:half], real[half:2 * half])
    assert probe.frechet_state_distance(real, shuffled) > 10 * same
    with pytest.raises(ValueError, match="shapes differ"):
        probe.frechet_state_distance(real, real[:, :-1])


def test_state_distance_takes_angles_on_the_circle():
    # Pendulums swinging through the top: one set's angles just below +pi, the other's just
    # above -pi, i.e. the same neighbourhood. Wrapped raw angles put them 2 pi apart.
    rng = np.random.default_rng(0)
    eps = np.abs(rng.normal(0.0, 0.05, (200, 3, 1)))
    p = rng.normal(0.0, 1.0, (200, 3, 1))
    below = np.concatenate([np.pi - eps, p], -1)
    above = np.concatenate([-np.pi + eps[::-1], p[::-1]], -1)
    raw = probe.frechet_state_distance(below, above)
    circle = probe.frechet_state_distance(below, above, angular=(0,))
    assert raw > 30 and circle < 0.1 * raw, (raw, circle)
    # (cos q, sin q) of the same states: an angle off by 2 pi is the same state
    same = probe.frechet_state_distance(below, below + np.array([2 * np.pi, 0.0]), angular=(0,))
    assert abs(same) < 1e-6
    emb = probe.embed_angles(below, (0,))
    np.testing.assert_allclose(emb[..., 0], below[..., 1])             # momenta first
    np.testing.assert_allclose(emb[..., 1:], np.stack([np.cos(below[..., 0]),
                                                        np.sin(below[..., 0])], -1))


def test_energy_drift_matches_closed_form():
    # Pendulum H = m g l (1 - cos q) + p^2 / (2 m l^2); two states per video.
    from hgan.data import get_system
    system = get_system("pendulum")
    m, g, l = 0.5, 3.0, 1.0
    states = np.array([[[0.0, 1.0], [0.0, 2.0]]])  # H = 1, 4 -> std 1.5, mean 2.5
    drift = probe.energy_drift(system, states, {"m": [m], "g": [g], "l": [l]})
    np.testing.assert_allclose(drift, [1.5 / 2.5], rtol=1e-12)


def test_probe_is_cached_beside_the_data(pendulum, trained, monkeypatch):
    path, ds = pendulum

    def no_training(*a, **k):
        raise AssertionError("a cached probe must not be retrained")

    monkeypatch.setattr(probe, "train_probe", no_training)
    again = probe.load_or_train_probe(path, ds.frames, ds.states, angular=(0,), steps=300,
                                      batch_size=64, width=16, progress=False)
    x = torch.from_numpy(trained[1][:2, :2])
    torch.testing.assert_close(again(x), trained[0](x))
    with pytest.raises(AssertionError, match="retrained"):  # other settings: a different key
        probe.load_or_train_probe(path, ds.frames, ds.states, angular=(0,), steps=301,
                                  batch_size=64, width=16, progress=False)


def test_angles_are_read_modulo_two_pi():
    from hgan.data import get_system
    assert probe.angular_dims(get_system("pendulum")) == (0,)
    assert probe.angular_dims(get_system("two_body")) == ()
    assert probe.angular_dims(get_system("double_pendulum")) == (0, 1)  # both arms
    w = probe.wrap_angles(np.array([[3 * np.pi / 2, 5.0], [-7.0, 1.0]]), (0,))
    np.testing.assert_allclose(w, [[-np.pi / 2, 5.0], [-7.0 + 2 * np.pi, 1.0]], rtol=1e-12)
    # the double pendulum: both arms' angles wrapped, the momenta left alone
    w = probe.wrap_angles(np.array([[7.0, -4.0, 7.0, -4.0]]), (0, 1))
    np.testing.assert_allclose(w, [[7.0 - 2 * np.pi, -4.0 + 2 * np.pi, 7.0, -4.0]], rtol=1e-12)


def test_probe_input_contract(trained):
    pr = trained[0]
    with pytest.raises(ValueError, match="uint8"):
        pr(torch.zeros(1, 2, 32, 32, 3))
    with pytest.raises(ValueError, match="trained at 32x32"):
        pr(torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8))


@pytest.mark.parametrize("steps", list(range(1, 22)) + [30, 600])
def test_lr_schedule_holds_for_every_step_count(steps):
    # 10 steps at a 10 % warm-up once divided by zero inside OneCycleLR.
    lr = 2e-3
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = probe.lr_schedule(opt, lr, steps)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(0 <= r <= lr * (1 + 1e-9) for r in rates), rates
    assert rates[-1] < lr / 1000  # the cycle ends annealed, whatever its length
    if steps >= 10:  # long enough for a warm-up: it starts at OneCycleLR's lr / 25 and peaks
        assert rates[0] == pytest.approx(lr / 25)
        assert max(rates) > 0.9 * lr


@pytest.mark.parametrize("steps", [1, 2, 9, 10, 11])
def test_probe_trains_for_few_steps(steps):
    rng = np.random.default_rng(steps)
    frames = rng.integers(0, 256, (3, 4, 8, 8, 3), np.uint8)
    states = rng.standard_normal((3, 4, 2)).astype(np.float32)
    pr = probe.train_probe(frames, states, angular=(0,), steps=steps, batch_size=4, width=4,
                           progress=False)
    out = pr.states(frames)
    assert out.shape == (3, 3, 2) and np.isfinite(out).all()


def test_the_probe_reads_only_the_frames_it_trains_on(pendulum, tmp_path):
    # A paper-size train split is tens of GB: only the capped leading rows may be read, and
    # never the held-out ones.
    path, ds = pendulum
    reads = []

    class Recording:
        def __init__(self, a):
            self.a, self.shape = a, a.shape

        def __len__(self):
            return len(self.a)

        def __getitem__(self, key):
            reads.append(key)
            return self.a[key]

    train_rows = len(probe.split_indices(len(ds))[0])
    max_frames = 10 * ds.frames.shape[1]   # 10 trajectories, fewer than the 96 of the split
    pr = probe.load_or_train_probe(path, Recording(ds.frames), Recording(ds.states), cache=False,
                                   angular=(0,), steps=2, batch_size=4, width=4,
                                   max_frames=max_frames, progress=False)
    assert isinstance(pr, probe.PhysicsProbe) and train_rows == 96
    assert reads == [slice(None, 10), slice(None, 10)]
    reads.clear()
    probe.train_probe(Recording(ds.frames), Recording(ds.states), rows=3, steps=2, batch_size=4,
                      width=4, progress=False)
    assert reads == [slice(None, 3), slice(None, 3)]


class _TrueStateProbe:
    """A stand-in probe whose reading of the pair (t, t+1) is the true state at t, plus
    `offset`: probe_rmse must find exactly |offset| (angles modulo 2 pi)."""
    angular = [0]

    def __init__(self, states, offset):
        self.true, self.offset = np.asarray(states, np.float64), np.asarray(offset)

    def states(self, frames):
        assert len(frames) == len(self.true)
        return self.true[:, :-1] + self.offset


def test_probe_rmse_compares_each_pair_with_the_state_at_its_first_frame():
    rng = np.random.default_rng(0)
    states = rng.uniform(-2, 2, (4, 6, 2))     # every frame a different state
    frames = np.zeros((4, 6, 8, 8, 3), np.uint8)
    np.testing.assert_array_equal(probe.probe_rmse(_TrueStateProbe(states, 0.0), frames, states),
                                  [0.0, 0.0])
    rmse = probe.probe_rmse(_TrueStateProbe(states, [2 * np.pi + 0.3, -0.2]), frames, states)
    np.testing.assert_allclose(rmse, [0.3, 0.2], rtol=1e-9)


def _count_trainings(monkeypatch):
    """probe.train_probe replaced by a stand-in that records each call's settings (the list
    returned) and gives a small untrained probe."""
    trained = []

    def fake_training(frames, states, **kw):
        trained.append(kw)
        return probe.PhysicsProbe(2, resolution=8, width=4)

    monkeypatch.setattr(probe, "train_probe", fake_training)
    return trained


def test_a_regenerated_data_file_of_the_same_size_retrains_the_probe(tmp_path, monkeypatch):
    trained = _count_trainings(monkeypatch)
    data = tmp_path / "train.h5"
    data.write_bytes(b"a" * 64)
    frames, states = np.zeros((5, 3, 8, 8, 3), np.uint8), np.zeros((5, 3, 2), np.float32)
    kw = dict(angular=(), steps=7, batch_size=4, width=4, progress=False)
    for _ in range(2):
        probe.load_or_train_probe(str(data), frames, states, **kw)
    assert len(trained) == 1 and probe.probe_is_cached(str(data), **kw)
    assert trained[0]["rows"] == 4  # the held-out fifth (1 of 5) is never trained on
    mtime = data.stat().st_mtime_ns
    data.write_bytes(b"b" * 64)                         # new data, the same size
    os.utime(data, ns=(mtime + 10 ** 9, mtime + 10 ** 9))
    assert not probe.probe_is_cached(str(data), **kw)
    probe.load_or_train_probe(str(data), frames, states, **kw)
    assert len(trained) == 2


def test_noise_floor_is_the_drift_of_true_states_plus_probe_noise():
    # Pendulum H = m g l (1 - cos q) + p^2 / (2 m l^2), drift std_t H / |mean_t H| (the third
    # trajectory's |mean H| is below m g l: no floor where H does not cross zero).
    from hgan.data import get_system
    rng = np.random.default_rng(1)
    states = np.stack([rng.uniform(-1, 1, (3, 6)), rng.uniform(1, 3, (3, 6))], -1)
    m, g, l = np.array([0.5, 1.0, 2.0]), np.array([3.0, 9.8, 1.0]), np.array([1.0, 0.5, 2.0])
    rmse = np.array([0.05, 0.2])
    got = probe.noise_floor(get_system("pendulum"), states, {"m": m, "g": g, "l": l}, rmse, seed=4)
    noisy = states + np.random.default_rng(4).standard_normal(states.shape) * rmse
    q, p = noisy[..., 0], noisy[..., 1]
    mgl = (m * g * l)[:, None]
    h = mgl * (1 - np.cos(q)) + p ** 2 / (2 * (m * l ** 2)[:, None])
    want = h.std(1) / np.abs(h.mean(1))
    assert np.abs(h.mean(1))[2] < mgl[2, 0]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_probe_targets_are_normalised_training_states():
    # Linear coordinates far from mean 0, std 1: the encoded targets of the training states
    # have per-dimension mean 0 and std 1; the angle is encoded as (cos, sin).
    rng = np.random.default_rng(2)
    n, t = 20, 4
    states = np.stack([rng.uniform(-3, 3, (n, t)), 5 + 3 * rng.standard_normal((n, t)),
                       -3 + 0.5 * rng.standard_normal((n, t))], -1).astype(np.float32)
    frames = rng.integers(0, 256, (n, t, 8, 8, 3), np.uint8)
    pr = probe.train_probe(frames, states, angular=(0,), steps=1, batch_size=4, width=4,
                           progress=False)
    flat = states.reshape(-1, 3)
    enc = pr.encode(torch.from_numpy(flat)).double().numpy()
    np.testing.assert_allclose(enc[:, :2].mean(0), [0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(enc[:, :2].std(0), [1.0, 1.0], rtol=0.01)
    np.testing.assert_allclose(enc[:, 2:], np.stack([np.cos(flat[:, 0]), np.sin(flat[:, 0])], -1),
                               atol=1e-6)


def test_state_distance_sees_a_shift_of_the_last_coordinate():
    # The same trajectories shifted by d in one coordinate (the last state dimension at the
    # last step): equal covariances, so the Frechet distance is exactly d^2.
    rng = np.random.default_rng(3)
    real = rng.standard_normal((60, 3, 2))
    gen = real.copy()
    gen[:, -1, -1] += 0.7
    assert probe.frechet_state_distance(real, gen) == pytest.approx(0.49, abs=1e-6)


@pytest.mark.parametrize("n, held_out", [(2, 1), (5, 1), (9, 2), (10, 2), (120, 24)])
def test_the_held_out_split_is_the_last_fifth(n, held_out):
    # The whole number of trajectories nearest 20% (at least one), taken from the end.
    train, test = probe.split_indices(n)
    np.testing.assert_array_equal(train, np.arange(n - held_out))
    np.testing.assert_array_equal(test, np.arange(n - held_out, n))


def test_a_probe_trains_on_clips_of_two_frames():
    # One frame pair per clip: the last pair of a clip is a training pair like any other.
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 2, 8, 8, 3), np.uint8)
    states = rng.standard_normal((3, 2, 2)).astype(np.float32)
    pr = probe.train_probe(frames, states, steps=2, batch_size=4, width=4, progress=False)
    assert pr.states(frames).shape == (3, 1, 2)


def test_summaries_give_median_mean_and_std():
    s = probe.summarize([1.0, 2.0, 10.0])
    assert s["median"] == 2.0 and s["mean"] == pytest.approx(13 / 3)
    assert s["std"] == pytest.approx(np.sqrt(146) / 3)


@pytest.fixture(scope="module")
def two_body_colors(tmp_path_factory):
    from hgan.data import generate_dataset, open_h5
    out = generate_dataset("two_body_colors", tmp_path_factory.mktemp("probe_2b"), train=12,
                           test=0, frames=6, seed=5, progress=False)
    return open_h5(out["train"])


def test_bodies_listed_by_colour_render_the_same_frames_and_keep_the_energy(two_body_colors):
    # Oracles: the renderer (bodies listed by colour, drawn with the sorted colours, must give
    # the file's frames) and the Hamiltonian (symmetric under permuting bodies with their
    # masses, which differ per body in two_body_colors).
    from hgan.data.generate import render_states
    ds = two_body_colors
    system, states = ds.system, ds.states[()].astype(np.float64)
    ci = ds.color_index
    assert (ci[:, 0] > ci[:, 1]).any() and (ci[:, 0] < ci[:, 1]).any(), "both orders must occur"
    ordered = probe.colour_ordered(system, states, ci)
    params = probe.params_colour_ordered(system, ds.params, ci)
    assert not np.array_equal(ordered, states) and not np.array_equal(params["m"], ds.params["m"])
    frames = render_states(system, ordered, params, np.sort(ci, axis=1), ds.offset,
                           ds.attrs["resolution"])
    np.testing.assert_array_equal(frames, ds.frames[()])
    np.testing.assert_allclose(system.hamiltonian(ordered, params),
                               system.hamiltonian(states, ds.params), rtol=1e-12)
    # a [N, S] slice orders alike; the lazy view reads rows as the whole array orders them
    np.testing.assert_array_equal(probe.colour_ordered(system, states[:, 2], ci), ordered[:, 2])
    rows = probe.ColourOrderedRows(system, ds.states, ci)
    np.testing.assert_array_equal(rows[3:7], probe.colour_ordered(
        system, ds.states[3:7], ci[3:7]))
    assert rows.shape == ds.states.shape and len(rows) == len(ds)


def test_three_bodies_listed_by_colour_render_the_same_frames(tmp_path):
    # Three bodies: a permutation and its inverse differ (two bodies' swap is its own inverse,
    # so the two_body_colors check above cannot tell them apart).
    from hgan.data import generate_dataset, open_h5
    from hgan.data.generate import render_states
    path = generate_dataset("three_body", tmp_path, train=12, test=0, frames=4, seed=1,
                            progress=False)["train"]
    with open_h5(path) as ds:
        ci, states = ds.color_index, ds.states[()].astype(np.float64)
        order = np.argsort(ci, axis=1)
        assert any(not np.array_equal(np.argsort(o), o) for o in order), "needs a 3-cycle"
        ordered = probe.colour_ordered(ds.system, states, ci)
        params = probe.params_colour_ordered(ds.system, ds.params, ci)
        frames = render_states(ds.system, ordered, params, np.sort(ci, axis=1), ds.offset,
                               ds.attrs["resolution"])
        # float32 states in the file against the float64 ones rendered: a level or so apart
        assert np.abs(frames.astype(int) - ds.frames[()]).max() <= 1


def test_systems_whose_bodies_differ_otherwise_keep_their_order():
    from hgan.data import get_system
    states = np.random.default_rng(0).standard_normal((3, 5, 4))
    ci = np.array([[1, 0], [0, 1], [1, 0]])
    dp = get_system("double_pendulum")
    np.testing.assert_array_equal(probe.colour_ordered(dp, states, ci), states)
    params = {"m": np.ones((3, 2)), "l": np.arange(6.0).reshape(3, 2), "g": np.ones(3)}
    assert probe.params_colour_ordered(dp, params, ci) is params
    with pytest.raises(ValueError, match=r"color_index has shape \(3, 1\), expected \(3, 2\)"):
        probe.colour_ordered(get_system("two_body"), states, ci[:, :1])


def test_the_probe_reads_three_bodies_whose_colours_are_drawn_per_trajectory(tmp_path):
    # three_body gives each trajectory its own colour permutation: with targets in body-index
    # order the probe learnt only their mean (relative RMSE 1.02-1.21 in every dimension).
    from hgan.data import generate_dataset, open_h5
    path = generate_dataset("three_body", tmp_path, train=120, test=0, frames=20, seed=3,
                            progress=False)["train"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with open_h5(path) as ds:
            train_idx, test_idx = probe.split_indices(len(ds))
            targets = probe.ColourOrderedRows(ds.system, ds.states, ds.color_index)
            pr = probe.train_probe(ds.frames, targets, steps=300, rows=len(train_idx),
                                   progress=False)
            states = targets[test_idx]
            rmse = probe.probe_rmse(pr, ds.frames[()][test_idx], states)
    finally:
        torch.set_num_threads(threads)
    rel = rmse / states.reshape(-1, rmse.size).std(0)
    assert rel[:6].max() < 0.4 and rel.max() < 0.8, rel   # positions, then momenta


def test_the_probe_learns_the_state_at_the_first_frame_of_each_pair(monkeypatch):
    # Two consecutive frames -> the state at the first: every training pair and its target
    # decode back to where they came from, each frame being one grey level that codes
    # (trajectory, frame) and each state that same (trajectory, frame), so the check needs
    # none of train_probe's own indexing. A target taken at the second frame would cost only
    # one frame's motion in the held-out RMSE, which the trained-probe tests cannot resolve.
    n, t = 6, 7
    code = np.arange(n)[:, None] * 10 + np.arange(t)[None, :]             # < 256
    frames = np.broadcast_to(code[:, :, None, None, None], (n, t, 8, 8, 3)).astype(np.uint8)
    states = np.stack([np.arange(n)[:, None].repeat(t, 1), np.arange(t)[None].repeat(n, 0)],
                      -1).astype(np.float32)                               # (trajectory, frame)
    seen = []
    raw, encode = probe.PhysicsProbe.raw, probe.PhysicsProbe.encode
    monkeypatch.setattr(probe.PhysicsProbe, "raw",
                        lambda self, pairs: seen.append(["pairs", pairs]) or raw(self, pairs))
    monkeypatch.setattr(probe.PhysicsProbe, "encode",
                        lambda self, s: seen[-1].append(s.clone()) or encode(self, s))
    probe.train_probe(frames, states, steps=3, batch_size=16, width=4, progress=False)
    assert len(seen) == 3
    for _, pairs, targets in seen:
        first, second = (pairs[:, i, 0, 0, 0].long().numpy() for i in (0, 1))
        np.testing.assert_array_equal(second, first + 1)                    # consecutive frames
        want = np.stack([first // 10, first % 10], -1)
        np.testing.assert_array_equal(targets.numpy(), want)               # the first one's state
    # every pair of every clip is drawn, the last one (frames t-2, t-1) too
    firsts = np.concatenate([pairs[:, 0, 0, 0, 0].long().numpy() for _, pairs, _ in seen])
    assert set((firsts % 10).tolist()) == set(range(t - 1))
    assert set((firsts // 10).tolist()) == set(range(n))


def test_the_probe_reads_pairs_as_it_was_trained_on():
    # train_probe fits raw(pairs) to encode(states); what the probe then reads, forward(pairs),
    # must be decode of that same output, and decode must undo encode (angles to (-pi, pi]).
    torch.manual_seed(0)
    pr = probe.PhysicsProbe(3, resolution=8, width=4, angular=(1,))
    pr.state_mean.copy_(torch.tensor([0.5, 0.0, -2.0]))
    pr.state_std.copy_(torch.tensor([2.0, 1.0, 0.25]))
    pairs = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 2, 8, 8, 3),
                                                               dtype=np.uint8))
    torch.testing.assert_close(pr(pairs), pr.decode(pr.raw(pairs)), rtol=0, atol=0)
    assert not torch.equal(pr(pairs), pr(pairs.flip(1)))   # the frame order matters
    states = torch.tensor([[1.0, 3.0, -2.5], [-4.0, -1.0, 0.0]])
    torch.testing.assert_close(pr.decode(pr.encode(states)), states, rtol=0, atol=1e-6)


def test_a_probe_trained_with_one_seed_is_the_same_whatever_ran_before():
    # Its weights start from the seed, not from torch's global stream: a probe retrained (its
    # cache removed, another machine) reads the states the cached one read.
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (3, 4, 8, 8, 3), np.uint8)
    states = rng.standard_normal((3, 4, 2)).astype(np.float32)
    kw = dict(steps=2, batch_size=4, width=4, progress=False)
    a = probe.train_probe(frames, states, seed=7, **kw).state_dict()
    torch.rand(100)                     # the global stream moves on (another model built)
    b = probe.train_probe(frames, states, seed=7, **kw).state_dict()
    c = probe.train_probe(frames, states, seed=8, **kw).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_probe_rmse_is_the_root_of_the_mean_squared_error():
    # Two videos of three pairs, no angles: errors 3, 0, -4 then 0, 0, 0 in the first
    # coordinate, 1 or -1 in the second. RMSE sqrt(25 / 6) and 1; the mean |error| (7 / 6)
    # would understate the probe's error, and every resolution bound drawn from it.
    class _Reads:
        angular = []

        def states(self, frames):
            return np.array([[[3.0, 1.0], [0.0, -1.0], [-4.0, 1.0]],
                             [[0.0, -1.0], [0.0, 1.0], [0.0, 1.0]]])
    states = np.zeros((2, 4, 2))
    rmse = probe.probe_rmse(_Reads(), np.zeros((2, 4, 8, 8, 3), np.uint8), states)
    np.testing.assert_allclose(rmse, [np.sqrt(25 / 6), 1.0], rtol=1e-12)


def test_every_training_setting_is_part_of_the_probe_cache_key(tmp_path, monkeypatch):
    # A probe cached under other settings is trained again, whichever setting differs;
    # --progress alone changes nothing and loads the cache.
    trained = _count_trainings(monkeypatch)
    data = str(tmp_path / "train.h5")
    with open(data, "wb") as f:
        f.write(b"a" * 64)
    frames, states = np.zeros((5, 3, 8, 8, 3), np.uint8), np.zeros((5, 3, 2), np.float32)
    base = dict(angular=(), steps=7, batch_size=4, lr=2e-3, width=4, seed=0, max_frames=1000)
    probe.load_or_train_probe(data, frames, states, progress=False, **base)
    probe.load_or_train_probe(data, frames, states, progress=True, **base)
    assert len(trained) == 1
    for name, value in [("angular", (0,)), ("steps", 8), ("batch_size", 5), ("lr", 1e-3),
                        ("width", 8), ("seed", 1), ("max_frames", 999)]:
        probe.load_or_train_probe(data, frames, states, **base)      # base in the cache again
        before = len(trained)
        probe.load_or_train_probe(data, frames, states, **{**base, name: value})
        assert len(trained) == before + 1, f"a probe trained with other {name} was reused"
        assert trained[-1][name] == value
