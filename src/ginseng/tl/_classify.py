"""``ginseng.tl.classify``: annotate the cells of an AnnData with a trained model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._errors import InputError
from .._logging import progress, timed
from .._settings import settings
from .._validate import fraction, nonempty_str, positive_int
from ..data._align import align_genes
from ..data._matrix import check_finite_nonnegative, iter_row_chunks
from ..data._preflight import check_raw_counts
from ._labels import assign_labels, label_colors, majority_vote
from ._query import open_query, write_back
from ._record import drop_none, model_summary


def classify(
    adata: AnnData | str | os.PathLike,
    model: Any,
    *,
    layer: str | None = None,
    key_added: str = _keys.PREFIX,
    gene_key: str | None = None,
    min_gene_overlap: float = 0.5,
    unassigned_threshold: float | None = None,
    majority_vote_key: str | None = None,
    min_prop: float = 0.0,
    store_probabilities: bool = True,
    check_counts: bool = True,
    batch_size: int | None = None,
    return_table: bool = False,
    copy: bool = False,
    write: bool = False,
    _counts_fallback: bool = False,
) -> AnnData | pd.DataFrame | None:
    """Annotate cells with a trained ginseng model, chunk by chunk.

    The query's genes are matched to the model's by name (reordered, missing genes
    zero-filled, extra genes ignored); the raw counts are read ``batch_size`` rows at a
    time, so memory does not grow with the number of cells, also for backed data.
    Confidence is the calibrated probability of the predicted label.

    Parameters
    ----------
    adata
        Cells to annotate: an AnnData in memory (dense or sparse) or backed (``"r"`` or
        ``"r+"``), or a path to an ``.h5ad`` file, an AnnData ``.zarr`` store (both read
        out of core) or any file :func:`ginseng.data.io.read_adata` reads.
    model
        A :class:`~ginseng.model.GinsengModelState` or the path of a saved model file.
    layer
        Layer with raw counts; ``None`` uses ``.X``. After standard scanpy preprocessing
        the counts are usually in ``layer="counts"``.
    key_added
        Prefix of the keys written (``"ginseng"`` gives ``obs["ginseng_cell_type"]``...).
    gene_key
        ``var`` column with gene names matching the model's. ``None`` uses ``var_names``,
        or, when they match too few of the model's genes, the best-matching text column
        of ``var`` (e.g. ``gene_ids`` for Ensembl ids, ``feature_name`` for symbols),
        which is logged. Ensembl version suffixes are ignored.
    min_gene_overlap
        Least fraction of the model's genes that must be found in the query, else a
        :class:`~ginseng.GeneMismatchError` names the likely cause. Missing genes are
        zero-filled.
    unassigned_threshold
        Cells whose confidence is below this get the label ``"Unassigned"``.
    majority_vote_key
        ``obs`` column of clusters (e.g. ``"leiden"``): also write the most frequent
        prediction of each cluster to ``obs[f"{key_added}_majority_vote"]``.
    min_prop
        Clusters whose most frequent label covers less than this fraction of their cells
        are voted ``"Heterogeneous"``.
    store_probabilities
        Write the probabilities of every label to ``obsm``. ``False`` saves
        ``n_cells x n_labels`` floats of memory.
    check_counts
        Refuse log-normalised or scaled input (negative values; non-integer values with
        constant per-cell totals or only small values). Switch off only if you know the
        matrix holds counts.
    batch_size
        Cells read and classified per chunk; defaults to ``ginseng.settings.chunk_size``.
    return_table
        Return the results as a DataFrame and leave ``adata`` untouched.
    copy
        Annotate and return a copy of ``adata`` (in memory only) instead of ``adata``.
    write
        For a path or a backed AnnData: also write ``obs``, the ``obsm`` probabilities
        and the ``uns`` entries into the file (an ``.h5ad`` or ``.zarr``; a backed
        AnnData must be opened ``"r+"``). Nothing else in the file changes.

    Returns
    -------
    With ``return_table=True``: a DataFrame indexed by ``obs_names`` with columns
    ``f"{key_added}_cell_type"``, ``f"{key_added}_confidence"``, one probability column
    per label (model order) and ``f"{key_added}_majority_vote"`` when requested.
    With ``copy=True``: the annotated copy. With a path: the AnnData read from it
    (backed for ``.h5ad``; for ``.zarr`` its obs/var/uns/obsm only), annotated.
    Otherwise ``None``, and ``adata`` gains:

    ``obs[f"{key_added}_cell_type"]``
        Categorical prediction; categories are the model's labels (in model order),
        plus ``"Unassigned"`` when ``unassigned_threshold`` is set.
    ``obs[f"{key_added}_confidence"]``
        float32 calibrated probability of the predicted label.
    ``obsm[f"{key_added}_probabilities"]``
        float32 ``n_cells x n_labels`` calibrated probabilities; columns follow
        ``uns[key_added]["classify"]["labels"]`` (unless ``store_probabilities=False``).
    ``obs[f"{key_added}_majority_vote"]``
        Categorical cluster-level label (with ``majority_vote_key``).
    ``uns[f"{key_added}_cell_type_colors"]`` (and ``..._majority_vote_colors``)
        A colour per category, fixed by the label's position in the model, so
        ``sc.pl.umap(adata, color="ginseng_cell_type")`` colours a cell type the same
        in every dataset.
    ``uns[key_added]["classify"]``
        ``"params"`` (the arguments), ``"labels"`` (probability column order),
        ``"model"`` (holdout accuracy, macro-F1, ECE, temperature, fingerprint) and
        ``"gene_overlap"`` (genes found, fraction, the names' source and id types).

    Raises
    ------
    GeneMismatchError
        Fewer than ``min_gene_overlap`` of the model's genes are in the query.
    InputError
        The matrix does not hold raw counts (see ``check_counts``), a key is missing,
        or the options contradict each other.

    Examples
    --------
    ``state`` is a model trained on ``reference`` (see :func:`ginseng.tl.train`);
    ``query`` holds the raw counts of other cells, also in ``layers["counts"]``:

    >>> import ginseng as gs
    >>> gs.tl.classify(query, state, layer="counts")
    >>> query.obs[["ginseng_cell_type", "ginseng_confidence"]].dtypes
    ginseng_cell_type     category
    ginseng_confidence     float32
    dtype: object
    >>> list(query.obs["ginseng_cell_type"].cat.categories)[:2]
    ['CD4+/CD25 T Reg', 'CD4+/CD45RA+/CD25- Naive T']
    >>> query.obsm["ginseng_probabilities"].shape
    (350, 10)
    >>> overlap = query.uns["ginseng"]["classify"]["gene_overlap"]
    >>> overlap["n_found"], overlap["fraction"]
    (765, 1.0)

    Cells below a confidence threshold become ``"Unassigned"``, and each cluster (here
    the ``louvain`` clusters that come with the data, usually ``sc.tl.leiden``'s) gets
    its most frequent label:

    >>> gs.tl.classify(
    ...     query, state, layer="counts", unassigned_threshold=0.5, majority_vote_key="louvain"
    ... )
    >>> "Unassigned" in query.obs["ginseng_cell_type"].cat.categories
    True
    >>> query.obs["ginseng_majority_vote"].dtype.name
    'category'

    The results as a table, leaving the AnnData untouched:

    >>> table = gs.tl.classify(reference, state, return_table=True)
    >>> table.columns[:3].tolist()
    ['ginseng_cell_type', 'ginseng_confidence', 'CD4+/CD25 T Reg']
    >>> "ginseng_cell_type" in reference.obs
    False

    A file, read out of core and annotated in place, with the model from its file:

    >>> from ginseng.data.io import save_model
    >>> model_path = save_model(state, tmp / "model.h5")
    >>> adata.write_h5ad(tmp / "pbmc.h5ad")
    >>> annotated = gs.tl.classify(tmp / "pbmc.h5ad", model_path, layer="counts", write=True)
    >>> annotated.isbacked, annotated.obs["ginseng_cell_type"].size
    (True, 700)
    """
    from ..model.file import as_model_state

    state = as_model_state(model)
    _check_options(adata, return_table, copy, write, unassigned_threshold, key_added)
    batch_size = positive_int(
        "batch_size", settings.chunk_size if batch_size is None else batch_size
    )
    query = open_query(adata, layer, counts_fallback=_counts_fallback, write=write)
    target = query.adata
    if majority_vote_key is not None and majority_vote_key not in target.obs.columns:
        raise InputError(
            f"majority_vote_key={majority_vote_key!r} is not a column of adata.obs "
            f"(e.g. run sc.tl.leiden first); columns: {', '.join(map(str, target.obs.columns))}."
        )

    labels = [str(x) for x in state.labels]
    alignment = align_genes(
        state.genes, target.var, gene_key=gene_key, min_overlap=min_gene_overlap
    )
    keep_proba = store_probabilities or return_table
    n = target.n_obs
    codes = np.empty(n, np.int32)
    confidence = np.empty(n, np.float32)
    proba = np.empty((n, len(labels)), np.float32) if keep_proba else None

    with timed(f"classifying {n} cells with a {len(labels)}-label ginseng model"):
        bar = progress(total=n, desc="classifying", unit="cells")
        sampled = False  # the full raw-count check runs on the first chunk with values
        for rows, chunk in iter_row_chunks(query.matrix, batch_size):
            if check_counts and not sampled:
                check_raw_counts(chunk, where=query.where, layers=query.layers)
                sampled = chunk.nnz > 0
            elif check_counts:
                check_finite_nonnegative(chunk, where=query.where)
            p = state.predict_proba(alignment.take(chunk))
            codes[rows] = p.argmax(axis=1)
            confidence[rows] = p[np.arange(len(p)), codes[rows]]
            if proba is not None:
                proba[rows] = p
            bar.update(rows.stop - rows.start)
        bar.close()

    predicted = assign_labels(codes, confidence, labels, unassigned_threshold)
    votes = None
    if majority_vote_key is not None:
        votes = majority_vote(predicted, target.obs[majority_vote_key], min_prop=min_prop)

    names = _names(key_added)
    if return_table:
        return _table(target.obs_names, predicted, confidence, proba, labels, votes, names)

    out = target.copy() if copy else target
    out.obs[names["cell_type"]] = pd.Categorical(predicted)
    out.obs[names["confidence"]] = confidence
    out.uns[f"{names['cell_type']}_colors"] = label_colors(list(predicted.categories), labels)
    obsm_keys = []
    if store_probabilities:
        out.obsm[names["probabilities"]] = proba
        obsm_keys.append(names["probabilities"])
    uns_keys = [key_added, f"{names['cell_type']}_colors"]
    if votes is not None:
        out.obs[names["majority_vote"]] = votes
        out.uns[f"{names['majority_vote']}_colors"] = label_colors(list(votes.categories), labels)
        uns_keys.append(f"{names['majority_vote']}_colors")
    params = {
        "layer": query.layer,
        "key_added": key_added,
        "gene_key": gene_key,
        "min_gene_overlap": float(min_gene_overlap),
        "unassigned_threshold": unassigned_threshold,
        "majority_vote_key": majority_vote_key,
        "min_prop": float(min_prop),
        "store_probabilities": bool(store_probabilities),
        "check_counts": bool(check_counts),
        "batch_size": int(batch_size),
    }
    entry = out.uns.get(key_added, {})
    if not isinstance(entry, Mapping):
        raise InputError(
            f"adata.uns[{key_added!r}] holds a {type(entry).__name__}, not ginseng's records; "
            "pass another key_added= or remove that entry."
        )
    entry["classify"] = {
        "params": drop_none(params),
        "labels": labels,
        "model": model_summary(state),
        "gene_overlap": alignment.summary(),
    }
    out.uns[key_added] = entry
    if write:
        write_back(query, obsm_keys=obsm_keys, uns_keys=uns_keys)
    if copy or not isinstance(adata, AnnData):
        return out
    return None


def _table(index, predicted, confidence, proba, labels, votes, names) -> pd.DataFrame:
    table = pd.DataFrame(
        {names["cell_type"]: predicted, names["confidence"]: np.asarray(confidence)},
        index=pd.Index(index).copy(),
    )
    table = pd.concat([table, pd.DataFrame(proba, index=table.index, columns=labels)], axis=1)
    if votes is not None:
        table[names["majority_vote"]] = votes
    return table


def results_table(adata: AnnData, key_added: str = _keys.PREFIX) -> pd.DataFrame:
    """The ``return_table=True`` DataFrame, rebuilt from what classify wrote into ``adata``.

    Needs the probabilities (``store_probabilities=True``).
    """
    names = _names(key_added)
    missing = [k for k in ("cell_type", "confidence") if names[k] not in adata.obs.columns]
    if missing or names["probabilities"] not in adata.obsm:
        raise InputError(
            f"adata holds no complete ginseng.tl.classify results under key_added={key_added!r} "
            "(with store_probabilities=True)."
        )
    obs = adata.obs
    return _table(
        adata.obs_names,
        obs[names["cell_type"]].array,
        obs[names["confidence"]].to_numpy(),
        np.asarray(adata.obsm[names["probabilities"]]),
        list(adata.uns[key_added]["classify"]["labels"]),
        obs[names["majority_vote"]].array if names["majority_vote"] in obs else None,
        names,
    )


def _names(key_added: str) -> dict[str, str]:
    return {
        "cell_type": f"{key_added}_cell_type",
        "confidence": f"{key_added}_confidence",
        "probabilities": f"{key_added}_probabilities",
        "majority_vote": f"{key_added}_majority_vote",
    }


def _check_options(adata, return_table, copy, write, threshold, key_added) -> None:
    if return_table and (copy or write):
        raise InputError(
            "return_table=True leaves adata untouched; do not combine it with copy= or write=."
        )
    if copy and not isinstance(adata, AnnData):
        raise InputError(
            "copy=True applies to an AnnData; for a path, classify already returns the "
            "annotated AnnData it reads (use return_table=True for a DataFrame)."
        )
    if copy and isinstance(adata, AnnData) and adata.isbacked:
        raise InputError(
            "copy=True would load the backed AnnData into memory; annotate it in place, "
            "or use return_table=True, or pass adata.to_memory() if it fits."
        )
    if write and isinstance(adata, AnnData) and not adata.isbacked:
        raise InputError(
            "write=True writes into the file behind a path or a backed AnnData; an "
            "in-memory AnnData is annotated in place (save it with adata.write_h5ad)."
        )
    if write and isinstance(adata, AnnData) and adata.file._filemode != "r+":
        raise InputError(
            f"write=True needs the backed AnnData opened with backed='r+' "
            f"({adata.filename} is open read-only)."
        )
    if threshold is not None:
        fraction("unassigned_threshold", threshold)
    nonempty_str("key_added", key_added)
