"""Highly variable genes from raw counts, computed chunk by chunk.

The statistics are per-gene sums over cells, so they are accumulated over row chunks
(in float64) and memory stays bounded by ``chunk_size`` rows whether the AnnData is in
memory or backed. The per-batch arithmetic mirrors scanpy's ``highly_variable_genes``
step by step (including squares taken in float32 for float32 data and the order of
ties) so that the selection is the one scanpy makes on the same counts.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._errors import InputError
from .._keys import UNS_KEY, VAR_GENES, VAR_HVG_RANK
from .._logging import logger, progress, timed
from .._settings import settings
from ..data._matrix import check_counts, get_matrix, iter_row_chunks, matrix_name

_FLAVORS = ("seurat_v3", "seurat")
_N_BINS = 20
_TARGET_SUM = 1e4
# Stored values handled at once inside a chunk (bounds the float64 temporaries).
_SLICE_NNZ = 1 << 21


def select_hvgs(
    adata: AnnData,
    n_top_genes: int = 2000,
    *,
    layer: str | None = None,
    flavor: Literal["seurat_v3", "seurat"] = "seurat_v3",
    batch_key: str | None = None,
    span: float = 0.3,
    chunk_size: int | None = None,
    key_added: str = VAR_GENES,
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Select highly variable genes from raw counts without loading the matrix.

    The counts are read ``chunk_size`` cells at a time, so this works on backed AnnData
    (``anndata.read_h5ad(path, backed="r")``) of any number of cells. The selection is
    the one :func:`scanpy.pp.highly_variable_genes` makes on the same counts:

    - ``"seurat_v3"`` (default): variance of counts standardised by a loess fit of
      log variance on log mean (``degree=2``), with values clipped at
      ``mean + sqrt(n_cells) * std``. With ``batch_key``, genes are ranked within each
      batch and ordered by median rank, ties broken by the number of batches in which
      they are among the top ``n_top_genes``.
    - ``"seurat"``: each cell is normalised to 10,000 counts and log1p-transformed on the
      fly (the input is not modified); genes are ranked by dispersion normalised within
      20 bins of mean expression. With ``batch_key``, genes are ordered by the number of
      batches in which they are selected, then by mean normalised dispersion. Without
      ``batch_key``, genes tied with the last one at the cut-off are all selected, as
      in scanpy, so slightly more than ``n_top_genes`` genes can be selected.

    Parameters
    ----------
    adata
        Annotated data with raw counts, in memory (dense, CSR or CSC) or backed.
    n_top_genes
        Number of genes to select, between 1 and ``adata.n_vars``.
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.
    flavor
        ``"seurat_v3"`` or ``"seurat"`` (see above).
    batch_key
        Column of ``adata.obs`` with batches in which genes are ranked separately.
    span
        Fraction of genes used for each local loess fit (``"seurat_v3"`` only).
    chunk_size
        Cells read at once; defaults to ``ginseng.settings.chunk_size``. Does not change
        the result.
    key_added
        Name of the boolean ``adata.var`` column. The rank column is
        ``"ginseng_hvg_rank"`` for the default key and ``f"{key_added}_hvg_rank"``
        otherwise.
    inplace
        Write the result into ``adata``; otherwise return it as a table and leave
        ``adata`` untouched.

    Returns
    -------
    ``None`` if ``inplace``, after writing:

    ``adata.var[key_added]`` : bool
        Whether the gene is selected.
    ``adata.var["ginseng_hvg_rank"]`` : float
        Position of a selected gene in the selection order (0 is the most variable);
        NaN for genes not selected.
    ``adata.uns["ginseng"]["select_hvgs"]["params"]`` : dict
        The parameters of the call (``layer`` and ``batch_key`` only when given).

    Otherwise a :class:`~pandas.DataFrame` indexed by gene with columns ``means``,
    ``variances`` and ``variances_norm`` (``"seurat_v3"``) or ``means``,
    ``dispersions`` and ``dispersions_norm`` (``"seurat"``, on the log scale as in
    scanpy), ``rank``, ``selected`` and, with ``batch_key``, ``nbatches``.

    Examples
    --------
    ``adata`` holds raw counts (:func:`ginseng.datasets.pbmc68k_counts`), also in
    ``layers["counts"]`` as after the usual scanpy preprocessing:

    >>> import ginseng as gs
    >>> gs.pp.select_hvgs(adata, n_top_genes=200, layer="counts")
    >>> int(adata.var["ginseng_genes"].sum())
    200
    >>> adata.var["ginseng_hvg_rank"].nsmallest(3).index.tolist()
    ['MZB1', 'IGJ', 'IGLL5']
    >>> adata.uns["ginseng"]["select_hvgs"]["params"]["n_top_genes"]
    200

    Genes ranked within batches, on a file read out of core:

    >>> import anndata as ad
    >>> adata.write_h5ad(tmp / "counts.h5ad")
    >>> backed = ad.read_h5ad(tmp / "counts.h5ad", backed="r")
    >>> gs.pp.select_hvgs(backed, n_top_genes=200, batch_key="phase")
    >>> int(backed.var["ginseng_genes"].sum())
    200

    The statistics as a table, leaving ``adata`` untouched:

    >>> table = gs.pp.select_hvgs(adata, n_top_genes=200, inplace=False)
    >>> table.columns.tolist()
    ['means', 'variances', 'variances_norm', 'rank', 'selected']
    """
    if not isinstance(adata, AnnData):
        raise InputError(f"select_hvgs expects an AnnData, got {type(adata).__name__}.")
    if flavor not in _FLAVORS:
        raise InputError(f"Unknown flavor {flavor!r}; choose one of {', '.join(_FLAVORS)}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"adata is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    if isinstance(n_top_genes, bool) or not isinstance(n_top_genes, int | np.integer):
        raise InputError(f"n_top_genes must be an integer, got {n_top_genes!r}.")
    if not 1 <= n_top_genes <= adata.n_vars:
        raise InputError(
            f"n_top_genes={n_top_genes} must be between 1 and the number of genes ({adata.n_vars})."
        )
    n_top_genes = int(n_top_genes)
    if flavor == "seurat_v3" and not span > 0:
        raise InputError(f"span must be positive, got {span!r}.")
    chunk_size = settings.chunk_size if chunk_size is None else chunk_size
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise InputError(f"key_added must be a non-empty string, got {key_added!r}.")
    codes, batches = _batch_codes(adata, batch_key)
    matrix = get_matrix(adata, layer)
    where = matrix_name(layer)

    with timed(f"selecting {n_top_genes} highly variable genes ({flavor}) from {where}"):
        reader = _ChunkReader(matrix, chunk_size, codes, len(batches), where)
        if flavor == "seurat_v3":
            table = _seurat_v3(reader, n_top_genes, span, batches)
        else:
            table = _seurat(reader, n_top_genes, adata.var_names)
    table.index = adata.var_names.copy()
    if batch_key is None:
        table = table.drop(columns="nbatches")
    logger.info("    %d genes selected", int(table["selected"].sum()))
    if not inplace:
        return table

    rank_key = VAR_HVG_RANK if key_added == VAR_GENES else f"{key_added}_hvg_rank"
    adata.var[key_added] = table["selected"].to_numpy()
    adata.var[rank_key] = table["rank"].to_numpy()
    params: dict[str, Any] = {
        "n_top_genes": n_top_genes,
        "flavor": flavor,
        "span": float(span),
        "chunk_size": chunk_size,
        "key_added": key_added,
    }
    if layer is not None:
        params["layer"] = layer
    if batch_key is not None:
        params["batch_key"] = batch_key
    adata.uns.setdefault(UNS_KEY, {})["select_hvgs"] = {"params": params}
    return None


def _batch_codes(adata: AnnData, batch_key: str | None) -> tuple[np.ndarray, pd.Index]:
    if batch_key is None:
        return np.zeros(adata.n_obs, dtype=np.intp), pd.Index(["all"])
    if batch_key not in adata.obs.columns:
        raise InputError(f"batch_key {batch_key!r} not found in adata.obs.")
    values = adata.obs[batch_key]
    if (n_missing := int(values.isna().sum())) > 0:
        raise InputError(f"adata.obs[{batch_key!r}] has {n_missing} missing value(s).")
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.intp), pd.Index(uniques)


def _squares(data: np.ndarray) -> np.ndarray:
    # scanpy squares float32 data in float32 before accumulating in float64; doing the
    # same keeps the variances, hence near-ties in the ranking, identical.
    if data.dtype == np.float32:
        return (data * data).astype(np.float64)
    data = data.astype(np.float64)
    return data * data


def _cell_scale(chunk: sp.csr_matrix) -> np.ndarray:
    """Per-cell divisor of ``normalize_total(target_sum=1e4)``, in scanpy's precision."""
    dtype = np.float64 if chunk.dtype == np.float64 else np.float32
    totals: np.ndarray = np.asarray(chunk.sum(axis=1, dtype=np.float64)).ravel().astype(dtype)
    scale = totals / _TARGET_SUM
    return scale + (scale == 0)


def _log_roundtrip(data: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``expm1(log1p(data / scale))`` as scanpy's seurat flavor sees normalised counts."""
    data = data.astype(scale.dtype) / scale
    np.log1p(data, out=data)
    np.expm1(data, out=data)
    return data


class _ChunkReader:
    """Per-batch, per-gene sums over the row chunks of a matrix."""

    def __init__(self, matrix: Any, chunk_size: int, codes: np.ndarray, n_batches: int, where: str):
        self.matrix = matrix
        self.chunk_size = chunk_size
        self.codes = codes
        self.n_batches = n_batches
        self.where = where
        self.n_genes = int(matrix.shape[1])
        self.n_cells = np.bincount(codes, minlength=n_batches)
        self.checked = False

    def sums(
        self, *, normalise: bool = False, clip: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return per-batch sums and sums of squares, shape ``(n_batches, n_genes)``.

        ``normalise`` sums normalised counts as the seurat flavor sees them; ``clip``
        (``(n_batches, n_genes)``) caps each value before summing.
        """
        size = self.n_batches * self.n_genes
        total, total_sq = np.zeros(size), np.zeros(size)
        non_integer = False
        n_chunks = math.ceil(self.matrix.shape[0] / self.chunk_size)
        chunks = iter_row_chunks(self.matrix, self.chunk_size)
        for rows, chunk in progress(chunks, total=n_chunks, desc="hvg", unit="chunk"):
            if not self.checked:
                check_counts(chunk, where=self.where)
            scale = _cell_scale(chunk) if normalise else None
            row_offset = self.codes[rows] * self.n_genes
            indptr = chunk.indptr
            # The float64 temporaries below take 8 bytes per stored value: walk the
            # chunk in slices of rows so they stay small whatever chunk_size is.
            step = max(1, chunk.shape[0] * _SLICE_NNZ // max(chunk.nnz, 1))
            for r0 in range(0, chunk.shape[0], step):
                r1 = min(r0 + step, chunk.shape[0])
                data = chunk.data[indptr[r0] : indptr[r1]]
                lengths = np.diff(indptr[r0 : r1 + 1])
                if not self.checked and not non_integer:
                    non_integer = bool(np.any(data != np.round(data)))
                if scale is not None:
                    data = _log_roundtrip(data, np.repeat(scale[r0:r1], lengths))
                key = chunk.indices[indptr[r0] : indptr[r1]].astype(np.intp)
                if self.n_batches > 1:
                    key += np.repeat(row_offset[r0:r1], lengths)
                if clip is None:
                    values, squares = data.astype(np.float64), _squares(data)
                else:
                    values = np.minimum(data.astype(np.float64), clip.ravel()[key])
                    squares = values * values
                total += np.bincount(key, weights=values, minlength=size)
                total_sq += np.bincount(key, weights=squares, minlength=size)
        if not self.checked and non_integer:
            warnings.warn(
                f"{self.where} contains non-integer values; select_hvgs expects raw counts.",
                UserWarning,
                stacklevel=4,
            )
        self.checked = True
        shape = (self.n_batches, self.n_genes)
        return total.reshape(shape), total_sq.reshape(shape)


def _mean_var(total: np.ndarray, total_sq: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    # Same formula and unbiased correction as scanpy's _get_mean_var.
    mean = total / n
    var = total_sq / n - mean**2
    if n != 1:
        var *= n / (n - 1)
    return mean, var


def _seurat_v3(reader: _ChunkReader, n_top: int, span: float, batches: pd.Index) -> pd.DataFrame:
    try:
        from skmisc.loess import loess
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("flavor='seurat_v3' needs scikit-misc: pip install scikit-misc") from e

    total, total_sq = reader.sums()
    means, variances = _mean_var(total.sum(0), total_sq.sum(0), int(reader.n_cells.sum()))
    batch_means, reg_std = np.empty_like(total), np.empty_like(total)
    for b, n in enumerate(reader.n_cells):
        mean, var = _mean_var(total[b], total_sq[b], int(n))
        not_const = var > 0
        fitted = np.zeros(reader.n_genes)
        n_fit = int(not_const.sum())
        failure = f"cannot fit variance on mean in batch {batches[b]!r} ({n} cells, {n_fit} genes with non-zero variance, span={span})"
        # skmisc crashes (rather than raising) when a local fit would get no point.
        if math.floor(span * n_fit) < 3:
            raise InputError(f"{failure}: too few genes vary.")
        try:
            model = loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=span, degree=2)
            model.fit()
        except (ValueError, ArithmeticError) as e:
            raise InputError(f"{failure}: {e}") from e
        fitted[not_const] = model.outputs.fitted_values
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
    return _finish(table, order[:n_top], nbatches)


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


def _seurat(reader: _ChunkReader, n_top: int, names: pd.Index) -> pd.DataFrame:
    total, total_sq = reader.sums(normalise=True)
    if reader.n_batches == 1:
        mean, var = _mean_var(total[0], total_sq[0], int(reader.n_cells[0]))
        table = _dispersions(mean, var)
        scores = np.nan_to_num(table["dispersions_norm"].to_numpy(), nan=-np.inf)
        order = np.argsort(-scores, kind="stable")
        n_selected = int(_top_by_dispersion(table["dispersions_norm"].to_numpy(), n_top).sum())
        return _finish(table, order[:n_selected], np.zeros(reader.n_genes, dtype=int))

    # As scanpy: each batch only ranks the genes it expresses; the others count as 0.
    columns = ["means", "dispersions", "dispersions_norm"]
    per_batch = np.zeros((reader.n_batches, len(columns), reader.n_genes))
    nbatches = np.zeros(reader.n_genes, dtype=int)
    for b, n in enumerate(reader.n_cells):
        expressed = total[b] > 0
        mean, var = _mean_var(total[b, expressed], total_sq[b, expressed], int(n))
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
    return _finish(table, order[:n_top], nbatches)


def _finish(table: pd.DataFrame, selected: np.ndarray, nbatches: np.ndarray) -> pd.DataFrame:
    """Add ``rank`` (position in ``selected``, NaN elsewhere), ``selected`` and ``nbatches``."""
    rank = np.full(len(table), np.nan)
    rank[selected] = np.arange(len(selected), dtype=np.float64)
    table["rank"] = rank
    table["selected"] = ~np.isnan(rank)
    table["nbatches"] = nbatches
    return table
