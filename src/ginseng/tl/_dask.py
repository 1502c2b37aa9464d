"""``gs.tl.classify`` on a dask array: the same kernel, mapped over row blocks.

When the query's counts are a ``dask.array.Array`` (e.g. from
``anndata.experimental.read_elem_lazy``), :func:`classify_dask` runs
:func:`ginseng.tl.kernel.classify_chunk` on every row block with
``dask.array.map_blocks``, on whatever ``distributed.Client`` is active (else
dask's default scheduler). ginseng starts no cluster here.

- The model and the gene alignment enter the graph once, as one
  ``dask.delayed`` key all blocks depend on: the scheduler ships it once to each
  worker that needs it, not once per block.
- Codes and confidence come back to the client (they go to ``obs``); the probabilities
  stay a lazy dask array, or, with ``target``, each block's task writes its rows into a
  zarr array (the workers write, not the client).
- Majority voting counts (cluster, label) pairs per block and sums the tables.

Reading a file's rows lazily, and the zarr array the workers write into, are in
:mod:`ginseng.tl._dask_io`. Nothing here is imported unless the data are a dask array,
so ``import ginseng`` never imports dask.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._errors import InputError
from ._dask_io import compute_settled
from .kernel import CountCheck, classify_chunk

if TYPE_CHECKING:
    from ..data import GeneAlignment
    from ..model.state import GinsengModelState

# Columns of the packed block result: code, confidence, novelty (NaN when not computed),
# the prediction-set membership (0/1, n_labels columns when asked for, else none), the
# hierarchy's node codes then their probabilities (n_levels columns each, for a model
# with a hierarchy), then the writer's pid or the probabilities. float64 holds the
# float32 values and the int32 codes exactly.
_CODE, _CONF, _NOV, _SETS = 0, 1, 2, 3


def _extra(n_sets: int, n_levels: int = 0) -> int:
    """First column of the pid or probabilities, after the set and level columns."""
    return _SETS + n_sets + 2 * n_levels


def _levels(packed: np.ndarray, n_sets: int, n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The level codes and probabilities of a packed block."""
    start = _SETS + n_sets
    codes = packed[:, start : start + n_levels].astype(np.int32)
    confidence = packed[:, start + n_levels : start + 2 * n_levels].astype(np.float32)
    return codes, confidence


def is_dask_array(x: Any) -> bool:
    """Whether ``x`` is a dask array (without importing dask)."""
    cls = type(x)
    return cls.__name__ == "Array" and cls.__module__.split(".")[0] == "dask"


def active_client() -> Any:
    """The active ``distributed.Client``, or ``None`` (distributed not imported or none)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


@dataclass(frozen=True)
class ZarrTarget:
    """Where the workers write the probabilities: ``store``/``path`` of a zarr array."""

    store: str
    path: str


@dataclass
class DaskResult:
    """What :func:`classify_dask` computed: codes/confidence in memory, probabilities lazy."""

    codes: np.ndarray
    confidence: np.ndarray
    probabilities: Any  # dask array, or None (written to the target, or not kept)
    vote_table: np.ndarray | None  # n_clusters x (n_labels + 2): ..., Unassigned, Novel
    writers: list[int]  # pids of the processes that wrote the probabilities
    novelty: np.ndarray | None = None
    prediction_sets: np.ndarray | None = None  # bool cells x labels
    level_codes: np.ndarray | None = None  # int32 cells x levels (a hierarchy's nodes)
    level_confidence: np.ndarray | None = None  # float32 cells x levels


def _block(
    chunk: Any,
    model: tuple[GeneAlignment, GinsengModelState],
    *,
    check: CountCheck,
    where: str,
    layers: list[str],
    keep: bool,
    target: ZarrTarget | None,
    novelty: bool = False,
    prediction_sets: float | None = None,
    block_info: dict | None = None,
) -> np.ndarray:
    """Classify one row block; pack codes, confidence, novelty, sets and probabilities (or the writer pid)."""
    alignment, state = model
    first = block_info is None or block_info[0]["chunk-location"][0] == 0
    if check == "raw" and not first:
        check = "sign"  # as the serial loop: the full check on the first block only
    part = classify_chunk(
        chunk,
        alignment,
        state,
        check=check,
        where=where,
        layers=layers,
        probabilities=True,
        novelty=novelty,
        prediction_sets=prediction_sets,
    )
    n_sets = state.n_labels if prediction_sets is not None else 0
    n_levels = 0 if state.hierarchy is None else state.hierarchy.n_levels
    extra = _extra(n_sets, n_levels)
    width = extra + (state.n_labels if keep else 1)
    packed = np.zeros((part.n_cells, width), np.float64)
    packed[:, _CODE], packed[:, _CONF] = part.codes, part.confidence
    packed[:, _NOV] = np.nan if part.novelty is None else part.novelty
    if part.prediction_sets is not None:
        packed[:, _SETS : _SETS + n_sets] = part.prediction_sets
    if part.level_codes is not None and part.level_confidence is not None:
        start = _SETS + n_sets
        packed[:, start : start + n_levels] = part.level_codes
        packed[:, start + n_levels : extra] = part.level_confidence
    if target is not None:
        import zarr

        start = int(block_info[0]["array-location"][0][0]) if block_info else 0
        array = zarr.open_array(target.store, path=target.path, mode="r+")
        array[start : start + part.n_cells] = np.asarray(part.probabilities)
        packed[:, extra] = os.getpid()  # who wrote these rows
    elif keep:
        packed[:, extra:] = part.probabilities
    return packed


def _vote_block(
    packed: np.ndarray,
    clusters: np.ndarray,
    *,
    n_clusters: int,
    n_codes: int,
    n_labels: int,
    threshold: float | None,
    novel_cutoff: float | None = None,
    n_sets: int = 0,
    n_levels: int = 0,
) -> np.ndarray:
    """(cluster, label) counts of one block; labels ``n_labels``, ``n_labels + 1`` are Unassigned, Novel.

    With a hierarchy (``n_levels``), the labels are its node names (``n_labels`` of
    them) and a cell counts for the node it backs off to.
    """
    if n_levels:
        from ..model.hierarchy import back_off

        call, _, _ = back_off(*_levels(packed, n_sets, n_levels), threshold)
        codes = np.where(call < 0, n_labels, call).astype(np.int64)
    else:
        codes = packed[:, _CODE].astype(np.int64)
        if threshold is not None:
            codes = np.where(packed[:, _CONF].astype(np.float32) < threshold, n_labels, codes)
    if novel_cutoff is not None:
        codes = np.where(packed[:, _NOV].astype(np.float32) > novel_cutoff, n_labels + 1, codes)
    clusters = np.asarray(clusters).ravel()
    has = clusters >= 0
    flat = clusters[has].astype(np.int64) * n_codes + codes[has]
    table = np.bincount(flat, minlength=n_clusters * n_codes).reshape(n_clusters, n_codes)
    return table[None, :, :]


def classify_dask(
    matrix: Any,
    alignment: GeneAlignment,
    state: GinsengModelState,
    *,
    check_counts: bool = True,
    where: str = "adata.X",
    layers: Iterable[str] = (),
    probabilities: bool = True,
    target: ZarrTarget | None = None,
    clusters: pd.Series | None = None,
    threshold: float | None = None,
    materialize: bool = False,
    novelty: bool = False,
    prediction_sets: float | None = None,
    novel_cutoff: float | None = None,
) -> DaskResult:
    """Run :func:`~ginseng.tl.kernel.classify_chunk` over the row blocks of a dask array.

    Parameters
    ----------
    matrix
        Counts as a 2-D dask array (scipy sparse or numpy blocks), cells x query genes.
        Column blocks are merged into one (a block needs all of a cell's genes).
    alignment, state
        As for :func:`~ginseng.tl.kernel.classify_chunk`; sent to each worker once.
    check_counts
        Check the counts as the serial loop does: ``"raw"`` on the first block,
        ``"sign"`` on the others; else none.
    where, layers
        For error messages.
    probabilities
        Keep the probabilities (a lazy dask array; computing it runs the model again).
    target
        Have the workers write the probabilities into this zarr array (rows aligned
        with the row blocks) instead of keeping them.
    clusters, threshold
        Cluster of each cell for majority voting (missing values skip the cell), and
        the Unassigned threshold, for the per-block vote tables.
    materialize
        Compute the kept probabilities in the same pass (a numpy array), e.g. for a
        table or an ``.h5ad`` file the client writes.
    novelty, prediction_sets
        As for :func:`~ginseng.tl.kernel.classify_chunk`; the scores and set
        memberships come back to the client with the codes.
    novel_cutoff
        Novelty score above which a cell counts as ``"Novel"`` in the vote tables.
    """
    import dask
    import dask.array as da

    if matrix.ndim != 2:
        raise InputError(f"{where} is a {matrix.ndim}-D dask array; expected cells x genes.")
    if matrix.numblocks[1] > 1:
        matrix = matrix.rechunk({1: -1})
    if target is not None:
        matrix = _regular_rows(matrix)
    keep = probabilities and target is None
    n_labels = state.n_labels
    n_sets = n_labels if prediction_sets is not None else 0
    n_levels = 0 if state.hierarchy is None else state.hierarchy.n_levels
    n_voted = n_labels if state.hierarchy is None else len(state.hierarchy.names)
    extra = _extra(n_sets, n_levels)
    model = dask.delayed((alignment, state), name=f"ginseng-model-{uuid.uuid4().hex}")

    def blocks(with_probabilities: bool, write: ZarrTarget | None) -> Any:
        width = extra + (n_labels if with_probabilities else 1)
        return da.map_blocks(
            _block,
            matrix,
            model,
            check="raw" if check_counts else "none",
            where=where,
            layers=list(layers),
            keep=with_probabilities,
            target=write,
            novelty=novelty,
            prediction_sets=prediction_sets,
            chunks=(matrix.chunks[0], (width,)),
            dtype=np.float64,
            meta=np.empty((0, 0), np.float64),
            name=f"ginseng-classify-{uuid.uuid4().hex}",
        )

    # One array computed whole (slicing it lazily could let dask's optimiser run the
    # kernel once per slice); the probabilities in it only when they are wanted now.
    packed = blocks(keep and materialize, target)
    wanted = [packed]
    if clusters is not None:
        codes_c = pd.Series(np.asarray(clusters, dtype=object), dtype="category")
        cluster_codes = da.from_array(
            codes_c.cat.codes.to_numpy().astype(np.int64), chunks=(matrix.chunks[0],)
        )
        n_clusters, n_codes = len(codes_c.cat.categories), n_voted + 2
        table = da.map_blocks(
            _vote_block,
            packed,
            cluster_codes[:, None],
            n_clusters=n_clusters,
            n_codes=n_codes,
            n_labels=n_voted,
            threshold=threshold,
            novel_cutoff=novel_cutoff,
            n_sets=n_sets,
            n_levels=n_levels,
            chunks=((1,) * packed.numblocks[0], (n_clusters,), (n_codes,)),
            new_axis=2,
            dtype=np.int64,
            meta=np.empty((0, 0, 0), np.int64),
        ).sum(axis=0)
        wanted.append(table)
    computed = compute_settled(*wanted)
    values = np.asarray(computed[0])
    codes = values[:, _CODE].astype(np.int32)
    confidence = values[:, _CONF].astype(np.float32)
    writers = sorted({int(p) for p in np.unique(values[:, extra])}) if target is not None else []
    vote_table = np.asarray(computed[1]) if clusters is not None else None
    proba = None
    if keep and materialize:
        proba = values[:, extra:].astype(np.float32)
    elif keep:  # lazy: computing it runs the model again, on the workers
        proba = blocks(True, None)[:, extra:].astype(np.float32)
    scores = values[:, _NOV].astype(np.float32) if novelty else None
    members = values[:, _SETS : _SETS + n_sets] > 0.5 if n_sets else None
    level_codes = level_confidence = None
    if n_levels:
        level_codes, level_confidence = _levels(values, n_sets, n_levels)
    return DaskResult(
        codes,
        confidence,
        proba,
        vote_table,
        writers,
        scores,
        members,
        level_codes,
        level_confidence,
    )


def _regular_rows(matrix: Any) -> Any:
    """Equal row blocks (the last may be shorter), so each matches whole zarr chunks."""
    rows = matrix.chunks[0]
    if len(rows) <= 1 or (all(r == rows[0] for r in rows[:-1]) and rows[-1] <= rows[0]):
        return matrix
    return matrix.rechunk({0: max(rows)})
