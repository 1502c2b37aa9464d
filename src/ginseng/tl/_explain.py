"""``gs.tl.explain`` and ``gs.tl.marker_genes``: which genes drove a call.

The numbers come from :mod:`ginseng.model.attribution` (integrated gradients of the
calibrated log-probability, from the zero-count cell, in the model's preprocessed log
space); this face aligns the query's genes, reads its counts chunk by chunk as
:func:`ginseng.tl.classify` does and writes the results into the AnnData.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._errors import InputError
from .._keys import PREFIX
from .._logging import progress, timed
from .._settings import settings
from .._validate import nonempty_str, positive_int
from ._query import open_query
from ._record import drop_none, model_summary
from .kernel import CountCheck, align_genes, check_chunk, iter_row_chunks

if TYPE_CHECKING:
    from ..model.state import GinsengModelState

METHOD = "integrated gradients of the calibrated log-probability, zero-count baseline"


def explain(
    adata: AnnData | str | os.PathLike[str],
    model: GinsengModelState | str | os.PathLike[str],
    *,
    layer: str | None = None,
    label: str | None = None,
    label_key: str | None = None,
    n_top: int | None = 20,
    steps: int = 16,
    key_added: str = PREFIX,
    gene_key: str | None = None,
    min_gene_overlap: float = 0.5,
    gene_map: Mapping[str, str] | pd.DataFrame | None = None,
    check_counts: bool = True,
    batch_size: int | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Attribute each cell's label to the genes it expresses.

    For every cell, the calibrated log-probability of the explained label (the
    predicted one, or ``label`` / ``obs[label_key]``) is split over genes by integrated
    gradients, computed chunk by chunk in bounded memory (also for backed data):

    * **Where**: in the model's own input space, the normalised, ``log1p`` and
      standardised counts ``h``. The model reads raw counts and preprocesses them
      itself, so this is where its first (linear) layer sees a gene.
    * **Baseline**: the zero-count cell. A gene a cell does not express gets exactly
      zero, so attributions are sparse (at most the cell's expressed genes) and an
      explanation lists genes the cell *has*; the absence of a marker is not credited.
      Model genes the query lacks are read at their training mean and get zero too.
    * **Why integrated gradients**: a confident call saturates the softmax, so the
      gradient at the cell itself (gradient x input) is near zero and noisy; integrating
      along the straight path from the baseline credits the genes that moved the cell
      there. The attributions of a cell add up to ``log p(cell) - log p(zero-count
      cell)`` up to the error of the ``steps``-node quadrature (completeness), written
      to ``obs``. The nodes are spaced for the first LayerNorm, linearly and then
      logarithmically along each cell's path, so the attributions hold both for
      standardised models and for the default ones, whose zero-count cell is a
      near-degenerate point for that LayerNorm (see the explanation page). The first
      layer being linear, each step costs one pass through the hidden layers only. The library size is held fixed along
      the path: a gene's attribution is the effect of its normalised level.

    Positive values support the label, negative ones speak against it. Deleting a
    cell's top-20 genes lowers its predicted probability far more than deleting 20
    random expressed genes (see the explanation benchmark).

    Parameters
    ----------
    adata
        Raw counts: an AnnData in memory or backed, or a path as for
        :func:`ginseng.tl.classify`.
    model
        A :class:`~ginseng.model.GinsengModelState` or the path of a saved model file.
    layer
        Layer with raw counts; ``None`` uses ``.X``.
    label
        A model label to explain for every cell, instead of each cell's prediction.
    label_key
        ``obs`` column of one model label per cell to explain (e.g. the true labels).
    n_top
        Attributions kept per cell: the ``n_top`` largest. ``None`` keeps every
        expressed model gene (as many values as the counts have non-zeros).
    steps
        Nodes of the quadrature along the path (Gauss-Legendre in the path's
        parameter). 16 keep the median completeness gap of PBMC cells near 0.1%
        (p95 2%) for a default model; the gap is in ``obs``, see above.
    key_added
        Prefix of the keys written.
    gene_key, min_gene_overlap, gene_map
        Gene matching, as in :func:`ginseng.tl.classify`: with ``gene_map`` (e.g.
        :func:`ginseng.datasets.mouse_human_orthologs`) the query's genes are translated
        to the model's names first, and the attributions still land on the query's own
        gene columns.
    check_counts
        Refuse log-normalised or scaled input (first chunk), and negative values.
    batch_size
        Cells per chunk (default ``ginseng.settings.chunk_size``).
    copy
        Return an explained copy of an in-memory ``adata`` instead of writing into it.

    Returns
    -------
    With ``copy=True`` or a path: the AnnData; otherwise ``None``, and ``adata`` gains:

    ``layers[f"{key_added}_attributions"]``
        CSR float32 ``n_obs x n_vars``: the ``n_top`` largest attributions of each
        cell in nats of calibrated log-probability, at the query's gene columns; all
        other entries are zero (not stored). Never dense.
    ``obs[f"{key_added}_explained_label"]``
        Categorical: the label explained (categories: the model's labels).
    ``obs[f"{key_added}_attribution_total"]``
        float32: ``log p(cell) - log p(zero-count cell)`` of that label, which all of
        the cell's attributions (not only the top ones) add up to.
    ``uns[key_added]["explain"]``
        ``params``, ``labels``, ``method``, ``model`` summary, ``gene_overlap`` and
        ``baseline_log_proba`` (per label, the zero-count cell's).

    Raises
    ------
    InputError
        An unknown ``label`` or values of ``obs[label_key]`` that are not model labels
        (named), both ``label`` and ``label_key``, bad options, non-count input.
    GeneMismatchError
        Too few of the model's genes in ``adata``.

    Examples
    --------
    ``state`` is a model trained on PBMCs; ``query`` holds raw counts in
    ``layers["counts"]``:

    >>> import ginseng as gs
    >>> gs.tl.explain(query, state, layer="counts", n_top=5)
    >>> att = query.layers["ginseng_attributions"]
    >>> int(att.getnnz(axis=1).max())
    5

    The top genes of the first cell, best first:

    >>> row = att[0].tocoo()
    >>> top = query.var_names[row.col[np.argsort(-row.data)]]
    >>> len(top), query.obs["ginseng_explained_label"].iloc[0] in state.labels
    (5, True)
    """
    from ..model.attribution import attribute, baseline_log_proba, top_k_rows
    from ..model.file import as_model_state
    from ..model.first_layer import missing_genes_note

    state = as_model_state(model)
    nonempty_str("key_added", key_added)
    if n_top is not None:
        positive_int("n_top", n_top)
    positive_int("steps", steps)
    batch_size = (
        settings.chunk_size if batch_size is None else positive_int("batch_size", batch_size)
    )
    if label is not None and label_key is not None:
        raise InputError("Give label= (one label for all cells) or label_key=, not both.")
    if copy and not isinstance(adata, AnnData):
        raise InputError("copy=True applies to an in-memory AnnData.")
    if copy and isinstance(adata, AnnData) and adata.isbacked:
        raise InputError(
            "copy=True would load the backed AnnData into memory; explain it in place."
        )
    query = open_query(adata, layer)
    target = query.adata
    labels = [str(x) for x in state.labels]
    codes = _label_codes(target, labels, label, label_key)
    alignment = align_genes(
        state.genes,
        target.var,
        gene_key=gene_key,
        min_overlap=min_gene_overlap,
        gene_map=gene_map,
    )
    missing = alignment.missing if alignment.missing.any() else None
    n = target.n_obs
    blocks, explained, total = [], np.empty(n, np.int32), np.empty(n, np.float32)
    raw_checked = not check_counts
    bar = progress(total=n, desc="explaining", unit="cells")
    with timed(f"explaining {n} cells with a {len(labels)}-label ginseng model"):
        for rows, chunk in iter_row_chunks(query.matrix, batch_size):
            check: CountCheck = "none" if not check_counts else "sign" if raw_checked else "raw"
            check_chunk(chunk, check=check, where=query.where, layers=query.layers)
            raw_checked = raw_checked or chunk.nnz > 0
            part = attribute(
                state,
                alignment.take(chunk),
                codes=None if codes is None else codes[rows],
                missing=missing,
                steps=steps,
            )
            kept = top_k_rows(part.values, n_top)
            # Model gene columns -> the query's columns.
            blocks.append(
                sp.csr_matrix(
                    (kept.data, alignment.positions[kept.indices], kept.indptr),
                    shape=(kept.shape[0], alignment.n_query_genes),
                )
            )
            explained[rows] = part.codes
            total[rows] = part.log_proba - part.log_proba_baseline
            bar.update(chunk.shape[0])
    bar.close()
    matrix = (
        sp.vstack(blocks, format="csr")
        if blocks
        else sp.csr_matrix((0, alignment.n_query_genes), dtype=np.float32)
    )
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.sort_indices()

    out = target.copy() if copy else target
    out.layers[f"{key_added}_attributions"] = matrix
    out.obs[f"{key_added}_explained_label"] = pd.Categorical.from_codes(explained, labels)
    out.obs[f"{key_added}_attribution_total"] = total
    params = drop_none(
        {
            "layer": query.layer,
            "label": label,
            "label_key": label_key,
            "n_top": n_top,
            "steps": int(steps),
            "key_added": key_added,
            "gene_key": gene_key,
            "min_gene_overlap": float(min_gene_overlap),
            "gene_map": None if gene_map is None else f"{len(gene_map)} pairs",
            "check_counts": bool(check_counts),
            "batch_size": int(batch_size),
        }
    )
    record = out.uns.setdefault(key_added, {})
    record["explain"] = {
        "params": params,
        "labels": labels,
        "method": METHOD,
        "model": model_summary(state),
        "gene_overlap": alignment.summary(missing_genes_note(state.config)),
        "baseline_log_proba": baseline_log_proba(state).astype(np.float32),
    }
    if copy or not isinstance(adata, AnnData):
        return out
    return None


def _label_codes(
    adata: AnnData, labels: list[str], label: str | None, label_key: str | None
) -> np.ndarray | None:
    """The model index of the label to explain per cell, or ``None`` for the prediction."""
    index = pd.Index(labels)
    if label is not None:
        if str(label) not in index:
            raise InputError(
                f"label={label!r} is not one of the model's labels: {', '.join(labels)}."
            )
        return np.full(adata.n_obs, index.get_loc(str(label)), np.int32)
    if label_key is None:
        return None
    if label_key not in adata.obs.columns:
        raise InputError(
            f"label_key={label_key!r} is not a column of adata.obs; columns: "
            f"{', '.join(map(str, adata.obs.columns)) or 'none'}."
        )
    values = adata.obs[label_key].astype(str).to_numpy()
    codes = index.get_indexer(values)
    if (codes < 0).any():
        unknown = sorted(set(values[codes < 0]))
        shown = ", ".join(map(repr, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
        raise InputError(
            f"adata.obs[{label_key!r}] holds {len(unknown)} value(s) that are not model "
            f"labels: {shown}. The model's labels: {', '.join(labels)}."
        )
    return codes.astype(np.int32)


def marker_genes(
    model: GinsengModelState | str | os.PathLike[str],
    *,
    n_top: int = 10,
    labels: list[str] | None = None,
) -> pd.DataFrame:
    """Each label's top genes according to the model alone (no data needed).

    The score of gene ``g`` for label ``c`` is the gradient of the calibrated
    log-probability of ``c`` with respect to ``g``'s standardised log-normalised
    expression, averaged over 2,048 cells drawn from the per-gene training statistics
    the model file stores (each gene at its training mean plus a standard normal number
    of standard deviations, never below its zero-count value): how many nats ``log p(c)``
    gains per training standard deviation of more ``g``, for a typical cell. It needs
    only the model file and is deterministic. It is discriminative: genes that tell a
    label from its nearest competitors rank above genes that a whole lineage shares
    (CD3E among several T-cell labels), see the explanation benchmark. For a
    data-driven view, average :func:`explain`'s attributions over the cells of a label.

    Parameters
    ----------
    model
        A :class:`~ginseng.model.GinsengModelState` or the path of a saved model file.
    n_top
        Genes per label.
    labels
        Model labels to report (default: all, in model order).

    Returns
    -------
    A DataFrame with one row per label and rank, in model label order: ``label``
    (categorical), ``rank`` (1 = best), ``gene`` and ``score`` (nats per standard
    deviation).

    Raises
    ------
    InputError
        A label in ``labels`` that the model does not have (named), or a bad ``n_top``.

    Examples
    --------
    >>> markers = gs.tl.marker_genes(state, n_top=3)
    >>> markers.columns.tolist()
    ['label', 'rank', 'gene', 'score']
    >>> len(markers) == 3 * state.n_labels
    True
    """
    from ..model.attribution import label_saliency
    from ..model.file import as_model_state

    state = as_model_state(model)
    positive_int("n_top", n_top)
    names = [str(x) for x in state.labels]
    chosen = _check_labels(names, labels)
    scores = label_saliency(state)
    k = min(n_top, state.n_genes)
    rows: list[dict[str, Any]] = []
    for name in chosen:
        s = scores[names.index(name)]
        order = np.lexsort((np.arange(s.size), -s))[:k]
        rows += [
            {"label": name, "rank": r + 1, "gene": str(state.genes[g]), "score": float(s[g])}
            for r, g in enumerate(order)
        ]
    table = pd.DataFrame(rows, columns=["label", "rank", "gene", "score"])
    table["label"] = pd.Categorical(table["label"], categories=chosen)
    return table


def _check_labels(names: list[str], labels: list[str] | None) -> list[str]:
    if labels is None:
        return names
    if isinstance(labels, str):
        labels = [labels]
    unknown = [str(x) for x in labels if str(x) not in names]
    if unknown:
        raise InputError(
            f"label(s) {', '.join(map(repr, unknown))} not in the model; its labels: "
            f"{', '.join(names)}."
        )
    return [str(x) for x in labels]
