"""Frechet Video Distance, the StyleGAN-V protocol.

Protocol (docs/evaluation.md#fvd): 2048 real and 2048 generated clips of 16
consecutive frames, one random window per held-out real trajectory; the TorchScript I3D
that StyleGAN-V distributes, called as ``detector(videos, rescale=True, resize=True,
return_features=True)`` on uint8 videos shaped [N, 3, T, H, W]; mean and biased (/N)
covariance of its 400-d features; distance
``|mu_g - mu_r|^2 + Tr(S_g + S_r - 2 sqrtm(S_g S_r))`` with the real part of the root.

Generated frames in [-1, 1] are scored as tensors (never re-decoded from compressed files)
after the same uint8 quantisation real frames went through.
"""
import hashlib
import json
import os
import warnings
import zipfile

import numpy as np
import scipy.linalg
import torch
from tqdm import tqdm

from hgan.evaluate.atomic import write_atomically

I3D_FILENAME = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
I3D_ENV = "HGAN_I3D"
PROTOCOL = {"num_videos": 2048, "frames": 16}
MIN_FRAMES = 10  # I3D's temporal pooling needs roughly this many frames


def resolve_detector_path(path=None):
    """The detector file from the flag, else $HGAN_I3D; one clear error when neither exists."""
    path = path or os.environ.get(I3D_ENV)
    if not path or not os.path.isfile(path):
        if not path:
            where = f"no --i3d PATH and ${I3D_ENV} is unset"
        elif os.path.isdir(path):
            inside = os.path.join(path, I3D_FILENAME)
            where = f"'{path}' is a directory, not the detector file" + (
                f"; did you mean {inside}?" if os.path.isfile(inside) else "")
        else:
            where = f"'{path}' does not exist"
        raise FileNotFoundError(
            f"FVD needs the TorchScript I3D detector '{I3D_FILENAME}' ({where}). It is the "
            f"port of tf.hub i3d-kinetics-400 published with StyleGAN-V at {I3D_URL} ; "
            f"download it and pass --i3d PATH or set {I3D_ENV}=PATH.")
    return path


def load_detector(path=None, device="cpu"):
    path = resolve_detector_path(path)
    with warnings.catch_warnings():
        # The published detector is TorchScript; torch's deprecation notice is not actionable here.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(path, map_location=device).eval()


class NonFiniteVideos(ValueError):
    """A generator gave NaN or inf pixels (hgan.evaluate reports it as bad input)."""


def to_uint8(videos):
    """Generated [N, T, 3, H, W] floats in [-1, 1] -> uint8 [N, 3, T, H, W] (StyleGAN-V mapping)."""
    if videos.dim() != 5 or videos.shape[2] != 3:
        raise ValueError(f"expected generated videos [N, T, 3, H, W], got {tuple(videos.shape)}")
    if not videos.is_floating_point():
        raise TypeError(f"generated videos must be float in [-1, 1], got {videos.dtype}")
    if not torch.isfinite(videos).all():
        # clamp would turn NaN into black frames, whose scores look like a still video's
        raise NonFiniteVideos("generated videos hold NaN or inf values: the generator is "
                              "broken (its weights or its integrator); nothing to score")
    out = (videos.detach() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return out.permute(0, 2, 1, 3, 4).contiguous()


def check_videos(videos, frames=None, name="videos"):
    """Assert the detector's input contract: uint8, [N, 3, T, H, W], enough frames."""
    if not isinstance(videos, torch.Tensor) or videos.dtype != torch.uint8:
        raise TypeError(f"{name} must be a uint8 tensor in [0, 255] "
                        f"(got {getattr(videos, 'dtype', type(videos))}); map [-1, 1] floats "
                        f"with hgan.evaluate.fvd.to_uint8")
    if videos.dim() != 5 or videos.shape[1] != 3:
        raise ValueError(f"{name} must be shaped [N, 3, T, H, W], got {tuple(videos.shape)}")
    t = videos.shape[2]
    if t < MIN_FRAMES:
        raise ValueError(f"{name} have {t} frames; I3D needs at least {MIN_FRAMES}")
    if frames is not None and t != frames:
        raise ValueError(f"{name} have {t} frames; the protocol scores clips of {frames}")


@torch.no_grad()
def extract_features(detector, videos, *, batch_size=32, device="cpu", desc="I3D features",
                     progress=True):
    """uint8 [N, 3, T, H, W] -> float64 features [N, F]."""
    check_videos(videos)
    feats = []
    for i in tqdm(range(0, len(videos), batch_size), desc=desc, leave=False,
                  disable=not progress):
        chunk = videos[i:i + batch_size].to(device)
        f = detector(chunk, rescale=True, resize=True, return_features=True)
        feats.append(f.detach().double().cpu())
    return torch.cat(feats).numpy()


def feature_stats(features):
    """Mean and biased (/N) covariance, as StyleGAN-V computes them."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need features [N >= 2, F], got shape {features.shape}")
    mu = features.mean(axis=0)
    sigma = np.cov(features, rowvar=False, bias=True)
    return mu, np.atleast_2d(sigma)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), real part, stable for singular S.

    With fewer samples than feature dimensions the covariances are singular and
    sqrtm(S1 S2) can come back with inf/nan (a product that is not diagonalisable); then both
    are shifted by eps * I, which moves the root of each zero eigenvalue by about
    sqrt(eps * lambda) for the other matrix's eigenvalues lambda: ~1e-3 per such direction.
    An imaginary part is numerical noise when it is small next to the trace; a large one
    means the inputs are not covariances, which is raised.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # scipy's "Matrix is singular" is the case handled here, not news for the user
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(mu1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        scale = max(1.0, np.abs(np.trace(sigma1)) + np.abs(np.trace(sigma2)))
        if np.abs(covmean.imag).max() > 1e-3 * scale:
            raise ValueError(f"sqrtm has a large imaginary part ({np.abs(covmean.imag).max():.3g}); "
                             f"the statistics are not valid covariances")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def real_windows(frames_ds, *, num_videos, frames, seed):
    """One random window of `frames` per trajectory -> uint8 [num_videos, 3, frames, H, W].

    `frames_ds` is the [N, T, H, W, 3] uint8 frame array of the held-out split.
    """
    n, t = frames_ds.shape[:2]
    if n < num_videos:
        raise ValueError(f"the real set has {n} trajectories; the protocol needs {num_videos} "
                         f"(one window each): generate a larger held-out set or lower --fvd-videos")
    if t < frames:
        raise ValueError(f"real trajectories have {t} frames, fewer than the clip length {frames}")
    rng = np.random.default_rng(seed)
    traj = np.sort(rng.choice(n, size=num_videos, replace=False))
    starts = rng.integers(0, t - frames + 1, size=num_videos)
    clips = np.stack([np.asarray(frames_ds[i, s:s + frames]) for i, s in zip(traj, starts)])
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous()  # [N, 3, T, H, W]


def _file_key(path):
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def stats_cache_key(data_path, detector_path, rows=None, **protocol):
    """rows: the trajectories of data_path the clips come from (None: all of them); one file
    gives different real sets as the held-out split (its last 20%) and as --real (all)."""
    rows = None if rows is None else hashlib.sha256(
        np.asarray(rows, np.int64).tobytes()).hexdigest()
    blob = json.dumps({"data": _file_key(data_path), "detector": _file_key(detector_path),
                       "rows": rows, **protocol}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def real_stats(frames_ds, detector, *, data_path, detector_path, num_videos=2048, frames=16,
               seed=0, cache_dir=None, batch_size=32, device="cpu", rows=None, progress=True):
    """Real feature statistics, cached in `cache_dir` under a hash of data (`rows`: which of
    its trajectories `frames_ds` holds, None: all), detector and protocol."""
    key = stats_cache_key(data_path, detector_path, rows=rows, num_videos=num_videos,
                          frames=frames, seed=seed)
    cache = os.path.join(cache_dir, f"fvd_real_{key}.npz") if cache_dir else None
    if cache and os.path.exists(cache):
        try:
            with np.load(cache) as z:
                return z["mu"], z["sigma"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # damaged (a crash while an older version wrote it): computed and replaced
    clips = real_windows(frames_ds, num_videos=num_videos, frames=frames, seed=seed)
    check_videos(clips, frames, "real videos")
    mu, sigma = feature_stats(extract_features(detector, clips, batch_size=batch_size,
                                               device=device, desc="I3D real",
                                               progress=progress))
    if cache:
        # Whole or not at all: an interrupted write, or an evaluation in parallel that reads
        # the cache while another writes it, must never see a partial archive.
        os.makedirs(cache_dir, exist_ok=True)
        write_atomically(cache, lambda f: np.savez(f, mu=mu, sigma=sigma))
    return mu, sigma


@torch.no_grad()
def generated_features(generator, detector, *, num_videos, frames, seed, batch_size=32,
                       device="cpu", progress=True):
    gen = torch.Generator(device=device).manual_seed(seed)
    feats = []
    for i in tqdm(range(0, num_videos, batch_size), desc=f"I3D generated (seed {seed})",
                  leave=False, disable=not progress):
        n = min(batch_size, num_videos - i)
        clips = to_uint8(generator.sample(n, frames, generator=gen))
        check_videos(clips, frames, "generated videos")
        feats.append(extract_features(detector, clips, batch_size=batch_size, device=device,
                                      progress=False))
    feats = np.concatenate(feats)
    if len(feats) != num_videos:
        raise RuntimeError(f"scored {len(feats)} generated videos, expected {num_videos}")
    return feats


def fvd_over_seeds(generator, detector, mu_r, sigma_r, *, seeds=(0, 1, 2), num_videos=2048,
                   frames=16, batch_size=32, device="cpu", progress=True):
    """FVD for each seed of the generated set; FVD is not deterministic, so report mean ± std."""
    values = []
    for s in seeds:
        feats = generated_features(generator, detector, num_videos=num_videos, frames=frames,
                                   seed=s, batch_size=batch_size, device=device,
                                   progress=progress)
        if feats.shape[1] != len(mu_r):
            raise ValueError(f"detector gives {feats.shape[1]}-d features, real statistics are "
                             f"{len(mu_r)}-d: stale cache or a different detector")
        values.append(frechet_distance(*feature_stats(feats), mu_r, sigma_r))
    return {"fvd_mean": float(np.mean(values)), "fvd_std": float(np.std(values)),
            "fvd_per_seed": values, "seeds": list(seeds), "num_videos": num_videos,
            "frames": frames, "canonical": num_videos == PROTOCOL["num_videos"]
            and frames == PROTOCOL["frames"]}
