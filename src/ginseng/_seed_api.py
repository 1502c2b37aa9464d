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

    Parameters
    ----------
    adata
        Cells to annotate: an AnnData (in memory or backed) or a path read out of core.
    state
        A :class:`~ginseng.model.GinsengModelState` or the path of a saved model file.
    layer
        Layer with raw counts; ``None`` uses ``.X``.
    return_table
        Return the results as a DataFrame and leave ``adata`` untouched.
    **kwargs
        Further options of :func:`ginseng.tl.classify` (``unassigned_threshold``,
        ``majority_vote_key``, ``key_added``, ...).

    Returns
    -------
    As :func:`ginseng.tl.classify`: the results table with ``return_table=True`` (and
    ``adata`` untouched); otherwise ``None`` (the annotated AnnData for a path or with
    ``copy=True``), after writing, for the default ``key_added="ginseng"``:

    ``obs["ginseng_cell_type"]``, ``obs["ginseng_confidence"]``
        Predicted label (categorical) and its calibrated probability (float32).
    ``obsm["ginseng_probabilities"]``
        Calibrated probability of every label (unless ``store_probabilities=False``).
    ``obs["ginseng_majority_vote"]``
        Cluster-level label, with ``majority_vote_key``.
    ``uns["ginseng_cell_type_colors"]`` (and ``uns["ginseng_majority_vote_colors"]``)
        A colour per label, the same in every dataset.
    ``uns["ginseng"]["classify"]``
        Parameters, label order, model summary and gene overlap.

    Examples
    --------
    A model and data read from files (here written first from ``state``, a model trained
    on ``reference`` with :func:`ginseng.tl.train`, and ``query``, raw counts of other
    cells also in ``layers["counts"]``):

    >>> import ginseng
    >>> from ginseng.data.io import load_model, read_adata, save_model
    >>> model_path = save_model(state, tmp / "model.h5")
    >>> query.write_h5ad(tmp / "data.h5ad")
    >>> state = load_model(tmp / "model.h5")
    >>> adata = read_adata(tmp / "data.h5ad")
    >>> ginseng.classify(adata, state, layer="counts")
    >>> adata.obs["ginseng_cell_type"].cat.categories[:2].tolist()
    ['CD4+/CD25 T Reg', 'CD4+/CD45RA+/CD25- Naive T']
    >>> predictions = ginseng.classify(adata, state, return_table=True)
    >>> predictions.shape  # cell type, confidence and one probability per label
    (350, 12)
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
