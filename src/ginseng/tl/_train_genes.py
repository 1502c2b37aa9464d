"""Which reference genes ``ginseng.tl.train`` trains on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import InputError
from .._logging import logger
from .._validate import positive_int

# Highly variable genes trained on by default (see gs.tl.train's n_top_genes).
DEFAULT_N_TOP_GENES = 3000


def training_genes(
    adata: AnnData,
    genes: Any,
    *,
    n_top_genes: int | None,
    query_genes: Sequence[str] | np.ndarray | None,
    layer: str | None,
) -> Any:
    """The ``genes`` argument for the store: as given, or chosen as ``gs.tl.train`` documents.

    Returns ``genes`` unchanged when no rule applies (``None``: all genes), else a
    boolean mask over ``adata.var_names``.
    """
    if n_top_genes is not None:
        n_top_genes = positive_int("n_top_genes", n_top_genes)
    shared = None if query_genes is None else _shared_with_query(adata, query_genes)
    if genes is not None:
        if shared is None:
            return genes
        from ..data import select_genes

        mask = np.zeros(adata.n_vars, dtype=bool)
        mask[select_genes(adata, genes)] = True
        kept = _require_some(mask & shared, adata, f"the {int(mask.sum())} chosen genes")
        if kept.sum() < mask.sum():
            logger.warning(
                "training on the %d of the %d chosen genes%s that the query measures",
                int(kept.sum()),
                int(mask.sum()),
                f" (var[{genes!r}])" if isinstance(genes, str) else "",
            )
        return kept
    candidates = np.ones(adata.n_vars, dtype=bool) if shared is None else shared
    if n_top_genes is None or candidates.sum() <= n_top_genes:
        return None if shared is None else candidates
    from ..pp import select_hvgs

    # Among the shared genes, the selection select_hvgs makes on those genes alone (its
    # trend fitted on them): on human -> mouse pancreas that gained 0.05 macro-F1 over
    # ranking the whole reference's genes (three seeds; docs/transfer.md).
    table = select_hvgs(adata, n_top_genes=n_top_genes, layer=layer, mask_var=shared, inplace=False)
    assert table is not None
    mask = np.asarray(table["selected"].to_numpy(), dtype=bool)
    logger.info(
        "training on the %d most variable of %d%s genes (n_top_genes=%d; None trains on all)",
        int(mask.sum()),
        int(candidates.sum()),
        "" if shared is None else " shared",
        n_top_genes,
    )
    return mask


def _shared_with_query(adata: AnnData, query_genes: Any) -> np.ndarray:
    if isinstance(query_genes, AnnData):
        raise InputError("query_genes takes gene names; pass query.var_names, not the AnnData.")
    if isinstance(query_genes, str | bytes | set | frozenset | dict):
        raise InputError(
            f"query_genes must be a sequence of gene names (e.g. query.var_names), got a "
            f"{type(query_genes).__name__}."
        )
    names = pd.Index(np.asarray(query_genes).astype(str).ravel())
    ours = pd.Index(adata.var_names.astype(str))
    if _all_ensembl(ours) and _all_ensembl(names):
        # Version suffixes differ between annotations (classify ignores them too).
        ours, names = _unversioned(ours), _unversioned(names)
    shared = np.asarray(ours.isin(names), dtype=bool)
    logger.info(
        "%d of the reference's %d genes are among the %d query genes",
        int(shared.sum()),
        adata.n_vars,
        len(names),
    )
    return _require_some(shared, adata, f"the reference's {adata.n_vars} genes", names)


_ENSEMBL = r"^ENS[A-Z]*[GT]\d{6,}(\.\d+)?$"


def _all_ensembl(names: pd.Index) -> bool:
    return len(names) > 0 and bool(names.str.match(_ENSEMBL).all())


def _unversioned(names: pd.Index) -> pd.Index:
    return names.str.replace(r"\.\d+$", "", regex=True)


def _require_some(
    mask: np.ndarray, adata: AnnData, what: str, names: pd.Index | None = None
) -> np.ndarray:
    if mask.any():
        return mask
    query = "" if names is None else f"; query genes: {', '.join(map(str, names[:3]))}, ..."
    raise InputError(
        f"None of {what} is in query_genes "
        f"(reference var_names: {', '.join(map(str, adata.var_names[:3]))}, ...{query}). "
        "Both must use the same gene identifiers (symbols or Ensembl ids)."
    )
