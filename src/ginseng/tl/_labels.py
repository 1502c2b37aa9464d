"""Label post-processing of ``classify``: Unassigned, majority voting, stable colours."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import InputError
from .._keys import HETEROGENEOUS, NOVEL, UNASSIGNED
from .._validate import fraction

# Reserved labels get fixed greys, so they never take a cell type's colour.
_RESERVED_COLORS = {UNASSIGNED: "#d3d3d3", HETEROGENEOUS: "#808080", NOVEL: "#000000"}


def _palette(n: int) -> list[str]:
    """``n`` distinct hex colours from matplotlib's categorical colour maps.

    tab20's saturated half first (that is tab10, scanpy's first colours), then its light
    half, then tab20b and tab20c, greys left out; beyond that, evenly spaced along ``turbo``.
    matplotlib is imported rather than scanpy, which costs ~2 s in a fresh process.
    """
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, to_hex

    def listed(name: str) -> list:
        cmap = colormaps[name]
        assert isinstance(cmap, ListedColormap)
        return np.asarray(cmap.colors).tolist()

    tab20 = listed("tab20")
    colors = [*tab20[0::2], *tab20[1::2], *listed("tab20b"), *listed("tab20c")]
    # Greys are reserved for Unassigned and Heterogeneous.
    colors = [c for c in colors if not (c[0] == c[1] == c[2])]
    if n > len(colors):
        colors = list(colormaps["turbo"](np.linspace(0.05, 0.95, n)))
    return [to_hex(c) for c in colors[:n]]


def model_label_colors(categories: list[str], model_labels: list[str]) -> list[str]:
    """One hex colour per category, fixed by the label's position in the model.

    scanpy picks colours by category position; tying them to the model's label order
    instead gives a cell type the same colour in every dataset annotated by the same
    model, whichever labels a dataset happens to contain.
    """
    palette = _palette(len(model_labels))
    index = {label: i for i, label in enumerate(model_labels)}
    return [_RESERVED_COLORS.get(c) or palette[index[c]] for c in categories]


def assign_labels(
    codes: np.ndarray,
    confidence: np.ndarray,
    labels: list[str],
    threshold: float | None,
    novel: np.ndarray | None = None,
) -> pd.Categorical:
    """Predicted labels as a categorical over the labels that occur.

    Categories keep the model's order, with ``"Unassigned"`` and then ``"Novel"`` last
    when a cell got them. ``novel`` (boolean per cell) marks cells labelled
    ``"Novel"``, whatever their confidence.
    Labels no cell received are left out: scanpy's grouping functions
    (``rank_genes_groups``, ``dotplot``, ``dendrogram``) expect every category to hold
    cells. Colours stay tied to the model position (:func:`model_label_colors`).
    """
    categories = list(labels)
    if threshold is not None:
        if UNASSIGNED in categories:
            raise InputError(
                f"The model has a label named {UNASSIGNED!r}, so unassigned_threshold "
                "cannot mark low-confidence cells; leave it None."
            )
        categories.append(UNASSIGNED)
        codes = np.where(confidence < threshold, len(labels), codes)
    if novel is not None:
        if NOVEL in labels:
            raise InputError(
                f"The model has a label named {NOVEL!r}, so novelty_threshold cannot mark "
                "novel cells; leave it None."
            )
        codes = np.where(np.asarray(novel, bool), len(categories), codes)
        categories.append(NOVEL)
    # remove_unused_categories() would sort the codes (np.unique: two int64 arrays per
    # cell, 250 MB of transient memory at 10M cells); counting them keeps it to the
    # int8 codes pandas stores anyway. Same categories, same order.
    used = np.bincount(np.asarray(codes).ravel(), minlength=len(categories)) > 0
    kept = [c for c, u in zip(categories, used, strict=True) if u]
    remap = np.cumsum(used) - 1
    small = remap.astype(np.min_scalar_type(-max(len(kept), 1)))[codes]
    return pd.Categorical.from_codes(small, categories=kept)


def majority_vote(
    predicted: pd.Categorical, clusters: pd.Series, *, min_prop: float = 0.0
) -> pd.Categorical:
    """The most frequent predicted label of each cluster, given to all its cells.

    Clusters whose most frequent label covers less than ``min_prop`` of their cells
    become ``"Heterogeneous"``; cells without a cluster (missing values) get a missing
    value. Ties go to the label that comes first in the model's order.
    """
    clusters = pd.Series(np.asarray(clusters, dtype=object), dtype="category")
    has_cluster = clusters.notna().to_numpy()
    table = pd.crosstab(
        clusters[has_cluster].to_numpy(), np.asarray(predicted)[has_cluster]
    ).reindex(columns=predicted.categories, fill_value=0)
    return votes_from_table(table, clusters, min_prop=min_prop)


def votes_from_table(
    table: pd.DataFrame, clusters: pd.Series, *, min_prop: float = 0.0
) -> pd.Categorical:
    """Majority votes from a cluster x label count table (:func:`majority_vote`'s tail).

    ``table`` is indexed by the clusters that hold cells, its columns are the predicted
    categories in order; ``clusters`` is the categorical cluster of each cell. Used by
    the dask path, which sums per-block tables instead of one crosstab.
    """
    predicted_categories = list(table.columns)
    fraction("min_prop", min_prop)
    if min_prop > 0 and HETEROGENEOUS in predicted_categories:
        raise InputError(
            f"The model has a label named {HETEROGENEOUS!r}, so min_prop cannot mark mixed "
            "clusters; use min_prop=0."
        )
    top = table.to_numpy().argmax(axis=1)
    share = table.to_numpy().max(axis=1) / np.maximum(table.to_numpy().sum(axis=1), 1)
    winners = np.asarray(predicted_categories, dtype=object)[top]
    winners = np.where(share < min_prop, HETEROGENEOUS, winners)
    per_cluster = pd.Series(winners, index=table.index)
    votes = clusters.map(per_cluster).astype(object).to_numpy()
    categories = [c for c in predicted_categories if c in set(winners)]
    if HETEROGENEOUS in set(winners):
        categories.append(HETEROGENEOUS)
    return pd.Categorical(votes, categories=categories)
