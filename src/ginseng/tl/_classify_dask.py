"""The dask path of ``gs.tl.classify``: lazy rows in, results back into the AnnData.

:func:`ginseng.tl._dask.classify_dask` maps the kernel over row blocks; this module
wires it into ``classify``: it reads a file's rows lazily, runs the blocks, and writes
``obs``/``obsm``/``uns`` (with ``write=True`` into a ``.zarr``, the workers write the
probabilities into the staged copy).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import InputError
from .._keys import NOVEL, UNASSIGNED, ResultKeys
from .._logging import logger, timed
from ..data import write_results
from ._annotation import annotation_from, classify_record
from ._options import ClassifyOptions
from ._query import Query
from ._results import Annotation, annotation_table, write_annotation

if TYPE_CHECKING:
    from ..model.state import GinsengModelState


def lazy_matrix(query: Query, batch_size: int) -> Any:
    """The counts of the file behind ``query`` as a dask array of ``batch_size`` rows."""
    from ._dask_io import lazy_rows

    key = "X" if query.layer is None else f"layers/{query.layer}"
    assert query.file is not None and query.fmt is not None  # checked by the caller
    return lazy_rows(
        str(query.file), query.fmt, key, query.matrix.shape, query.matrix.dtype, batch_size
    )


def run_dask(
    adata: AnnData | str | os.PathLike[str],
    state: GinsengModelState,
    options: ClassifyOptions,
    query: Query,
    alignment: Any,
    batch_size: int,
) -> AnnData | pd.DataFrame | None:
    """:func:`run_classify` for counts in a dask array (see :mod:`ginseng.tl._dask`)."""
    from ._dask import ZarrTarget, active_client, classify_dask
    from ._dask_io import create_probability_array
    from ._dask_workers import warn_if_workers_unmap_blocks
    from ._labels import votes_from_table

    client = active_client()
    if client is not None:
        warn_if_workers_unmap_blocks(client)
    target, labels = query.adata, [str(x) for x in state.labels]
    keys = ResultKeys.from_prefix(options.key_added)
    vote_key = options.majority_vote_key
    clusters = target.obs[vote_key] if vote_key is not None else None
    out = target.copy() if options.copy else target
    record = classify_record(options, query, batch_size, state, alignment, labels)
    workers_write = options.write and query.fmt == "zarr" and options.store_probabilities
    novel_cutoff = None
    if options.novelty_threshold is not None and state.uncertainty is not None:
        novel_cutoff = state.uncertainty.novelty_cutoff(options.novelty_threshold)

    def annotate(target_array: ZarrTarget | None) -> tuple[Annotation, list[int]]:
        with timed(
            f"classifying {target.n_obs} cells with a {len(labels)}-label ginseng model on dask"
        ):
            result = classify_dask(
                query.matrix,
                alignment,
                state,
                check_counts=options.check_counts,
                where=query.where,
                layers=query.layers,
                probabilities=options.store_probabilities or options.return_table,
                target=target_array,
                clusters=clusters,
                threshold=options.unassigned_threshold,
                materialize=options.return_table or options.write,
                novelty=state.uncertainty is not None,
                prediction_sets=options.prediction_sets,
                novel_cutoff=novel_cutoff,
            )

        def votes(predicted: pd.Series) -> pd.Series | None:
            if result.vote_table is None:
                return None
            assert clusters is not None  # vote_table is only computed for clusters
            categories = pd.Series(np.asarray(clusters, dtype=object), dtype="category")
            voted = labels if state.hierarchy is None else list(state.hierarchy.names)
            columns = [*voted, UNASSIGNED, NOVEL]
            table = pd.DataFrame(
                result.vote_table, index=categories.cat.categories, columns=columns
            ).reindex(columns=list(predicted.categories), fill_value=0)
            return votes_from_table(table, categories, min_prop=options.min_prop)

        annotation = annotation_from(result, labels, options, state, votes)
        return annotation, result.writers

    if not workers_write:
        annotation, _ = annotate(None)
        if options.return_table:
            return annotation_table(annotation, target.obs_names, keys)
        obsm_keys, uns_keys = write_annotation(
            out, annotation, keys, record=record, store_probabilities=options.store_probabilities
        )
        if options.write:
            if query.file is None or query.fmt is None:
                raise InputError("write=True needs an .h5ad or AnnData .zarr file.")
            write_results(out, query.file, query.fmt, obsm_keys=obsm_keys, uns_keys=uns_keys)
    else:
        assert query.file is not None
        rows = int(query.matrix.chunks[0][0])

        def prepare(staged: Path) -> tuple[list[str], list[str]]:
            import zarr

            group = zarr.open_group(staged, mode="r+", use_consolidated=False)
            create_probability_array(group, keys.probabilities, target.n_obs, len(labels), rows)
            where = ZarrTarget(str(staged), f"obsm/{keys.probabilities}")
            annotation, writers = annotate(where)
            logger.debug("probabilities written by processes %s", writers)
            _, uns_keys = write_annotation(
                out, annotation, keys, record=record, store_probabilities=False
            )
            return [], uns_keys

        write_results(out, query.file, "zarr", obsm_keys=[], uns_keys=[], prepare=prepare)
        out.obsm[keys.probabilities] = read_lazy_obsm(query.file, keys.probabilities)
    if options.copy or not isinstance(adata, AnnData):
        return out
    return None


def read_lazy_obsm(path: Path, key: str) -> Any:
    """``obsm[key]`` of the zarr store at ``path``, as a lazy dask array."""
    import zarr
    from anndata.experimental import read_elem_lazy

    obsm = zarr.open_group(path, mode="r")["obsm"]
    assert isinstance(obsm, zarr.Group)
    return read_elem_lazy(obsm[key])
