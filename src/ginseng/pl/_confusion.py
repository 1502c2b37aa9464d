"""Confusion matrix heatmap of predictions against known labels."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .._errors import InputError
from .._keys import DEFAULT_KEYS, ResultKeys
from .._logging import logger
from ._utils import (
    check_adata,
    finish,
    is_model,
    new_axes,
    obs_column,
    observed_order,
    resolve_model,
)

NORMALIZE = {
    "true": ("rows sum to 1 (recall)", "fraction of true label"),
    "pred": ("columns sum to 1 (precision)", "fraction of predicted label"),
    "all": ("fraction of all cells", "fraction of cells"),
    None: ("cell counts", "cells"),
}
# Larger matrices get no numbers in the cells: they would not fit.
_ANNOTATE_MAX = 20


def confusion_table(
    true: pd.Series,
    pred: pd.Series,
    *,
    normalize: str | None = "true",
    possible: list[str] | None = None,
) -> pd.DataFrame:
    """Confusion matrix of two label columns as a DataFrame (rows true, columns predicted).

    Labels found on both sides come first, in the order of ``true``, so that they line
    up on the diagonal: rows are the true labels present, columns the labels predicted
    for at least one cell plus any true label the predictor could output (a category of
    ``pred``, or one of ``possible``: the labels of the model that made ``pred``, which
    classify records because its categories hold only the labels some cell received).
    True labels the predictor cannot output come last among the rows, and predicted
    labels unknown to the truth (e.g. ``"Unassigned"``) last among the columns. Cells
    missing either label are left out.
    """
    _check_normalize(normalize)
    valid = true.notna().to_numpy() & pred.notna().to_numpy()
    if not valid.any():
        raise InputError("No cell has both a true and a predicted label.")
    if not valid.all():
        logger.warning("confusion: %d cell(s) without a label left out", int((~valid).sum()))
    true, pred = true[valid], pred[valid]
    rows = observed_order(true)
    predicted = observed_order(pred)
    can_output = set(predicted) | {str(c) for c in possible or ()}
    if isinstance(pred.dtype, pd.CategoricalDtype):
        can_output |= {str(c) for c in pred.cat.categories}
    shared = [r for r in rows if r in can_output]
    rows = shared + [r for r in rows if r not in can_output]
    cols = shared + [p for p in predicted if p not in set(rows)]
    counts = np.zeros((len(rows), len(cols)), np.int64)
    r = pd.Index(rows).get_indexer(true.astype(str).to_numpy())
    c = pd.Index(cols).get_indexer(pred.astype(str).to_numpy())
    np.add.at(counts, (r, c), 1)
    return pd.DataFrame(_normalized(counts, normalize), index=rows, columns=cols)


def _check_normalize(normalize: Any) -> None:
    if normalize not in NORMALIZE:
        raise InputError(f"normalize={normalize!r} is not one of 'true', 'pred', 'all' or None.")


def _normalized(counts: np.ndarray, normalize: str | None) -> np.ndarray:
    counts = np.asarray(counts, np.int64)
    if normalize is None:
        return counts
    total = {
        "true": counts.sum(axis=1, keepdims=True),
        "pred": counts.sum(axis=0, keepdims=True),
        "all": counts.sum(),
    }[normalize]
    # A label with no cell on that axis gets zeros rather than NaN.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / np.maximum(total, 1), 0.0)


def confusion(
    adata: Any,
    true_key: str | None = None,
    pred_key: str = DEFAULT_KEYS.cell_type,
    *,
    normalize: str | None = "true",
    ax=None,
    show: bool | None = None,
    cmap: str = "Blues",
    annotate: bool | None = None,
    save: str | os.PathLike | None = None,
):
    """Plot a confusion matrix of predicted against true labels.

    Rows are true labels, columns predicted labels. Labels present on both sides line up
    on the diagonal; predicted labels the truth does not know (``"Unassigned"``,
    ``"Heterogeneous"`` or cell types absent from the query) get extra columns on the
    right, and true labels the model does not know get rows at the bottom; thin lines
    separate these from the square block of shared labels.

    Parameters
    ----------
    adata
        Annotated data with both label columns in ``obs``; or a
        :class:`~ginseng.model.GinsengModelState` (or the path of a model file) to plot
        its holdout confusion matrix, recorded at training.
    true_key
        ``obs`` column with the known labels. Required for an AnnData.
    pred_key
        ``obs`` column with the predictions, as written by :func:`ginseng.tl.classify`
        (``f"{key_added}_cell_type"`` or ``f"{key_added}_majority_vote"``).
    normalize
        ``"true"``: each row sums to 1 (the diagonal is the recall of each label);
        ``"pred"``: each column sums to 1 (precision); ``"all"``: the whole matrix sums to
        1; ``None``: cell counts.
    ax
        Axes to draw into; a new figure when None.
    show
        Call ``matplotlib.pyplot.show()``. None shows only a figure this function created,
        following ``scanpy.settings.autoshow`` when scanpy is loaded.
    cmap
        Matplotlib colour map of the heatmap.
    annotate
        Write the value in each cell. None does so when neither side has more than 20
        labels.
    save
        Write the figure to this path (format from its extension, e.g. ``.png``, ``.pdf``).

    Returns
    -------
    The :class:`matplotlib.axes.Axes` with the heatmap; ``ax.images[0].get_array()`` holds
    the plotted (normalised) matrix. ``adata`` is not modified.

    Examples
    --------
    ``query`` holds raw counts with known labels in ``obs["bulk_labels"]``, annotated
    with ``state``, a model trained with :func:`ginseng.tl.train`:

    >>> import ginseng as gs
    >>> gs.tl.classify(query, state, layer="counts")
    >>> ax = gs.pl.confusion(query, "bulk_labels")
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('predicted (ginseng_cell_type)', 'true (bulk_labels)')

    Cell counts instead of fractions, drawn into axes of one's own figure:

    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> ax = gs.pl.confusion(query, "bulk_labels", normalize=None, ax=ax)
    >>> int(ax.images[0].get_array().sum())  # every cell of query
    350

    The holdout confusion matrix of a trained model (or of a model file), saved:

    >>> ax = gs.pl.confusion(state, show=False, save=tmp / "holdout.png")
    >>> (tmp / "holdout.png").exists()
    True
    """
    _check_normalize(normalize)
    if is_model(adata):
        if true_key is not None:
            raise InputError(
                f"true_key={true_key!r} applies to an AnnData; a model's holdout confusion "
                "matrix uses the labels recorded at training."
            )
        table, title, xlabel, ylabel = _model_table(resolve_model(adata), normalize)
    else:
        check_adata(adata, "confusion")
        if true_key is None:
            raise InputError(
                "true_key is required for an AnnData: the obs column with the known labels."
            )
        true = obs_column(adata, true_key)
        pred = obs_column(adata, pred_key, " (run ginseng.tl.classify first?)")
        table = confusion_table(
            true, pred, normalize=normalize, possible=_model_labels(adata, pred_key)
        )
        title = "Confusion matrix"
        xlabel, ylabel = f"predicted ({pred_key})", f"true ({true_key})"

    n_rows, n_cols = table.shape
    figsize = (min(max(4.5, 0.45 * n_cols + 3.5), 24), min(max(3.5, 0.45 * n_rows + 2.5), 24))
    fig, ax, created = new_axes(ax, figsize)
    values = table.to_numpy()
    vmax = 1.0 if normalize in ("true", "pred") else max(float(values.max()), 1e-12)
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=vmax, aspect="auto", interpolation="none")
    ax.grid(False)  # scanpy's set_figure_params turns grids on, which would cross the cells
    ax.set_xticks(range(n_cols), table.columns, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n_rows), table.index)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n{NORMALIZE[normalize][0]}", fontsize="medium")
    ax.tick_params(length=0)
    fig.colorbar(image, ax=ax, label=NORMALIZE[normalize][1], shrink=0.8)
    n_shared = len(set(table.index) & set(table.columns))
    if n_shared and n_cols > n_shared:
        ax.axvline(n_shared - 0.5, color="0.5", linewidth=0.8)
    if n_shared and n_rows > n_shared:
        ax.axhline(n_shared - 0.5, color="0.5", linewidth=0.8)
    if annotate is None:
        annotate = max(n_rows, n_cols) <= _ANNOTATE_MAX
    if annotate:
        _annotate(ax, values, vmax, integer=normalize is None)
    finish(fig, created=created, show=show, save=save)
    return ax


def _model_table(state, normalize: str | None) -> tuple[pd.DataFrame, str, str, str]:
    matrix = state.metrics.get("confusion")
    if matrix is None or len(matrix) == 0:
        raise InputError(
            "The model's metrics hold no holdout confusion matrix (trained without a "
            "holdout split?); pass an AnnData with true and predicted labels instead."
        )
    counts = np.asarray(matrix, np.int64)
    if counts.shape != (state.n_labels, state.n_labels):
        raise InputError(
            f"The model's confusion matrix has shape {counts.shape}, expected "
            f"{(state.n_labels, state.n_labels)} for its {state.n_labels} labels."
        )
    labels = [str(label) for label in state.labels]
    table = pd.DataFrame(_normalized(counts, normalize), index=labels, columns=labels)
    title = f"Holdout confusion matrix ({int(counts.sum())} cells)"
    return table, title, "predicted", "true"


def _annotate(ax, values: np.ndarray, vmax: float, *, integer: bool) -> None:
    size = "small" if max(values.shape) <= 10 else "x-small"
    for (i, j), value in np.ndenumerate(values):
        text = f"{int(value)}" if integer or value == 0 else f"{value:.2f}"
        color = "white" if value > 0.6 * vmax else "black"
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize=size)


def _model_labels(adata: Any, pred_key: str) -> list[str] | None:
    """The labels of the model behind ``pred_key``, when classify wrote that column."""
    for suffix in ("_cell_type", "_majority_vote"):
        if pred_key.endswith(suffix):
            keys = ResultKeys.from_prefix(pred_key.removesuffix(suffix))
            entry = adata.uns.get(keys.uns, {})
            record = entry.get("classify", {}) if isinstance(entry, Mapping) else {}
            labels = record.get("labels") if isinstance(record, Mapping) else None
            return [str(x) for x in labels] if labels is not None else None
    return None
