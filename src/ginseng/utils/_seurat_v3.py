"""The ``"seurat_v3"`` flavor of :func:`ginseng.pp.select_hvgs`.

Standardises each gene's variance by a loess trend of log variance on log mean (per
batch), clips counts as scanpy does and ranks genes by the standardised variance; when
skmisc's loess fit is singular, refits the trend on the distinct means (weighted by
their number of genes) with the same span, then with larger ones, and logs a warning.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._errors import InputError
from .._logging import logger
from ._hvg_stats import ChunkReader, mean_var

# Spans tried, after ``span`` itself, when the fit on distinct means fails too.
_RETRY_SPANS = (0.5, 0.75, 1.0)


def seurat_v3(
    reader: ChunkReader, n_top: int, span: float, batches: pd.Index
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Seurat v3 statistics, the selected genes in order and per-gene batch counts.

    Returns the table of ``means``, ``variances``, ``variances_norm`` (and
    ``median_rank`` with batches), the indices of the selected genes in selection
    order, and the number of batches in which each gene is among the top ``n_top``.
    """
    total, total_sq = reader.sums()
    means, variances = mean_var(total.sum(0), total_sq.sum(0), int(reader.n_cells.sum()))
    batch_means, reg_std = np.empty_like(total), np.empty_like(total)
    for b, n in enumerate(reader.n_cells):
        mean, var = mean_var(total[b], total_sq[b], int(n))
        not_const = var > 0
        fitted = np.zeros(reader.n_genes)
        where = f"batch {batches[b]!r} ({n} cells)" if len(batches) > 1 else f"{n} cells"
        fitted[not_const] = _variance_trend(
            np.log10(mean[not_const]), np.log10(var[not_const]), span, where
        )
        batch_means[b], reg_std[b] = mean, np.sqrt(10**fitted)
    clip = reg_std * np.sqrt(reader.n_cells)[:, None] + batch_means

    clipped, clipped_sq = reader.sums(clip=clip)
    n = reader.n_cells[:, None].astype(np.float64)
    norm_vars = (1 / ((n - 1) * np.square(reg_std))) * (
        (n * np.square(batch_means)) + clipped_sq - 2 * clipped * batch_means
    )
    # Rank within each batch (0 = most variable) with numpy's default sort, as scanpy,
    # so exact ties fall the same way.
    ranks = np.argsort(np.argsort(-norm_vars, axis=1), axis=1).astype(np.float32)
    nbatches = (ranks < n_top).sum(axis=0)
    ranks[ranks >= n_top] = np.nan
    median_rank = np.ma.median(np.ma.masked_invalid(ranks), axis=0).filled(np.nan)
    order = (
        pd.DataFrame({"median_rank": median_rank, "nbatches": nbatches})
        .sort_values(["median_rank", "nbatches"], ascending=[True, False], na_position="last")
        .index.to_numpy()
    )
    table = pd.DataFrame(
        {"means": means, "variances": variances, "variances_norm": norm_vars.mean(axis=0)}
    )
    if len(batches) > 1:
        table["median_rank"] = median_rank
    return table, order[:n_top], nbatches


def _loess(x: np.ndarray, y: np.ndarray, span: float, weights: np.ndarray | None) -> np.ndarray:
    """Fitted values of skmisc's loess (``degree=2``); raises ValueError when singular."""
    from skmisc.loess import loess

    # skmisc crashes (rather than raising) when a local fit would get too few points.
    if math.floor(span * x.size) < 3:
        raise ValueError(f"too few points ({x.size}) for span={span}")
    model = loess(x, y, span=span, degree=2, weights=weights)
    model.fit()
    return model.outputs.fitted_values


def _reason(error: Exception) -> str:
    """Return the message of a loess error (skmisc passes bytes)."""
    arg = error.args[0] if error.args else error
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


def _variance_trend(
    log_mean: np.ndarray, log_var: np.ndarray, span: float, where: str
) -> np.ndarray:
    """Loess fit of log variance on log mean, as scanpy; refit on distinct means if singular.

    A local quadratic fit is singular when its window holds fewer than three distinct
    means, which happens on real data when many genes share one mean (genes detected in
    one or two cells with the same counts, more so in small batches). The refit collapses
    the genes that share a mean into one point at their average log variance, weighted
    by their number, with the same ``span`` over the distinct means, then with larger
    spans (``_RETRY_SPANS``) if that fails too. Where no two genes share a mean the
    refit is the plain fit, so it only changes the trend where scanpy's cannot be fitted.
    """
    failure = (
        f"cannot fit variance on mean in {where}, {log_mean.size} genes with non-zero variance"
    )
    try:
        return _loess(log_mean, log_var, span, None)
    except (ValueError, ArithmeticError) as e:
        first_error = f"span={span}: {_reason(e)}"
    distinct, inverse, counts = np.unique(log_mean, return_inverse=True, return_counts=True)
    avg_log_var = np.bincount(inverse, weights=log_var) / counts
    n_tied = int(counts[counts > 1].sum())
    errors = [first_error]
    for retry_span in (span, *(s for s in _RETRY_SPANS if s > span)):
        try:
            fitted = _loess(distinct, avg_log_var, retry_span, counts.astype(np.float64))
        except (ValueError, ArithmeticError) as e:
            errors.append(f"distinct means, span={retry_span}: {_reason(e)}")
            continue
        logger.warning(
            "select_hvgs: the loess fit of variance on mean in %s is singular (%s): %d of "
            "%d genes share their mean with another gene, up to %d genes one mean. Refitted "
            "on the %d distinct means (each weighted by its number of genes) with span=%g.",
            where,
            first_error,
            n_tied,
            log_mean.size,
            int(counts.max()),
            distinct.size,
            retry_span,
        )
        return fitted[inverse]
    raise InputError(f"{failure}, {distinct.size} distinct means: " + "; ".join(errors))
