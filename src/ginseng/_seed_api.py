"""``ginseng.classify``: the seed API's signature over :func:`ginseng.tl.classify`."""

from __future__ import annotations

import os
from typing import Any

from anndata import AnnData


def classify(
    adata: AnnData | str | os.PathLike,
    state: Any,
    layer: str | None = "counts",
    return_table: bool = False,
    **kwargs: Any,
):
    """Annotate ``adata`` with ``state``; :func:`ginseng.tl.classify` with the seed's defaults.

    Identical to ``ginseng.tl.classify(adata, state, layer=layer,
    return_table=return_table, **kwargs)``, except that ``layer`` defaults to
    ``"counts"`` and, when the data have no ``"counts"`` layer, the counts are taken from
    ``.X`` (logged; log-normalised ``.X`` is still refused).

    Returns
    -------
    See :func:`ginseng.tl.classify`: the results table with ``return_table=True``,
    else ``None`` (or the AnnData for a path) and ``adata`` gains
    ``obs["ginseng_cell_type"]``, ``obs["ginseng_confidence"]``,
    ``obsm["ginseng_probabilities"]`` and ``uns["ginseng"]["classify"]``.

    Examples
    --------
    >>> import ginseng
    >>> from ginseng.data.io import load_model, read_adata
    >>> state = load_model("model.h5")  # doctest: +SKIP
    >>> adata = read_adata("data.h5ad")  # doctest: +SKIP
    >>> ginseng.classify(adata, state, layer="counts")  # doctest: +SKIP
    >>> predictions = ginseng.classify(adata, state, return_table=True)  # doctest: +SKIP
    """
    from .tl._classify import classify as _classify

    return _classify(
        adata,
        state,
        layer=layer,
        return_table=return_table,
        _counts_fallback=layer == "counts",
        **kwargs,
    )
