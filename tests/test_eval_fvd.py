"""FVD: Frechet distance against closed forms, and the whole pipeline with a stand-in I3D."""
import os

import warnings

import numpy as np
import pytest
import torch

from hgan.evaluate import fvd


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


def test_identical_sets_give_zero():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((500, 12)) @ rng.standard_normal((12, 12))
    mu, sigma = fvd.feature_stats(feats)
    assert abs(fvd.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_equal_covariance_gives_squared_mean_distance():
    rng = np.random.default_rng(1)
    sigma = _random_cov(rng, 10)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10) * 3
    want = float(np.sum((mu1 - mu2) ** 2))
    assert fvd.frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(want, rel=1e-7, abs=1e-7)


def test_diagonal_covariances_closed_form():
    # Commuting covariances: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 2.0])
    mu1, mu2 = np.array([0.0, 1, 2, 3]), np.array([1.0, 1, 0, 3])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fvd.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(want, rel=1e-9)


def test_biased_covariance():
    feats = np.array([[0.0], [2.0]])
    mu, sigma = fvd.feature_stats(feats)
    assert mu[0] == 1.0 and sigma[0, 0] == 1.0  # /N gives 1, /(N-1) would give 2


def test_near_singular_covariances_stay_finite_and_match_oracle():
    # Fewer samples than dimensions (rank 3 of 20): sqrtm is ill-conditioned here.
    rng = np.random.default_rng(2)
    s1, s2 = _random_cov(rng, 20, rank=3), _random_cov(rng, 20, rank=3)
    mu = np.zeros(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the singular case is handled, not warned about
        got = fvd.frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(got)
    # float64 oracle: Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), all symmetric PSD.
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)
    want = np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(inner))
    assert got == pytest.approx(want, abs=1e-4 * (np.trace(s1) + np.trace(s2)))
    assert abs(fvd.frechet_distance(mu, s1, mu, s1)) < 1e-4 * np.trace(s1)


def test_exactly_singular_covariances_give_the_closed_form_without_a_warning():
    # Features that vary along one axis only: S = diag(v, 0), where scipy's sqrtm warns
    # "Matrix is singular". The distance is the closed form, and the case is not news.
    s1, s2 = np.diag([4.0, 0.0]), np.diag([1.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fvd.frechet_distance(np.array([1.0, 0.0]), s1, np.zeros(2), s2)
    assert got == pytest.approx(1.0 + 4.0 + 1.0 - 2 * 2.0, abs=1e-4)   # |dmu|^2 + (2 - 1)^2


def test_mismatched_statistics_rejected():
    with pytest.raises(ValueError, match="mismatched"):
        fvd.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="mismatched"):  # means of 3 features, covariances of 4
        fvd.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(4))


def test_statistics_need_two_videos():
    # One video has no spread: its "covariance" of zeros would score as a point mass.
    with pytest.raises(ValueError, match=r"need features \[N >= 2, F\], got shape \(1, 4\)"):
        fvd.feature_stats(np.ones((1, 4)))


@pytest.mark.parametrize("sigma", [np.diag([1.0, -1.0]),            # a negative variance
                                   np.array([[1.0, 2.0], [2.0, 1.0]]),   # eigenvalues 3, -1
                                   np.diag([1.0, -0.05]),                # slightly negative
                                   np.diag([1.0, -1e-4])])   # sqrt's imaginary part 0.01
def test_statistics_that_are_not_covariances_are_refused(sigma):
    # sqrtm(diag(1, -1)) = diag(1, i): keeping its real part would report a distance of
    # exactly 0 to the identity, a silently wrong score.
    with pytest.raises(ValueError, match="not valid covariances"):
        fvd.frechet_distance(np.zeros(2), sigma, np.zeros(2), np.eye(2))


class _StandInI3D(torch.nn.Module):
    """Same call signature as StyleGAN-V's i3d_torchscript.pt; features are a fixed projection."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(3 * 4 * 4 * 4, 16, generator=g), requires_grad=False)

    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        x = videos.float()
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = torch.nn.functional.interpolate(x, size=(4, 8, 8), mode="trilinear", align_corners=False)
        x = torch.nn.functional.avg_pool3d(x, kernel_size=(1, 2, 2))
        return x.flatten(1) @ self.proj


@pytest.fixture(scope="module")
def stand_in_i3d(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / fvd.I3D_FILENAME
    torch.jit.script(_StandInI3D()).save(str(path))
    return str(path)


def test_missing_detector_error_names_file_and_source(monkeypatch, tmp_path):
    monkeypatch.delenv(fvd.I3D_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        fvd.load_detector(None)
    msg = str(err.value)
    assert fvd.I3D_FILENAME in msg and "StyleGAN-V" in msg and fvd.I3D_URL in msg and fvd.I3D_ENV in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fvd.load_detector(str(tmp_path / "nope.pt"))


def test_detector_from_environment(monkeypatch, stand_in_i3d):
    monkeypatch.setenv(fvd.I3D_ENV, stand_in_i3d)
    assert fvd.resolve_detector_path(None) == stand_in_i3d


def test_input_contract_is_enforced():
    good = torch.zeros(2, 3, 16, 8, 8, dtype=torch.uint8)
    fvd.check_videos(good, 16)
    fvd.check_videos(good[:, :, :fvd.MIN_FRAMES])  # the minimum itself is enough
    with pytest.raises(TypeError, match="uint8"):
        fvd.check_videos(good.float())
    with pytest.raises(ValueError, match="at least"):
        fvd.check_videos(good[:, :, :8])
    with pytest.raises(ValueError, match=r"\[N, 3, T, H, W\]"):
        fvd.check_videos(good.permute(0, 2, 1, 3, 4))
    with pytest.raises(ValueError, match="protocol"):
        fvd.check_videos(good[:, :, :12], 16)
    with pytest.raises(ValueError, match="have 20 frames; the protocol scores clips of 16"):
        fvd.check_videos(torch.zeros(2, 3, 20, 8, 8, dtype=torch.uint8), 16)
    # generated videos are [N, T, 3, H, W]: ones already in the detector's layout are refused
    with pytest.raises(ValueError, match=r"expected generated videos \[N, T, 3, H, W\]"):
        fvd.to_uint8(torch.zeros(2, 3, 16, 8, 8))
    # [-1, 1] maps to uint8 as clamp(x * 127.5 + 128), channels moved to dim 1.
    u = fvd.to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 4, 1, 1, 1).expand(1, 4, 3, 1, 1))
    assert u.shape == (1, 3, 4, 1, 1) and u[0, 0, :, 0, 0].tolist() == [0, 128, 255, 255]


def test_real_windows_are_one_contiguous_window_of_distinct_trajectories():
    # Each pixel encodes (trajectory, frame, channel), so every clip decodes back to where it
    # came from without calling real_windows' own indexing.
    n, t, h, w = 12, 9, 2, 3
    traj, frame, chan = np.meshgrid(np.arange(n), np.arange(t), np.arange(3), indexing="ij")
    code = (traj * 20 + frame * 2 + (chan == 2)).astype(np.uint8)    # < 256, channel 2 odd
    frames_ds = np.broadcast_to(code[:, :, None, None, :], (n, t, h, w, 3)).copy()
    clips = fvd.real_windows(frames_ds, num_videos=5, frames=4, seed=3)
    assert clips.shape == (5, 3, 4, h, w) and clips.dtype == torch.uint8
    c = clips.numpy().astype(int)
    assert (c[:, 2] % 2 == 1).all() and (c[:, :2] % 2 == 0).all()   # channels in place
    assert (c == c[:, :, :, :1, :1]).all()                           # each frame is one value
    v = c[:, 0, :, 0, 0]
    trajs, starts = v[:, 0] // 20, (v[:, 0] % 20) // 2
    assert len(set(trajs.tolist())) == 5                              # distinct trajectories
    assert (v // 20 == trajs[:, None]).all()                          # one trajectory per clip
    np.testing.assert_array_equal((v % 20) // 2, starts[:, None] + np.arange(4))  # contiguous
    assert (starts + 4 <= t).all()
    with pytest.raises(ValueError, match="fewer than the clip length"):
        fvd.real_windows(frames_ds, num_videos=5, frames=t + 1, seed=3)


def _coded_frames(n, t):
    """[n, t, 1, 1, 3] uint8 frames whose every pixel is its frame index."""
    return np.broadcast_to(np.arange(t, dtype=np.uint8)[None, :, None, None, None],
                           (n, t, 1, 1, 3)).copy()


def test_real_windows_draw_every_start_and_a_whole_trajectory():
    # Clips as long as the trajectories: the one window starts at frame 0.
    clips = fvd.real_windows(_coded_frames(4, 10), num_videos=4, frames=10, seed=0)
    np.testing.assert_array_equal(clips[:, 0, :, 0, 0].numpy(), np.tile(np.arange(10), (4, 1)))
    # 3-frame windows of 5-frame trajectories start at 0, 1 or 2, and over seeds all three occur.
    starts = set()
    for seed in range(10):
        c = fvd.real_windows(_coded_frames(8, 5), num_videos=8, frames=3, seed=seed)
        starts.update(c[:, 0, 0, 0, 0].tolist())
    assert starts == {0, 1, 2}


class _FakeGenerator:
    """Generated videos = real clips of a random 'dataset' with a brightness shift."""

    def __init__(self, shift):
        self.shift = shift

    def sample(self, n, frames, *, dt=None, generator=None):
        x = torch.rand(n, frames, 3, 8, 8, generator=generator) * 1.6 - 0.8
        return (x + self.shift).clamp(-1, 1)


def test_pipeline_with_stand_in_detector(stand_in_i3d, tmp_path):
    det = fvd.load_detector(stand_in_i3d)
    n = 64
    real_frames = fvd.to_uint8(_FakeGenerator(0.0).sample(n, 20, generator=torch.Generator().manual_seed(9)))
    real_frames = real_frames.permute(0, 2, 3, 4, 1).numpy()  # stored layout [N, T, H, W, 3]
    data_path = tmp_path / "fake.h5"
    data_path.write_bytes(b"x")
    kw = dict(data_path=str(data_path), detector_path=stand_in_i3d, num_videos=n, frames=16,
              seed=0, cache_dir=str(tmp_path / "cache"), batch_size=16)
    mu_r, sigma_r = fvd.real_stats(real_frames, det, **kw)
    # Oracle: the same clips through the module by hand, float64 statistics with numpy.
    clips = fvd.real_windows(real_frames, num_videos=n, frames=16, seed=0)
    f = det(clips, rescale=True, resize=True, return_features=True).double().numpy()
    np.testing.assert_allclose(mu_r, f.mean(0), rtol=1e-10)
    np.testing.assert_allclose(sigma_r, np.cov(f, rowvar=False, bias=True), rtol=1e-8, atol=1e-10)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    mu_c, sigma_c = fvd.real_stats(None, det, **kw)  # served from the cache: no frames needed
    np.testing.assert_array_equal(mu_c, mu_r)
    np.testing.assert_array_equal(sigma_c, sigma_r)
    # the same file's clips from other trajectories (its held-out rows, not all): computed anew
    mu_h, _ = fvd.real_stats(real_frames[16:], det, **{**kw, "num_videos": 48},
                             rows=np.arange(16, 64))
    mu_a, _ = fvd.real_stats(real_frames[:48], det, **{**kw, "num_videos": 48},
                             rows=np.arange(0, 48))
    assert len(list((tmp_path / "cache").iterdir())) == 3 and not np.allclose(mu_h, mu_a)

    close = fvd.fvd_over_seeds(_FakeGenerator(0.0), det, mu_r, sigma_r, seeds=(0, 1), num_videos=n,
                               frames=16, batch_size=16)
    far = fvd.fvd_over_seeds(_FakeGenerator(0.5), det, mu_r, sigma_r, seeds=(0, 1), num_videos=n,
                             frames=16, batch_size=16)
    assert close["fvd_per_seed"][0] != close["fvd_per_seed"][1]
    assert far["fvd_mean"] > 10 * close["fvd_mean"] > 0
    assert not far["canonical"] and far["num_videos"] == n
    with pytest.raises(ValueError, match="trajectories"):
        fvd.real_windows(real_frames, num_videos=n + 1, frames=16, seed=0)


def test_the_real_statistics_cache_key_names_everything_they_depend_on(tmp_path):
    data, det, other_det = (tmp_path / n for n in ("real.h5", "i3d.pt", "other_i3d.pt"))
    for f in (data, det, other_det):
        f.write_bytes(b"x")
    base = dict(data_path=str(data), detector_path=str(det), num_videos=64, frames=16, seed=0)
    variants = [base, {**base, "detector_path": str(other_det)}, {**base, "num_videos": 32},
                {**base, "frames": 12}, {**base, "seed": 1}, {**base, "rows": [0, 1, 2]},
                {**base, "rows": [1, 2, 3]}]
    keys = [fvd.stats_cache_key(**v) for v in variants]
    assert len(set(keys)) == len(keys)
    assert fvd.stats_cache_key(**base) == keys[0]        # and the same inputs, the same key
    os.utime(data, ns=(1, 1))                             # the data file rewritten
    assert fvd.stats_cache_key(**base) != keys[0]


def test_singular_covariances_with_a_defective_product_give_the_closed_form():
    # S1 = a a^T (rank 1) and a singular S2 whose product S1 S2 is not diagonalisable:
    # scipy's sqrtm of it is not finite. Closed form: Tr sqrt(S1 S2) = sqrt(a^T S2 a).
    a = np.array([1.0, 0.0, 1.0])
    s1 = np.outer(a, a)
    s2 = np.array([[5.0, -4.0, 2.0], [-4.0, 5.0, -1.0], [2.0, -1.0, 1.0]])  # eigenvalue 0
    want = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(a @ s2 @ a)
    # The eps shift moves the root of each zero eigenvalue by about sqrt(eps * the other's).
    for x, y in ((s1, s2), (s2, s1)):
        got = fvd.frechet_distance(np.zeros(3), x, np.zeros(3), y)
        assert got == pytest.approx(want, abs=1e-2)


def test_fvd_over_seeds_is_the_mean_and_standard_deviation_of_the_seeds(monkeypatch):
    # One feature; the real set and every seed's generated set have variance 1, so each
    # seed's FVD is its squared mean distance: 0, 1, 9 for means 0, 1, 3.
    shift = {0: 0.0, 1: 1.0, 2: 3.0}
    monkeypatch.setattr(fvd, "generated_features",
                        lambda g, d, *, seed, **kw: np.array([[shift[seed] - 1.0],
                                                              [shift[seed] + 1.0]]))
    got = fvd.fvd_over_seeds(None, None, np.zeros(1), np.ones((1, 1)), seeds=(0, 1, 2),
                             num_videos=2, frames=16, progress=False)
    np.testing.assert_allclose(got["fvd_per_seed"], [0.0, 1.0, 9.0], atol=1e-9)
    assert got["fvd_mean"] == pytest.approx(10 / 3)
    assert got["fvd_std"] == pytest.approx(np.sqrt(146) / 3)  # population std of 0, 1, 9
    assert got["seeds"] == [0, 1, 2] and not got["canonical"]
    # canonical: StyleGAN-V's protocol in both counts, 2048 videos of 16 frames, not one
    canonical = {(n, t): fvd.fvd_over_seeds(None, None, np.zeros(1), np.ones((1, 1)),
                                            seeds=(0,), num_videos=n, frames=t,
                                            progress=False)["canonical"]
                 for n, t in ((2048, 16), (2048, 12), (2, 16))}
    assert canonical == {(2048, 16): True, (2048, 12): False, (2, 16): False}


def test_generated_features_are_the_same_videos_whatever_the_batch(stand_in_i3d):
    # One random stream over the whole set: batches of 16 score the videos one batch of 64
    # would (re-seeding per batch made 64 videos of 16 distinct ones)
    det = fvd.load_detector(stand_in_i3d)
    kw = dict(num_videos=64, frames=16, seed=5, progress=False)
    by16 = fvd.generated_features(_FakeGenerator(0.0), det, batch_size=16, **kw)
    by64 = fvd.generated_features(_FakeGenerator(0.0), det, batch_size=64, **kw)
    np.testing.assert_allclose(by16, by64, rtol=1e-5, atol=1e-5)
    assert len(np.unique(by16.round(4), axis=0)) == 64           # 64 distinct videos


def test_a_damaged_or_interrupted_real_statistics_cache_is_computed_again(stand_in_i3d, tmp_path,
                                                                        monkeypatch):
    # An evaluation stopped (Ctrl-C) while it wrote the cache, or a parallel one reading it
    # mid-write, must not leave a partial .npz that later runs load (BadZipFile traceback).
    det = fvd.load_detector(stand_in_i3d)
    real_frames = fvd.to_uint8(_FakeGenerator(0.0).sample(16, 16, generator=torch.Generator().manual_seed(3)))
    real_frames = real_frames.permute(0, 2, 3, 4, 1).numpy()
    data_path = tmp_path / "fake.h5"
    data_path.write_bytes(b"x")
    cache_dir = tmp_path / "cache"
    kw = dict(data_path=str(data_path), detector_path=stand_in_i3d, num_videos=16, frames=16,
              seed=0, batch_size=16)
    want_mu, want_sigma = fvd.real_stats(real_frames, det, cache_dir=None, **kw)  # no cache

    real_savez = np.savez

    def interrupted_savez(file, **arrays):  # writes part of the archive, then Ctrl-C
        real_savez(file, **arrays)
        if isinstance(file, str):
            with open(file if file.endswith(".npz") else file + ".npz", "r+b") as f:
                f.truncate(100)
        else:
            file.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        fvd.real_stats(real_frames, det, cache_dir=str(cache_dir), **kw)
    monkeypatch.setattr(np, "savez", real_savez)
    assert [p.name for p in cache_dir.iterdir()] == []   # nothing half-written is left

    # a cache file damaged some other way (a crash, a full disk) is a miss, not a traceback
    mu, _ = fvd.real_stats(real_frames, det, cache_dir=str(cache_dir), **kw)
    (cached,) = cache_dir.iterdir()
    cached.write_bytes(cached.read_bytes()[:100])
    mu, sigma = fvd.real_stats(real_frames, det, cache_dir=str(cache_dir), **kw)
    np.testing.assert_array_equal(mu, want_mu)
    np.testing.assert_array_equal(sigma, want_sigma)
    mu_c, sigma_c = fvd.real_stats(None, det, cache_dir=str(cache_dir), **kw)  # rewritten whole
    np.testing.assert_array_equal(mu_c, want_mu)
    np.testing.assert_array_equal(sigma_c, want_sigma)


def test_a_directory_given_as_the_detector_is_named_as_one(monkeypatch, tmp_path):
    # --i3d DIR (the folder the detector was downloaded into) exists: "does not exist" is wrong
    monkeypatch.delenv(fvd.I3D_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        fvd.resolve_detector_path(str(tmp_path))
    assert f"'{tmp_path}' is a directory, not the detector file" in str(err.value)
    assert "does not exist" not in str(err.value)
    (tmp_path / fvd.I3D_FILENAME).write_bytes(b"x")   # the file is inside it: named
    with pytest.raises(FileNotFoundError) as err:
        fvd.resolve_detector_path(str(tmp_path))
    assert f"did you mean {tmp_path / fvd.I3D_FILENAME}?" in str(err.value)


def _frame_means(videos, rescale=False, resize=False, return_features=False):
    """A detector called as StyleGAN-V's I3D is: each clip's mean level per frame, [N, T]."""
    return videos.double().mean(dim=(1, 3, 4))


def test_real_statistics_are_those_of_the_windows_their_seed_draws(tmp_path):
    # Each pixel codes (trajectory, frame), so a clip's features name its window. The
    # statistics for seed 1 are seed 1's windows (the cache key names the seed): a seed lost
    # on the way to real_windows passed every other test, which all draw with seed 0.
    n, t = 12, 20
    code = (np.arange(n)[:, None] * 10 + np.arange(t)[None, :]).astype(np.uint8)   # < 256
    frames_ds = np.broadcast_to(code[:, :, None, None, None], (n, t, 2, 2, 3)).copy()
    data, det = tmp_path / "real.h5", tmp_path / "i3d.pt"
    for f in (data, det):
        f.write_bytes(b"x")
    got = {}
    for seed in (0, 1):
        mu, sigma = fvd.real_stats(frames_ds, _frame_means, data_path=str(data),
                                   detector_path=str(det), num_videos=6, frames=10, seed=seed,
                                   progress=False)
        clips = fvd.real_windows(frames_ds, num_videos=6, frames=10, seed=seed)
        f = clips[:, 0, :, 0, 0].numpy().astype(np.float64)        # [6 clips, 10 frames]
        np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(f, rowvar=False, bias=True), rtol=1e-12,
                                   atol=1e-12)
        got[seed] = mu
    assert not np.allclose(got[0], got[1])        # the two seeds draw other windows


def test_generated_features_score_a_last_batch_smaller_than_the_others():
    # 10 videos in batches of 4 are scored as 4 + 4 + 2: the same 10 videos one batch draws
    # (a last batch of full size made 12 and the evaluation stop).
    kw = dict(num_videos=10, frames=10, seed=2, progress=False)
    by4 = fvd.generated_features(_FakeGenerator(0.0), _frame_means, batch_size=4, **kw)
    by10 = fvd.generated_features(_FakeGenerator(0.0), _frame_means, batch_size=10, **kw)
    assert by4.shape == (10, 10)
    np.testing.assert_allclose(by4, by10, rtol=0, atol=1e-9)


def test_real_windows_draw_their_trajectories_at_random():
    # 3 of 8 trajectories per seed: over ten seeds every trajectory is drawn, not the first 3.
    n = 8
    frames_ds = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None, None],
                                (n, 4, 1, 1, 3)).copy()          # each pixel its trajectory
    drawn = set()
    for seed in range(10):
        drawn.update(fvd.real_windows(frames_ds, num_videos=3, frames=2, seed=seed)[:, 0, 0, 0, 0]
                     .tolist())
    assert drawn == set(range(n))
