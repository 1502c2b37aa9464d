"""``ginseng.tl.classify``: annotate the cells of an AnnData with a trained model.

Three steps, after decoupler's ``_run``/``_return`` split: open the query and check the
options (:class:`~ginseng.tl._options.ClassifyOptions`), compute the predictions chunk
by chunk with the pure kernel of :mod:`ginseng.tl.kernel`, and hand them to the one
writer of AnnData keys (:func:`ginseng.tl._results.write_annotation`), or lay them out
as a table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd
from anndata import AnnData

from .._docs import shared_docs
from .._errors import InputError
from .._keys import PREFIX, ResultKeys
from .._logging import timed
from .._settings import settings
from ..data import write_results
from ._annotation import annotation_from, classify_record
from ._dask import active_client, is_dask_array
from ._options import ClassifyOptions
from ._query import open_query
from ._results import annotation_table, write_annotation
from ._uncertainty import check_uncertainty
from .kernel import align_genes, classify_chunks, majority_vote

if TYPE_CHECKING:
    from ..model.state import GinsengModelState


@shared_docs
def classify(
    adata: AnnData | str | os.PathLike[str],
    model: GinsengModelState | str | os.PathLike[str],
    *,
    layer: str | None = None,
    key_added: str = PREFIX,
    gene_key: str | None = None,
    min_gene_overlap: float = 0.5,
    gene_map: Mapping[str, str] | pd.DataFrame | None = None,
    unassigned_threshold: float | None = None,
    novelty_threshold: float | None = None,
    prediction_sets: float | None = None,
    labels: Sequence[str] | None = None,
    majority_vote_key: str | None = None,
    min_prop: float = 0.0,
    store_probabilities: bool = True,
    check_counts: bool = True,
    batch_size: int | None = None,
    return_table: bool = False,
    copy: bool = False,
    write: bool = False,
) -> AnnData | pd.DataFrame | None:
    """Annotate cells with a trained ginseng model, chunk by chunk.

    The query's genes are matched to the model's by name (reordered, missing genes read
    as unknown, extra genes ignored); the raw counts are read ``batch_size`` rows at a
    time (the next chunk while this one is classified), also for backed data, so memory
    holds two chunks besides the results (about 45 bytes per cell for 10 labels) and, for
    a backed file, anndata's copy of the cell names: 10M cells were annotated from a
    path in 1.9 GB. Confidence is the calibrated probability of the predicted label.

    Counts in a dask array (e.g. read with ``anndata.experimental.read_elem_lazy``), or
    a file path while a ``distributed.Client`` is active, are classified block by block
    on the dask workers with the same kernel; ``obsm`` then holds the probabilities as
    a lazy dask array, and ``write=True`` into a ``.zarr`` has the workers write them
    (see :doc:`/scaling`).

    Parameters
    ----------
    %(classify_adata)s
    model
        %(model)s
    %(layer)s
    %(classify_options)s
    %(return_table)s
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
    per label (model order), then the hierarchy-level, novelty and prediction-set
    columns described below when computed, and ``f"{key_added}_majority_vote"`` when requested.
    With ``copy=True``: the annotated copy. With a path: the AnnData read from it
    (backed for ``.h5ad``; for ``.zarr`` its obs/var/uns/obsm only), annotated.
    Otherwise ``None``, and ``adata`` gains:

    %(classify_fields)s

    Raises
    ------
    %(classify_raises)s

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

    A novelty score for every cell, cells above the 99th percentile of held-out
    reference cells labelled ``"Novel"``, and conformal prediction sets that hold the
    true label of 90% of the cells of every known type (see :doc:`/uncertainty`):

    >>> gs.tl.classify(query, state, layer="counts", novelty_threshold=0.99, prediction_sets=0.1)
    >>> query.obs[["ginseng_novelty", "ginseng_prediction_set_size"]].dtypes
    ginseng_novelty                float32
    ginseng_prediction_set_size      int32
    dtype: object

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
    options = ClassifyOptions(
        layer=layer,
        key_added=key_added,
        gene_key=gene_key,
        min_gene_overlap=min_gene_overlap,
        gene_map=gene_map,
        unassigned_threshold=unassigned_threshold,
        novelty_threshold=novelty_threshold,
        prediction_sets=prediction_sets,
        labels=labels,
        majority_vote_key=majority_vote_key,
        min_prop=min_prop,
        store_probabilities=store_probabilities,
        check_counts=check_counts,
        batch_size=batch_size,
        return_table=return_table,
        copy=copy,
        write=write,
    )
    return run_classify(adata, model, options)


def run_classify(
    adata: AnnData | str | os.PathLike[str],
    model: GinsengModelState | str | os.PathLike[str],
    options: ClassifyOptions,
) -> AnnData | pd.DataFrame | None:
    """:func:`classify` with its options gathered in ``options``; see there."""
    from ..model.file import as_model_state
    from ._classify_dask import lazy_matrix, run_dask

    state = as_model_state(model)
    if options.labels is not None:
        state = state.restrict_labels(options.labels)
    if options.batch_size is None:
        options = options.replace(batch_size=settings.chunk_size)
    options.check(adata)
    check_uncertainty(state, options)
    batch_size = int(options.batch_size)  # type: ignore[arg-type]  # set just above
    query = open_query(
        adata, options.layer, counts_fallback=options.counts_fallback, write=options.write
    )
    target = query.adata
    vote_key = options.majority_vote_key
    if vote_key is not None and vote_key not in target.obs.columns:
        raise InputError(
            f"majority_vote_key={vote_key!r} is not a column of adata.obs "
            f"(e.g. run sc.tl.leiden first); columns: {', '.join(map(str, target.obs.columns))}."
        )
    alignment = align_genes(
        state.genes,
        target.var,
        gene_key=options.gene_key,
        min_overlap=options.min_gene_overlap,
        gene_map=options.gene_map,
    )
    n, labels = target.n_obs, [str(x) for x in state.labels]
    if not isinstance(adata, AnnData) and query.fmt is not None and active_client() is not None:
        query.matrix = lazy_matrix(query, batch_size)
    if is_dask_array(query.matrix):
        return run_dask(adata, state, options, query, alignment, batch_size)
    with timed(f"classifying {n} cells with a {len(labels)}-label ginseng model"):
        result = classify_chunks(
            query.matrix,
            alignment,
            state,
            batch_size=batch_size,
            check_counts=options.check_counts,
            where=query.where,
            layers=query.layers,
            probabilities=options.store_probabilities or options.return_table,
            novelty=state.uncertainty is not None,
            prediction_sets=options.prediction_sets,
        )

    def votes(predicted: pd.Series) -> pd.Series | None:
        if options.majority_vote_key is None:
            return None
        clusters = target.obs[options.majority_vote_key]
        return majority_vote(predicted, clusters, min_prop=options.min_prop)

    annotation = annotation_from(result, labels, options, state, votes)
    keys = ResultKeys.from_prefix(options.key_added)
    if options.return_table:
        return annotation_table(annotation, target.obs_names, keys)

    out = target.copy() if options.copy else target
    record = classify_record(options, query, batch_size, state, alignment, labels)
    obsm_keys, uns_keys = write_annotation(
        out, annotation, keys, record=record, store_probabilities=options.store_probabilities
    )
    # ``out`` holds copies of the labels and confidence: free the kernel's before writing.
    del result, annotation
    if options.write:
        if query.file is None or query.fmt is None:  # refused by open_query already
            raise InputError("write=True needs an .h5ad or AnnData .zarr file.")
        write_results(
            out,
            query.file,
            query.fmt,
            obsm_keys=obsm_keys,
            uns_keys=uns_keys,
            # Names read from the path are the file's own: only the columns are written.
            # A backed AnnData's names may have been changed by the user: written too.
            write_index=isinstance(adata, AnnData),
        )
    if options.copy or not isinstance(adata, AnnData):
        return out
    return None
