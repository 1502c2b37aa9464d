"""``gs.pl.markers``: a model's marker genes as a scanpy dot plot on the user's data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._errors import InputError
from .._keys import PREFIX, ResultKeys
from ._utils import check_adata, finish, obs_column, resolve_model


def markers(
    adata: Any,
    model: Any,
    *,
    n_top: int = 3,
    labels: Sequence[str] | None = None,
    groupby: str | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    key_added: str = PREFIX,
    batch_size: int | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Dot plot of each label's marker genes (:func:`ginseng.tl.marker_genes`) on ``adata``.

    The genes come from the model alone; the dots show them on the user's cells, grouped
    by the predicted label (or ``groupby``): dot size is the fraction of cells with a
    non-zero count, colour the mean of the counts normalised to 10,000 per cell and
    ``log1p``. The counts are read chunk by chunk (only the marker genes' columns are
    kept), so backed data work too.

    Parameters
    ----------
    adata
        AnnData with raw counts (in memory or backed).
    model
        A :class:`~ginseng.model.GinsengModelState` or the path of a saved model file.
    n_top
        Marker genes per label.
    labels
        Model labels whose markers to show (default: those occurring in ``groupby``,
        in model order).
    groupby
        ``obs`` column to group cells by; default ``obs[f"{key_added}_cell_type"]``
        from :func:`ginseng.tl.classify`.
    layer
        Layer with raw counts; ``None`` uses ``.X``.
    gene_key
        ``var`` column of gene names matching the model's (as in ``tl.classify``).
    key_added
        The ``key_added`` of :func:`ginseng.tl.classify` (for the default ``groupby``).
    batch_size
        Cells per chunk read (default ``ginseng.settings.chunk_size``).
    show, save
        As scanpy's plots: show the figure; write it to this path.
    **kwargs
        Passed to ``scanpy.pl.dotplot`` (e.g. ``standard_scale="var"``).

    Returns
    -------
    The dict of matplotlib Axes that ``scanpy.pl.dotplot`` returns with
    ``show=False`` (``"mainplot_ax"``, ...). ``adata`` is not modified.

    Raises
    ------
    InputError
        No ``groupby`` column (named), a label the model lacks, or none of the marker
        genes in ``adata``.

    Examples
    --------
    ``query`` holds raw counts, classified with ``state``:

    >>> gs.tl.classify(query, state)
    >>> axes = gs.pl.markers(query, state, n_top=2, show=False)
    >>> "mainplot_ax" in axes
    True
    """
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    from .._settings import settings
    from ..data import align_genes, get_matrix, iter_row_chunks
    from ..tl import marker_genes

    check_adata(adata, "markers")
    state = resolve_model(model)
    key = groupby or ResultKeys.from_prefix(key_added).cell_type
    hint = "" if groupby else " (run gs.tl.classify first, or pass groupby=)"
    groups = obs_column(adata, key, hint).astype(str)
    names = [str(x) for x in state.labels]
    if labels is None:
        present = set(groups)
        labels = [x for x in names if x in present]
        if not labels:
            raise InputError(
                f"No value of adata.obs[{key!r}] is a model label; pass labels= to choose."
            )
    table = marker_genes(state, n_top=n_top, labels=list(labels))
    alignment = align_genes(state.genes, adata.var, gene_key=gene_key, min_overlap=0.0)
    model_index = {g: i for i, g in enumerate(state.genes)}
    columns: dict[str, list[int]] = {}
    for label, part in table.groupby("label", observed=True, sort=False):
        found = [alignment.positions[model_index[g]] for g in part["gene"]]
        columns[str(label)] = [int(c) for c in found if c >= 0]
    wanted = sorted({c for cols in columns.values() for c in cols})
    if not wanted:
        raise InputError("None of the model's marker genes are in adata.var.")
    # Library sizes over all genes and the marker columns, one chunk at a time.
    matrix = get_matrix(adata, layer)
    chunk_size = settings.chunk_size if batch_size is None else int(batch_size)
    parts, totals = [], []
    for _, chunk in iter_row_chunks(matrix, chunk_size):
        totals.append(np.asarray(chunk.sum(axis=1), dtype=np.float64).ravel())
        parts.append(chunk[:, wanted])
    values = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, len(wanted)))
    total = np.concatenate(totals) if totals else np.zeros(0)
    scale = 1e4 / np.maximum(total, 1.0)
    values = sp.csr_matrix(sp.diags(scale) @ values, dtype=np.float32)
    values.data = np.log1p(values.data)
    var_names = [str(v) for v in adata.var_names[wanted]]
    small = ad.AnnData(
        values,
        obs=pd.DataFrame({key: pd.Categorical(groups.to_numpy())}, index=adata.obs_names),
        var=pd.DataFrame(index=var_names),
    )
    genes = {label: [str(adata.var_names[c]) for c in cols] for label, cols in columns.items()}
    genes = {label: g for label, g in genes.items() if g}
    axes = sc.pl.dotplot(small, genes, groupby=key, show=False, **kwargs)
    finish(axes["mainplot_ax"].figure, created=True, show=show, save=save)
    return axes
