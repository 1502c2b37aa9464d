"""Highly variable genes from raw counts, computed chunk by chunk.

The per-gene sums come from :mod:`ginseng.utils._hvg_stats` (row chunks, bounded
memory); each flavor turns them into the selection scanpy's ``highly_variable_genes``
makes (including the order of ties): :mod:`ginseng.utils._seurat_v3` (with the refit
of the variance trend on the distinct means when skmisc's loess fit is singular, see
:func:`select_hvgs`) and :mod:`ginseng.utils._seurat`. This module checks the
arguments, runs the flavor and writes the selection into the AnnData.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import InputError
from .._keys import UNS_KEY, VAR_GENES, VAR_HVG_RANK
from .._logging import logger, timed
from .._settings import settings
from ..data import get_matrix, matrix_name
from ._hvg_stats import ChunkReader
from ._seurat import seurat
from ._seurat_v3 import seurat_v3

_FLAVORS = ("seurat_v3", "seurat")


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
    mask_var: str | np.ndarray | None = None,
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

      When the loess fit is singular (skmisc's ``svddc failed``, ``reciprocal condition
      number``, ``near singularities``; scanpy raises then), the cause is nearly always
      many genes sharing exactly one mean, typically genes detected in one or two cells
      with the same counts, more so within small batches: a local quadratic fit then sees
      fewer than three distinct means. The fit is then retried on the distinct means,
      each one point at the average log variance of its genes and weighted by their
      number, with the same ``span``, then with ``span`` 0.5, 0.75 and 1 if needed; every
      gene gets the trend at its mean. Where no two genes share a mean this is the plain
      fit. A warning on the ``"ginseng"`` logger names the batch, the number of tied
      genes and the span used. The selection then differs from scanpy's only in that
      scanpy has none.
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
        Fraction of genes used for each local loess fit (``"seurat_v3"`` only), in
        ``(0, 1]``.
    chunk_size
        Cells read at once; defaults to ``ginseng.settings.chunk_size``. Does not change
        the result.
    key_added
        Name of the boolean ``adata.var`` column. The rank column is
        ``"ginseng_hvg_rank"`` for the default key and ``f"{key_added}_hvg_rank"``
        otherwise.
    mask_var
        Choose among these genes only (a boolean mask over ``var_names`` or the name of a
        boolean ``var`` column): the selection is the one made on ``adata[:, mask_var]``
        (its trend fitted on those genes, cells normalised over them for ``"seurat"``),
        read chunk by chunk without building that view. Other genes are not selected and
        have NaN statistics. ``gs.tl.train(..., query_genes=...)`` uses it for the genes
        a query measures.
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
    columns = _mask_columns(adata, mask_var)
    n_candidates = adata.n_vars if columns is None else len(columns)
    if not 1 <= n_top_genes <= n_candidates:
        within = "" if columns is None else " in mask_var"
        raise InputError(
            f"n_top_genes={n_top_genes} must be between 1 and the number of genes{within} "
            f"({n_candidates})."
        )
    n_top_genes = int(n_top_genes)
    if flavor == "seurat_v3" and not 0 < span <= 1:
        raise InputError(f"span must be in (0, 1], got {span!r}.")
    chunk_size = settings.chunk_size if chunk_size is None else chunk_size
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise InputError(f"key_added must be a non-empty string, got {key_added!r}.")
    codes, batches = _batch_codes(adata, batch_key)
    matrix = get_matrix(adata, layer)
    where = matrix_name(layer)

    with timed(f"selecting {n_top_genes} highly variable genes ({flavor}) from {where}"):
        reader = ChunkReader(matrix, chunk_size, codes, len(batches), where, columns)
        names = adata.var_names if columns is None else adata.var_names[columns]
        if flavor == "seurat_v3":
            table = _finish(*seurat_v3(reader, n_top_genes, span, batches))
        else:
            table = _finish(*seurat(reader, n_top_genes, names))
    table.index = names.copy()
    if columns is not None:  # the other genes: not selected, no statistics
        table = table.reindex(adata.var_names)
        table["selected"] = table["selected"].eq(True).to_numpy(dtype=bool)
        if "nbatches" in table:
            table["nbatches"] = table["nbatches"].fillna(0).astype(int)
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
    if columns is not None:
        params["mask_var"] = mask_var if isinstance(mask_var, str) else len(columns)
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


def _mask_columns(adata: AnnData, mask_var: Any) -> np.ndarray | None:
    """Sorted column indices of ``mask_var`` (a var column name or a boolean mask)."""
    if mask_var is None:
        return None
    if isinstance(mask_var, str):
        if mask_var not in adata.var.columns:
            raise InputError(f"mask_var={mask_var!r} is not a column of adata.var.")
        mask = adata.var[mask_var].to_numpy()
    else:
        mask = np.asarray(mask_var)
    if mask.dtype != bool or mask.shape != (adata.n_vars,):
        raise InputError(
            f"mask_var must be a boolean mask with one entry per gene ({adata.n_vars}), got "
            f"dtype {mask.dtype} and shape {mask.shape}."
        )
    return np.flatnonzero(mask)


def _finish(table: pd.DataFrame, selected: np.ndarray, nbatches: np.ndarray) -> pd.DataFrame:
    """Add ``rank`` (position in ``selected``, NaN elsewhere), ``selected`` and ``nbatches``."""
    rank = np.full(len(table), np.nan)
    rank[selected] = np.arange(len(selected), dtype=np.float64)
    table["rank"] = rank
    table["selected"] = ~np.isnan(rank)
    table["nbatches"] = nbatches
    return table
