"""Figures for the labs, from the arrays the pipeline modules give (no math beyond reshaping).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global figure
registry: nothing leaks across requests) for a ``gr.Plot``.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
PALETTE = ["#7c3aed", "#0ea5e9", "#f97316", "#10b981", "#e11d48", "#eab308", "#64748b", "#a855f7"]


def _figure(width=6.4, height=3.2, ncols=1, nrows=1):
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def _style(ax, title="", xlabel="", ylabel=""):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.25)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend_below(fig, handles=None, labels=None, ncols=3):
    """The legend under the axes, outside the data (constrained layout makes room for it)."""
    if handles is None:
        handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)


def _padded_range(values, pad: float = 0.5, floor: float | None = 0.0):
    """y limits that show a constant series as a line inside the axes, not as a +-5% band around
    it (matplotlib's default for a flat series: 2.85-3.15 for a constant 3); from ``floor`` when the
    values stay above it, so a scale reads against 0."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if floor is not None and lo >= floor:
        lo = floor
    span = hi - lo
    return lo - 0.05 * span - (pad if span == 0 else 0), hi + 0.1 * span + pad


def guidance_over_steps(steps, norms, scales, current_step: int | None = None) -> Figure:
    """||eps_cond - eps_uncond|| (RMS) and the applied guidance scale per step."""
    fig, (ax,) = _figure(6.4, 3.1)
    ax.plot(steps, norms, color=PALETTE[0], marker="o", ms=3, label="guidance norm (RMS of eps_c - eps_u)")
    _style(ax, "Guidance over the steps", "step", "guidance norm")
    twin = ax.twinx()
    twin.step(steps, scales, where="mid", color=PALETTE[2], label="applied scale w")
    twin.set_ylabel("applied scale w", fontsize=9)
    twin.tick_params(labelsize=8)
    twin.set_ylim(*_padded_range(scales))
    if current_step is not None:
        ax.axvline(current_step, color="#94a3b8", ls="--", lw=1, label=f"step {current_step} (shown)")
    lines = ax.get_lines()[:1] + twin.get_lines() + ax.get_lines()[1:]
    _legend_below(fig, lines, [l.get_label() for l in lines])
    return fig


def heatmap(values: np.ndarray, title: str, cmap: str = "magma", label: str = "", vmin: float | None = None) -> Figure:
    """One (h, w) array as a heatmap with a colorbar (``vmin=0`` for values that cannot be negative)."""
    fig, (ax,) = _figure(3.4, 3.0)
    vmax = None if vmin is None else max(float(np.max(values)), vmin + 1e-6)
    im = ax.imshow(values, cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, shrink=0.85, label=label)
    return fig


def channels(tensor: np.ndarray, title: str) -> Figure:
    """(C, h, w) -> one panel per channel, shared symmetric color scale."""
    c = tensor.shape[0]
    fig, axes = _figure(1.7 * c + 0.6, 2.0, ncols=c)
    bound = float(np.abs(tensor).max()) or 1.0
    for i, ax in enumerate(axes):
        im = ax.imshow(tensor[i], cmap="coolwarm", vmin=-bound, vmax=bound, interpolation="nearest")
        ax.set_title(f"ch {i}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return fig


def schedule_curves(train: dict, chosen: dict[str, dict]) -> Figure:
    """alpha_bar, sigma (log) and log-SNR over training t, each scheduler's picks marked.

    ``train``: pipelines.schedulers.training_schedule(...); ``chosen``: name ->
    sampling_schedule(...) (its ``timesteps``).
    """
    fig, axes = _figure(11.0, 3.8, ncols=3)
    t = train["t"]
    series = (("alpha_bar", "alpha_bar (signal variance)", False), ("sigma", "sigma = sqrt((1-ab)/ab)", True),
              ("log_snr", "log-SNR = log(ab / (1-ab))", False))
    for ax, (key, title, log_scale) in zip(axes, series):
        y = np.asarray(train[key], dtype=float)
        finite = np.isfinite(y)
        ax.plot(t[finite], y[finite], color="#334155", lw=1.5, label="training schedule")
        for k, (name, picked) in enumerate(chosen.items()):
            ts = np.clip(np.round(np.asarray(picked["timesteps"], dtype=float)).astype(int), 0, len(t) - 1)
            ys = y[ts]
            ok = np.isfinite(ys)
            # hollow markers of different shapes, the first largest: where two schedulers pick the
            # same t (DDIM and Euler a often do), both stay visible, one inside the other
            ax.scatter(ts[ok], ys[ok], s=max(12, 120 - 40 * k), marker=MARKERS[k % len(MARKERS)],
                       facecolors="none", edgecolors=PALETTE[k % len(PALETTE)], linewidths=1.3, zorder=3 + k,
                       label=f"{name} ({picked['num_model_calls']} calls)")
        if log_scale:
            ax.set_yscale("log")
        _style(ax, title, "training timestep t")
    _legend_below(fig, ncols=min(5, len(chosen) + 1))
    return fig


def adherence_curve(scales, accuracy: dict[str, list[float]], n_prompts: int) -> Figure:
    """Scorer accuracy per attribute against the guidance scale."""
    fig, (ax,) = _figure(6.4, 3.3)
    for k, (name, values) in enumerate(accuracy.items()):
        ax.plot(scales, values, marker="o", ms=4, color=PALETTE[k % len(PALETTE)], label=name)
    ax.set_ylim(-0.03, 1.03)
    _style(ax, f"Prompt adherence ({n_prompts} shapes-world prompts per scale)", "guidance scale", "accuracy")
    _legend_below(fig, ncols=max(1, len(accuracy)))
    return fig


def signal_noise(train: dict, timestep: int) -> Figure:
    """sqrt(alpha_bar) and sqrt(1 - alpha_bar) over t, the picked t marked."""
    fig, (ax,) = _figure(6.4, 2.9)
    t, ab = train["t"], np.asarray(train["alpha_bar"], dtype=float)
    ax.plot(t, np.sqrt(ab), color=PALETTE[1], label="signal  sqrt(alpha_bar)")
    ax.plot(t, np.sqrt(1 - ab), color=PALETTE[4], label="noise  sqrt(1 - alpha_bar)")
    ax.axvline(timestep, color="#94a3b8", ls="--", lw=1)
    _style(ax, f"x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps   at t = {timestep}", "training timestep t", "coefficient")
    _legend_below(fig, ncols=2)
    return fig


def model_calls_bars(names, calls) -> Figure:
    fig, (ax,) = _figure(6.4, 0.5 + 0.35 * len(names))
    ax.barh(names, calls, color=PALETTE[0])
    for y, c in enumerate(calls):
        ax.text(c, y, f" {c}", va="center", fontsize=8)
    ax.invert_yaxis()
    _style(ax, "UNet evaluations", "model calls")
    return fig
