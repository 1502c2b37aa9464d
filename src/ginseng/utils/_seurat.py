"""The ``"seurat"`` flavor of :func:`ginseng.pp.select_hvgs`.

Ranks genes by their dispersion (on counts normalised to 10,000 per cell and
log1p-transformed on the fly) normalised within bins of mean expression, as scanpy
does, per batch with ``batch_key`` and with scanpy's order of ties.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .._errors import InputError
from .._logging import logger
from ._hvg_stats import ChunkReader, mean_var

_N_BINS = 20


def _dispersions(mean: np.ndarray, var: np.ndarray) -> pd.DataFrame:
    """Scanpy's seurat dispersions, normalised within ``_N_BINS`` bins of mean."""
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = var / mean
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
    table = pd.DataFrame({"means": np.log1p(mean), "dispersions": dispersion})
    bins = pd.cut(table["means"], bins=_N_BINS)
    stats = table.groupby(bins, observed=True)["dispersions"].agg(avg="mean", dev="std")
    # A gene alone in its bin has no spread: scanpy sets its normalised dispersion to 1.
    alone = stats["dev"].isna()
    stats.loc[alone, "dev"] = stats.loc[alone, "avg"]
    stats.loc[alone, "avg"] = 0
    stats = stats.reindex(bins.cat.categories)
    codes = bins.cat.codes.to_numpy()
    avg, dev = stats["avg"].to_numpy()[codes], stats["dev"].to_numpy()[codes]
    table["dispersions_norm"] = (table["dispersions"].to_numpy() - avg) / dev
    return table


def _top_by_dispersion(dispersions_norm: np.ndarray, n_top: int) -> np.ndarray:
    """Mask of genes at or above the ``n_top``-th highest normalised dispersion."""
    finite = dispersions_norm[~np.isnan(dispersions_norm)]
    if finite.size == 0:
        raise InputError("No gene has a finite normalised dispersion (all variances are zero).")
    if n_top > finite.size:
        logger.warning(
            "n_top_genes=%d > %d genes with a normalised dispersion; selecting those.",
            n_top,
            finite.size,
        )
        n_top = finite.size
    cutoff = np.sort(finite)[::-1][n_top - 1]
    return np.nan_to_num(dispersions_norm, nan=-np.inf) >= cutoff


def seurat(
    reader: ChunkReader, n_top: int, names: pd.Index
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Seurat dispersions, the selected genes in order and per-gene batch counts.

    Returns the table of ``means``, ``dispersions``, ``dispersions_norm`` (log scale,
    as scanpy), the indices of the selected genes in selection order, and the number
    of batches in which each gene is selected.
    """
    total, total_sq = reader.sums(normalise=True)
    if reader.n_batches == 1:
        mean, var = mean_var(total[0], total_sq[0], int(reader.n_cells[0]))
        table = _dispersions(mean, var)
        scores = np.nan_to_num(table["dispersions_norm"].to_numpy(), nan=-np.inf)
        order = np.argsort(-scores, kind="stable")
        n_selected = int(_top_by_dispersion(table["dispersions_norm"].to_numpy(), n_top).sum())
        return table, order[:n_selected], np.zeros(reader.n_genes, dtype=int)

    # As scanpy: each batch only ranks the genes it expresses; the others count as 0.
    columns = ["means", "dispersions", "dispersions_norm"]
    per_batch = np.zeros((reader.n_batches, len(columns), reader.n_genes))
    nbatches = np.zeros(reader.n_genes, dtype=int)
    for b, n in enumerate(reader.n_cells):
        expressed = total[b] > 0
        mean, var = mean_var(total[b, expressed], total_sq[b, expressed], int(n))
        table = _dispersions(mean, var)
        per_batch[b][:, expressed] = table[columns].to_numpy().T
        nbatches[expressed] += _top_by_dispersion(table["dispersions_norm"].to_numpy(), n_top)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # genes NaN in every batch
        table = pd.DataFrame(dict(zip(columns, np.nanmean(per_batch, axis=0), strict=True)))
    # scanpy groups by gene name, which sorts the genes by name before the (stable)
    # sort on batch count and dispersion: keep that tie order.
    by_name = np.argsort(np.asarray(names, dtype=object), kind="stable")
    keys = pd.DataFrame({"nbatches": nbatches, "dispersions_norm": table["dispersions_norm"]})
    order = (
        keys.iloc[by_name]
        .sort_values(["nbatches", "dispersions_norm"], ascending=False, na_position="last")
        .index.to_numpy()
    )
    return table, order[:n_top], nbatches
