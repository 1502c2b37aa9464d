"""``ginseng.classify``: the seed API's signature over :func:`ginseng.tl.classify`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from anndata import AnnData

from ._docs import shared_docs

if TYPE_CHECKING:
    import pandas as pd

    from .model.state import GinsengModelState


@shared_docs
def classify(
    adata: AnnData | str | os.PathLike[str],
    state: GinsengModelState | str | os.PathLike[str],
    layer: str | None = "counts",
    return_table: bool = False,
    **kwargs: Any,
) -> AnnData | pd.DataFrame | None:
    """Annotate ``adata`` with ``state``; :func:`ginseng.tl.classify` with the seed's defaults.

    Identical to ``ginseng.tl.classify(adata, state, layer=layer,
    return_table=return_table, **kwargs)``, except that ``layer`` defaults to
    ``"counts"`` and, when the data have no ``"counts"`` layer, the counts are taken from
    ``.X`` (logged; log-normalised ``.X`` is still refused).

    Parameters
    ----------
    %(classify_adata)s
    state
        %(model)s
    layer
        Layer with raw counts; ``None`` uses ``.X``. The default ``"counts"`` falls
        back to ``.X`` when there is no such layer.
    %(return_table)s
    **kwargs
        Further options of :func:`ginseng.tl.classify` (``unassigned_threshold``,
        ``majority_vote_key``, ``key_added``, ...).

    Returns
    -------
    As :func:`ginseng.tl.classify`: the results table with ``return_table=True`` (and
    ``adata`` untouched); otherwise ``None`` (the annotated AnnData for a path or with
    ``copy=True``), after writing:

    %(classify_fields)s

    Raises
    ------
    %(classify_raises)s

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
    >>> predictions.shape  # cell type, confidence, one probability per label, novelty
    (350, 13)
    """
    from .tl._classify import ClassifyOptions, run_classify

    options = ClassifyOptions.from_keywords(
        kwargs, layer=layer, return_table=return_table, counts_fallback=layer == "counts"
    )
    return run_classify(adata, state, options)
