"""Write ``<out>/compare.md`` and ``<out>/figures/`` from the grid's evaluated runs."""
import os
import textwrap

import numpy as np

from hgan.experiments import table
from hgan.experiments.grid import metric_list


def _bar_chart(spec, rows, key, title, get, path):
    from hgan.evaluate.figures import _matplotlib
    plt = _matplotlib()
    systems, models = list(spec.systems), list(spec.models)
    width_in = 1.1 * len(systems) + 2.2
    fig, ax = plt.subplots(figsize=(width_in, 2.8), dpi=100)
    width = 0.8 / max(1, len(models))
    drawn = False
    for i, m in enumerate(models):
        cells = [table._cell(rows, s, m, get) for s in systems]
        x = np.arange(len(systems)) + (i - (len(models) - 1) / 2) * width
        y = [c["mean"] if c and c["mean"] is not None else np.nan for c in cells]
        err = [c["std"] if c else 0 for c in cells]
        labelled = False
        if not np.isnan(y).all():
            ax.bar(x, y, width, yerr=err, label=m, color=f"C{i}")
            drawn = labelled = True
        for xi, c in zip(x, cells):  # seeds of different lengths: no mean, each seed a dot
            if c and c["per_seed"]:
                ax.plot([xi] * len(c["per_seed"]), [v for v, _, _ in c["per_seed"]], "o",
                        ms=3, color=f"C{i}", label=None if labelled else m)
                drawn = labelled = True
    if key in table.REAL:  # the value on real data, as a black dash per system
        _, rget = table.REAL[key]
        for j, s in enumerate(systems):
            v = next((rget(r["results"]) for r in rows if r["system"] == s and r["results"]), None)
            v = v[0] if isinstance(v, tuple) else v
            if v is not None:
                ax.hlines(v, j - 0.45, j + 0.45, color="k", lw=1.2, label="real" if j == 0 else None)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xticks(np.arange(len(systems)), [s.replace("_", "\n") for s in systems], fontsize=8)
    # The metric titles run long: wrapped to the figure's width, at 5.5 points per 8-point
    # character, a little more than their average (70 characters overflowed a two-system
    # figure's 317 points).
    ax.set_title(textwrap.fill(title, max(30, int(width_in * 72 / 5.5))), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _samples_montage(spec, rows, system, path):
    """Rows of sample strips, top to bottom: real, then each model (first seed), as PNG."""
    from PIL import Image
    found = []  # (label, png)
    for r in rows:
        if r["system"] == system and r["seed"] == spec.seeds[0] and r["results"]:
            figs = r["results"].get("figures", {})
            for label, key in (("real", "samples_real"), (r["model"], f"samples_{r['model']}")):
                p = os.path.join(r["run"].path("eval"), figs.get(key, "-"))
                if key in figs and os.path.exists(p) and label not in [x for x, _ in found]:
                    found.append((label, p))
    found.sort(key=lambda x: x[0] != "real")  # real first, then the models in grid order
    images = [Image.open(p).convert("RGB") for _, p in found]
    if not images:
        return None, []
    gap = 6
    w = max(i.width for i in images)
    canvas = Image.new("RGB", (w, sum(i.height for i in images) + gap * (len(images) - 1)), "white")
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height + gap
    canvas.save(path)
    return path, [label for label, _ in found]


def write_compare(spec, meta, path=None):
    """compare.md (and the figures it shows); returns its text."""
    out_dir = spec.out
    path = path or os.path.join(out_dir, "compare.md")
    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    rows = table.collect(spec)
    rel = lambda p: os.path.relpath(p, os.path.dirname(os.path.abspath(path)))  # noqa: E731
    lines = [f"# Table 1 grid: {count_of(len(spec.systems), 'system')} x "
             f"{count_of(len(spec.models), 'model')} x {count_of(len(spec.seeds), 'seed')}", "",
             f"- command: `{meta.get('command', '')}`",
             f"- device: {meta.get('device', 'unknown')}; commit {meta.get('commit', 'unknown')}; "
             f"written {meta.get('date', '')}",
             f"- every run: {spec.iters} iterations asked, batch {spec.batch_size}, "
             f"{spec.frames} frames, {spec.resolution} px, extra train.py flags "
             f"`{' '.join(spec.train_args) or '(none)'}`",
             f"- data: {spec.train_traj} train / {spec.test_traj} test trajectories of "
             f"{spec.traj_frames} frames per system (seed {spec.data_seed}); the paper used "
             "50,000 x 512",
             f"- evaluation: `{','.join(metric_list(spec))}`"
             + (f", flags `{' '.join(spec.eval_args)}`" if spec.eval_args else "")
             + ("" if spec.i3d else "; no --i3d detector given, so no FVD"),
             f"- wall time of the invocation: {meta.get('wall_s', 0):.0f} s"
             + (f"; of every invocation on this grid: {meta['wall_s_total']:.0f} s"
                if meta.get("wall_s_total", 0) > meta.get("wall_s", 0) + 0.5 else ""), ""]
    if meta.get("note"):
        lines += [meta["note"], ""]
    lines += table.runs_section(rows)
    lines += ["## Table 1 and the other metrics", "",
              "Rows: models; columns: systems; each cell: value (iterations, training time).", ""]
    lines += table.metric_sections(spec, rows)
    lines += table.checks_section(spec, rows)
    figs, written = [], set()
    for key, title, get, _ in table.METRICS:
        p = _bar_chart(spec, rows, key, title, get, os.path.join(fig_dir, f"{key}.png"))
        if p:
            figs.append(f"![{key}]({rel(p)})")
            written.add(p)
    samples = []
    for s in spec.systems:
        p, labels = _samples_montage(spec, rows, s, os.path.join(fig_dir, f"samples_{s}.png"))
        if p:
            written.add(p)
            # (no count: a strip has as many videos as its evaluation had, up to 8)
            samples.append(f"**{s}**, one row of frames per video; blocks of videos, top to "
                           f"bottom: {', '.join(labels)}\n\n![{s}]({rel(p)})")
    if figs or samples:
        lines += ["## Figures", ""] + [f + "\n" for f in figs] + [s + "\n" for s in samples]
    per_run = [f"[{r['run'].name}]({rel(r['run'].path('eval', 'report.md'))})"
               for r in rows if r["results"]]
    if per_run:
        lines += ["Each run's own report (t-SNE, momenta, energy figures): " + ", ".join(per_run), ""]
    _remove_stale_figures(spec, fig_dir, written)
    text = "\n".join(lines)
    with open(path, "w") as f:
        f.write(text)
    return text


def count_of(n, word):
    """'1 system', '2 systems': the grid's counts, in compare.md and its status lines."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _remove_stale_figures(spec, fig_dir, written):
    """An earlier table's figure of a system or metric this one does not show (`--report-only
    --systems` on a subset) would sit in figures/ unlinked, and go out with `export`. Only the
    names this report writes are removed: anything else there is someone else's."""
    from hgan.data import SYSTEMS
    own = {f"{key}.png" for key, *_ in table.METRICS}
    own |= {f"samples_{s}.png" for s in (*SYSTEMS, *spec.systems)}
    for name in own - {os.path.basename(p) for p in written}:
        try:
            os.remove(os.path.join(fig_dir, name))
        except FileNotFoundError:
            pass
