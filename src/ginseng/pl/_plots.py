"""Confidence distributions per label and training curves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._errors import InputError
from .._keys import PREFIX, UNASSIGNED, ResultKeys
from ._utils import (
    check_adata,
    colors_from_uns,
    finish,
    new_axes,
    obs_column,
    observed_order,
    resolve_model,
)


def unassigned_threshold(adata, key_added: str) -> float | None:
    """The ``unassigned_threshold`` recorded by ``tl.classify`` under ``key_added``, if any."""
    record = adata.uns.get(ResultKeys.from_prefix(key_added).uns)
    try:
        value = record["classify"]["params"]["unassigned_threshold"]
    except (KeyError, TypeError, IndexError):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def confidence(
    adata: Any,
    *,
    key_added: str = PREFIX,
    groupby: str | None = None,
    ax=None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
):
    """Plot the distribution of calibrated confidence per predicted label.

    One violin per label, with the quartiles as a bar and the median as a dot, coloured
    like the labels in ``sc.pl.umap(adata, color="ginseng_cell_type")``. When
    :func:`ginseng.tl.classify` ran with ``unassigned_threshold``, the threshold is drawn
    as a dashed line: cells below it were called ``"Unassigned"``.

    Parameters
    ----------
    adata
        Annotated data classified by :func:`ginseng.tl.classify`.
    key_added
        The ``key_added`` given to :func:`ginseng.tl.classify`: reads
        ``obs[f"{key_added}_cell_type"]``, ``obs[f"{key_added}_confidence"]`` and
        ``uns[key_added]["classify"]``.
    groupby
        ``obs`` column to group cells by instead of the predicted label (e.g. the true
        labels or clusters).
    ax
        Axes to draw into; a new figure when None.
    show
        Call ``matplotlib.pyplot.show()``. None shows only a figure this function created,
        following ``scanpy.settings.autoshow`` when scanpy is loaded.
    save
        Write the figure to this path (format from its extension, e.g. ``.png``, ``.pdf``).

    Returns
    -------
    The :class:`matplotlib.axes.Axes`; group ``i`` is drawn at ``x = i`` in the order of
    the tick labels. ``adata`` is not modified.

    Examples
    --------
    ``query`` holds raw counts, annotated with ``state``, a model trained with
    :func:`ginseng.tl.train`:

    >>> import ginseng as gs
    >>> gs.tl.classify(query, state, layer="counts", unassigned_threshold=0.5)
    >>> ax = gs.pl.confidence(query)
    >>> ax.get_ylabel()
    'calibrated confidence'

    Grouped by known labels or clusters instead of the predicted label:

    >>> ax = gs.pl.confidence(query, groupby="bulk_labels", show=False)
    >>> len(ax.get_xticklabels())  # one violin per label
    10
    """
    check_adata(adata, "confidence")
    keys = ResultKeys.from_prefix(key_added)
    label_key, conf_key = keys.cell_type, keys.confidence
    hint = f" (run ginseng.tl.classify with key_added={key_added!r} first?)"
    obs_column(adata, label_key, hint)
    values = np.asarray(obs_column(adata, conf_key, hint), dtype=np.float64)
    group_key = label_key if groupby is None else groupby
    groups = obs_column(adata, group_key)
    order = observed_order(groups)
    if not order:
        raise InputError(f"adata.obs[{group_key!r}] has no non-missing value to group by.")
    names = groups.astype(str).to_numpy()
    keep = groups.notna().to_numpy() & np.isfinite(values)
    data = [values[keep & (names == g)] for g in order]

    ticks = [f"{g} (n={len(d)})" for g, d in zip(order, data, strict=True)]
    # Rotated tick labels take height from the plot: grow the figure with them.
    height = min(3.0 + 0.06 * max(map(len, ticks)), 9.0)
    fig, ax, created = new_axes(ax, (min(max(4.0, 0.6 * len(order) + 2.0), 24), height))
    colors = colors_from_uns(adata, group_key, order)
    if groupby is None and UNASSIGNED in order:
        colors[order.index(UNASSIGNED)] = "lightgray"
    positions = np.arange(len(order))
    drawn = [i for i, d in enumerate(data) if len(d) > 1 and np.ptp(d) > 0]
    if drawn:
        parts = ax.violinplot(
            [data[i] for i in drawn], positions[drawn], widths=0.8, showextrema=False
        )
        for body, i in zip(parts["bodies"], drawn, strict=True):
            body.set_facecolor(colors[i])
            body.set_edgecolor("0.2")
            body.set_linewidth(0.6)
            body.set_alpha(0.85)
    quartiles = [np.percentile(d, [25, 50, 75]) if len(d) else [np.nan] * 3 for d in data]
    q1, median, q3 = np.asarray(quartiles).T
    ax.vlines(positions, q1, q3, color="0.15", linewidth=4, zorder=3)
    ax.scatter(positions, median, color="white", edgecolor="0.15", s=18, zorder=4)

    threshold = unassigned_threshold(adata, key_added)
    if threshold is not None:
        ax.axhline(
            threshold, color="tab:red", linestyle="--", linewidth=1,
            label=f"Unassigned below {threshold:g}",
        )  # fmt: skip
        ax.legend(loc="best", fontsize="small", framealpha=0.8)
    ax.set_xticks(positions, ticks, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(0, 1.03)
    ax.set_ylabel("calibrated confidence")
    ax.set_xlabel("predicted label" if groupby is None else groupby)
    ax.set_title(f"Confidence per {'predicted label' if groupby is None else groupby}")
    ax.grid(False)  # scanpy's set_figure_params turns grids on; only the y grid helps here
    ax.grid(axis="y", alpha=0.3)
    finish(fig, created=created, show=show, save=save)
    return ax


# (panel, history key, label, colour, line style); macro-F1 is dashed so that it stays
# visible where it equals the accuracy.
_CURVES = (
    (0, "train_loss", "train loss", "tab:blue", "-"),
    (0, "holdout_loss", "holdout loss", "tab:orange", "-"),
    (1, "holdout_accuracy", "holdout accuracy", "tab:green", "-"),
    (1, "holdout_macro_f1", "holdout macro-F1", "tab:purple", "--"),
)


def history(
    model: Any,
    *,
    ax=None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
):
    """Plot training curves: losses, holdout accuracy and macro-F1 per epoch.

    The left panel shows the training loss (mean over the epoch's mini-batches) and the
    holdout loss (negative log-likelihood); the right panel shows holdout accuracy and
    macro-F1. The epoch whose weights were kept (lowest holdout loss) is marked with a
    dotted line on both panels.

    Parameters
    ----------
    model
        A :class:`~ginseng.model.GinsengModelState` or the path of a model file.
    ax
        Where to draw: None makes a new figure with two panels; a sequence of two Axes
        takes the losses and the metrics; a single Axes gets the losses on its left
        y-axis and the metrics on a twin right y-axis.
    show
        Call ``matplotlib.pyplot.show()``. None shows only a figure this function created,
        following ``scanpy.settings.autoshow`` when scanpy is loaded.
    save
        Write the figure to this path (format from its extension, e.g. ``.png``, ``.pdf``).

    Returns
    -------
    A list of two :class:`matplotlib.axes.Axes`, ``[losses, metrics]`` (with a single
    ``ax``, the second is its twin). Each curve is a ``Line2D`` labelled ``"train loss"``,
    ``"holdout loss"``, ``"holdout accuracy"`` or ``"holdout macro-F1"``.

    Examples
    --------
    ``state`` is a model trained with :func:`ginseng.tl.train` (two epochs here):

    >>> import ginseng as gs
    >>> loss_ax, metric_ax = gs.pl.history(state)
    >>> [line.get_label() for line in loss_ax.get_lines()][:2]
    ['train loss', 'holdout loss']

    From a model file, saved as an image:

    >>> model_path = gs.data.io.save_model(state, tmp / "model.h5")
    >>> axes = gs.pl.history(model_path, show=False, save=tmp / "history.png")
    """
    state = resolve_model(model)
    record = state.history or {}
    missing = [k for k in ("epoch", *(c[1] for c in _CURVES)) if k not in record]
    if missing:
        raise InputError(
            f"The model has no training history to plot (missing {', '.join(missing)})."
        )
    epochs = np.asarray(record["epoch"], dtype=np.float64)
    if len(epochs) == 0:
        raise InputError("The model's training history is empty (trained for 0 epochs?).")
    axes, fig, created, twin = _history_axes(ax)
    marker = "o" if len(epochs) <= 30 else None
    for panel, key, label, color, style in _CURVES:
        y = np.asarray(record[key], dtype=np.float64)
        axes[panel].plot(epochs, y, style, marker=marker, markersize=3, label=label, color=color)
    best = state.metrics.get("best_epoch")
    if best:
        for a in axes[:1] if twin else axes:
            a.axvline(best, color="0.4", linestyle=":", label=f"best epoch ({int(best)})")
    scores = np.asarray([record[c[1]] for c in _CURVES if c[0] == 1], dtype=np.float64)
    # Scores live in [0, 1]; a fixed top keeps a flat 1.0 from being drawn mid-axis.
    low = np.nanmin(scores) if np.isfinite(scores).any() else 0.0
    bottom = max(0.0, np.floor((low - 0.05) * 10) / 10)
    axes[1].set_ylim(bottom, 1 + 0.03 * (1 - bottom))
    (_style_twin if twin else _style_panels)(axes)
    finish(fig, created=created, show=show, save=save)
    return axes


def _history_axes(ax) -> tuple[list, Any, bool, bool]:
    """Return ``(axes, figure, created, twin)`` for the ``ax=`` of :func:`history`."""
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    if ax is None:
        fig, pair = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
        return list(pair), fig, True, False
    if isinstance(ax, Axes):
        return [ax, ax.twinx()], ax.figure, False, True
    if (
        isinstance(ax, Sequence | np.ndarray)
        and len(ax) == 2
        and all(isinstance(a, Axes) for a in ax)
    ):
        return list(ax), ax[0].figure, False, False
    raise InputError(f"ax= takes one Axes or a sequence of two Axes, got {ax!r}.")


def _style_panels(axes) -> None:
    from matplotlib.ticker import MaxNLocator

    loss, metric = axes
    loss.set_title("Loss")
    loss.set_ylabel("cross-entropy")
    metric.set_title("Holdout metrics")
    metric.set_ylabel("score")
    for a in axes:
        a.set_xlabel("epoch")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
        a.legend(loc="best", fontsize="small", framealpha=0.8)


def _style_twin(axes) -> None:
    from matplotlib.ticker import MaxNLocator

    loss, metric = axes
    loss.set_xlabel("epoch")
    loss.set_ylabel("cross-entropy")
    metric.set_ylabel("holdout score")
    loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    # One legend for both y-axes, above the plot where it hides no curve.
    handles = [h for a in axes for h in a.get_legend_handles_labels()[0]]
    loss.legend(
        handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3,
        fontsize="small", frameon=False,
    )  # fmt: skip
