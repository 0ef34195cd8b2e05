"""The paper's figures: sample grids (PNG, GIF), motion t-SNE, active momenta, energy rollouts.

Sample grids are drawn with PIL (exact pixels, no resampling blur); the plots use
matplotlib's Agg backend so that they render without a display.
"""
import numpy as np
from PIL import Image

from hgan.data.simulate import REAL_TIME_FPS

BACKGROUND = (255, 255, 255)
TSNE_MIN_ITERS = 250  # scikit-learn rejects fewer


def _matplotlib():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("the evaluation plots need matplotlib: pip install -e '.[eval]' "
                          "in the repository (scikit-learn and matplotlib)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _check_u8_videos(videos):
    videos = np.asarray(videos)
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be uint8 [N, T, H, W, 3], got {videos.dtype} {videos.shape}")
    return videos


def grid_image(videos, *, scale=2, gap=1):
    """uint8 [N, T, H, W, 3] -> one image, a row of frames per video."""
    videos = _check_u8_videos(videos)
    n, t, h, w, _ = videos.shape
    canvas = np.full((n * (h + gap) - gap, t * (w + gap) - gap, 3), BACKGROUND, np.uint8)
    for i in range(n):
        for j in range(t):
            canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = videos[i, j]
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_sample_grid(videos, png_path, gif_path=None, *, scale=2, columns=8,
                     fps=REAL_TIME_FPS):
    """PNG: rows of frames. GIF: the videos side by side (`columns` per row), played in time."""
    videos = _check_u8_videos(videos)
    grid_image(videos, scale=scale).save(png_path)
    if gif_path:
        n, t = videos.shape[:2]
        columns = min(columns, n)     # 3 videos: 3 columns, not 3 and 5 empty tiles
        rows = -(-n // columns)
        pad = np.full((rows * columns - n,) + videos.shape[1:], BACKGROUND, np.uint8)
        tiled = np.concatenate([videos, pad]).reshape(rows, columns, *videos.shape[1:])
        # At time k, [rows, columns, H, W, 3] has the layout of a grid of `rows` videos.
        frames = [grid_image(tiled[:, :, k], scale=scale) for k in range(t)]
        frames[0].save(gif_path, save_all=True, append_images=frames[1:],
                       duration=int(1000 / fps), loop=0)
    return png_path


def tsne_embedding(points, *, seed=0, perplexity=30.0, iterations=1000):
    """t-SNE to 2-D (scikit-learn). points [N, D]."""
    import inspect

    from sklearn.manifold import TSNE
    if iterations < TSNE_MIN_ITERS:
        raise ValueError(f"t-SNE needs at least {TSNE_MIN_ITERS} iterations, got {iterations}")
    points = np.asarray(points, dtype=np.float64)
    perplexity = min(perplexity, max(2.0, (len(points) - 1) / 3))
    # scikit-learn 1.5 renamed n_iter to max_iter; detect the keyword, not the version.
    key = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
    # Exact gradients for small sets: the Barnes-Hut tree's OpenMP threads cost
    # more than they save at this size (56 ms per iteration for 40 points on a shared CPU).
    method = "exact" if len(points) <= 200 else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                method=method, **{key: int(iterations)})
    return tsne.fit_transform(points)


def plot_tsne(embedding, path, *, title, color=None, color_label="|y|"):
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=100)
    sc = ax.scatter(embedding[:, 0], embedding[:, 1], s=3, c=color,
                    cmap="viridis" if color is not None else None)
    if color is not None:
        fig.colorbar(sc, ax=ax, fraction=0.046, label=color_label)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_active_momenta(mean_abs_dpdt, threshold, path, *, title):
    """Bar per latent momentum dimension of mean |dp_i/dt|; the threshold line marks 'active'."""
    plt = _matplotlib()
    v = np.asarray(mean_abs_dpdt)
    fig, ax = plt.subplots(figsize=(max(3.0, 0.3 * len(v) + 1), 2.6), dpi=100)
    ax.bar(np.arange(len(v)), v, color=["tab:red" if x > threshold else "tab:gray" for x in v])
    ax.axhline(threshold, color="k", lw=0.8, ls="--", label="active above")
    ax.legend(fontsize=7, frameon=False, loc="upper right")
    ax.set_xlabel("latent momentum dimension i")
    ax.set_ylabel("mean |dp_i/dt|")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_energy_rollout(steps, forward, backward, path, *, title):
    """Relative change of the learned H along rollouts [N, T]: median and 10-90% band."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=100)
    for sign, rel, color, label in ((1, forward, "tab:blue", "forward (+dt)"),
                                    (-1, backward, "tab:orange", "backward (-dt)")):
        rel = np.asarray(rel)
        lo, mid, hi = np.percentile(rel, [10, 50, 90], axis=0)
        ax.plot(sign * steps, mid, color=color, lw=1, label=label)
        ax.fill_between(sign * steps, lo, hi, color=color, alpha=0.25, lw=0)
    ax.set_xlabel("leapfrog steps")
    ax.set_ylabel("(H_t - H_0) / |H_0|")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
