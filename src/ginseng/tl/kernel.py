"""The numbers of :func:`ginseng.tl.classify`: a pure per-chunk kernel and its serial loop.

:func:`~ginseng.tl.kernel.classify_chunk` takes one block of query rows (CSR or dense counts, the query's
columns), the gene alignment and the model, and returns that block's predictions. It
reads and writes no AnnData, file, setting or global state, so a loop over chunks (the
serial driver :func:`classify_chunks` used by ``tl.classify``) and a ``map_blocks`` over
a dask array run the same code; bad counts raise the same
:class:`~ginseng.InputError` wherever it runs.

The building blocks a custom loop needs are importable from here as well:

>>> from ginseng.tl.kernel import align_genes, classify_chunk, iter_row_chunks
>>> alignment = align_genes(state.genes, query.var)
>>> rows, chunk = next(iter_row_chunks(query.layers["counts"], 100))
>>> result = classify_chunk(chunk, alignment, state)
>>> result.codes.shape, result.probabilities.shape
((100,), (100, 10))
>>> bool((result.confidence == result.probabilities.max(axis=1)).all())
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp

from .._errors import InputError
from .._logging import progress
from ..data import GeneAlignment, align_genes, check_raw_counts, iter_row_chunks, read_ahead
from ..data import check_finite_nonnegative as _check_sign_and_finite
from ..model.novelty import novelty_scores
from ..model.uncertainty import prediction_set_members
from ._labels import assign_labels, majority_vote, model_label_colors

if TYPE_CHECKING:
    from ..model.state import GinsengModelState

__all__ = [
    "ChunkResult",
    "CountCheck",
    "GeneAlignment",
    "MissingGenes",
    "align_genes",
    "assign_labels",
    "check_chunk",
    "classify_chunk",
    "classify_chunks",
    "iter_row_chunks",
    "majority_vote",
    "model_label_colors",
]

MissingGenes = Literal["mean", "zero"]
"""How :func:`classify_chunk` reads model genes the query lacks: ``"mean"`` (the
default) sets each to its training mean, i.e. unknown; ``"zero"`` reads it as zero
counts (the behaviour before 0.2, kept for comparison)."""

CountCheck = Literal["raw", "sign", "none"]
"""How :func:`check_chunk` checks a chunk: ``"raw"`` refuses log-normalised or scaled
values (:func:`ginseng.tl.classify`'s ``check_counts``), ``"sign"`` only negative and
non-finite ones (cheap, for the chunks after the first), ``"none"`` nothing."""


@dataclass(frozen=True)
class ChunkResult:
    """Predictions for a block of cells, in the block's row order.

    Attributes
    ----------
    codes
        int32 index of the predicted label (model order).
    confidence
        float32 calibrated probability of that label.
    probabilities
        float32 ``n_cells x n_labels`` calibrated probabilities, or ``None`` when not kept.
    novelty
        float32 novelty score (``ginseng.model.novelty.novelty_scores``), or
        ``None`` when not computed.
    prediction_sets
        bool ``n_cells x n_labels`` membership of each label in each cell's conformal
        prediction set (``ginseng.model.uncertainty.prediction_set_members``), or
        ``None`` when not computed.
    level_codes
        int32 ``n_cells x n_levels``: for a model with a label hierarchy, the node
        (index into ``state.hierarchy.names``) of each level on the cell's top-down
        path (:meth:`ginseng.model.hierarchy.Hierarchy.level_calls`); else ``None``.
    level_confidence
        float32 ``n_cells x n_levels``: the calibrated probability of those nodes.
    """

    codes: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None
    novelty: np.ndarray | None = None
    prediction_sets: np.ndarray | None = None
    level_codes: np.ndarray | None = None
    level_confidence: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells (rows) of the block."""
        return int(self.codes.shape[0])


def check_chunk(
    chunk: sp.csr_matrix, *, check: CountCheck, where: str, layers: Iterable[str] = ()
) -> None:
    """Raise :class:`~ginseng.InputError` if ``chunk`` fails ``check``, naming ``where``.

    ``layers`` (the AnnData's layer names) let the ``"raw"`` message suggest one. The
    ``"raw"`` check logs a warning for non-integer values it accepts as counts.
    """
    if check == "raw":
        check_raw_counts(chunk, where=where, layers=layers)
    elif check == "sign":
        _check_sign_and_finite(chunk, where=where)
    elif check != "none":
        raise InputError(f"check must be 'raw', 'sign' or 'none', got {check!r}.")


def classify_chunk(
    chunk: Any,
    alignment: GeneAlignment,
    state: GinsengModelState,
    *,
    check: CountCheck = "raw",
    where: str = "adata.X",
    layers: Iterable[str] = (),
    probabilities: bool = True,
    missing_genes: Literal["mean", "zero"] = "mean",
    novelty: bool = False,
    prediction_sets: float | None = None,
) -> ChunkResult:
    """Classify one block of cells: check the counts, align the genes, predict.

    Parameters
    ----------
    chunk
        Raw counts of some cells (rows) over the query's genes (columns): scipy sparse
        or dense.
    alignment
        Where the model's genes are among the query's columns (:func:`align_genes`).
    state
        The model.
    check
        Count check (see :func:`check_chunk`).
    where, layers
        The matrix's name and the AnnData's layers, for error messages.
    probabilities
        Keep the probabilities of every label.
    missing_genes
        ``"mean"``: a model gene the query lacks (``alignment.missing``) is unknown and
        set to its training mean; ``"zero"``: it is read as zero counts.
    novelty
        Compute the novelty score (needs ``state.uncertainty``).
    prediction_sets
        Level ``alpha`` of the conformal prediction sets to compute (needs
        ``state.uncertainty``), or ``None``.

    Returns
    -------
    The block's :class:`ChunkResult`.
    """
    unc = state.uncertainty
    if (novelty or prediction_sets is not None) and unc is None:
        raise InputError(
            "This model stores no novelty statistics or conformal scores (it was trained "
            "before ginseng 0.3); retrain it to get novelty scores and prediction sets."
        )
    chunk = chunk.tocsr() if sp.issparse(chunk) else sp.csr_matrix(np.asarray(chunk))
    if chunk.ndim != 2 or chunk.shape[1] != alignment.n_query_genes:
        raise InputError(
            f"{where}: a block of shape {chunk.shape} does not match the "
            f"{alignment.n_query_genes} genes the alignment was made for (adata.var)."
        )
    if missing_genes not in ("mean", "zero"):
        raise InputError(f"missing_genes must be 'mean' or 'zero', got {missing_genes!r}.")
    check_chunk(chunk, check=check, where=where, layers=layers)
    missing = alignment.missing if missing_genes == "mean" else None
    hidden, logits = state.predict_hidden_logits(alignment.take(chunk), missing=missing)
    proba = calibrated_proba(logits, state.temperature)
    codes = proba.argmax(axis=1).astype(np.int32)
    confidence = proba[np.arange(len(proba)), codes].astype(np.float32)
    scores = members = None
    if unc is not None and novelty:
        scores = novelty_scores(hidden, unc)
    if unc is not None and prediction_sets is not None:
        members = prediction_set_members(proba, unc.thresholds(prediction_sets))
    level_codes = level_confidence = None
    if state.hierarchy is not None:
        level_codes, level_confidence = state.hierarchy.level_calls(proba)
    return ChunkResult(
        codes,
        confidence,
        proba if probabilities else None,
        scores,
        members,
        level_codes,
        level_confidence,
    )


def calibrated_proba(logits: np.ndarray, temperature: float) -> np.ndarray:
    """float32 ``softmax(logits / temperature)``, as :meth:`GinsengModelState.predict_proba`."""
    from scipy.special import softmax

    return softmax(logits.astype(np.float64) / temperature, axis=1).astype(np.float32)


def classify_chunks(
    matrix: Any,
    alignment: GeneAlignment,
    state: GinsengModelState,
    *,
    batch_size: int,
    check_counts: bool = True,
    where: str = "adata.X",
    layers: Iterable[str] = (),
    probabilities: bool = True,
    missing_genes: Literal["mean", "zero"] = "mean",
    novelty: bool = False,
    prediction_sets: float | None = None,
) -> ChunkResult:
    """Run :func:`~ginseng.tl.kernel.classify_chunk` over ``matrix``, ``batch_size`` rows at a time.

    The serial driver of :func:`ginseng.tl.classify`: reads the matrix (in memory,
    backed or an anndata sparse dataset) a block at a time with a progress bar and
    gathers the results, so memory holds two blocks (the next is read in the
    background while this one is classified, ``ginseng.data.read_ahead``) plus the
    results. With
    ``check_counts``, the first block with values gets the ``"raw"`` check and the
    others the cheap ``"sign"`` check.
    """
    n = int(matrix.shape[0])
    codes = np.empty(n, np.int32)
    confidence = np.empty(n, np.float32)
    proba = np.empty((n, state.n_labels), np.float32) if probabilities else None
    scores = np.empty(n, np.float32) if novelty else None
    members = np.empty((n, state.n_labels), bool) if prediction_sets is not None else None
    n_levels = 0 if state.hierarchy is None else state.hierarchy.n_levels
    level_codes = np.empty((n, n_levels), np.int32) if n_levels else None
    level_confidence = np.empty((n, n_levels), np.float32) if n_levels else None
    layers = list(layers)
    raw_checked = not check_counts
    bar = progress(total=n, desc="classifying", unit="cells")
    for rows, chunk in read_ahead(iter_row_chunks(matrix, batch_size)):
        check: CountCheck = "none" if not check_counts else "sign" if raw_checked else "raw"
        part = classify_chunk(
            chunk,
            alignment,
            state,
            check=check,
            where=where,
            layers=layers,
            probabilities=probabilities,
            missing_genes=missing_genes,
            novelty=novelty,
            prediction_sets=prediction_sets,
        )
        raw_checked = raw_checked or chunk.nnz > 0
        codes[rows], confidence[rows] = part.codes, part.confidence
        if proba is not None:
            proba[rows] = part.probabilities
        if scores is not None:
            scores[rows] = part.novelty
        if members is not None:
            members[rows] = part.prediction_sets
        if level_codes is not None and level_confidence is not None:
            level_codes[rows], level_confidence[rows] = part.level_codes, part.level_confidence
        bar.update(part.n_cells)
    bar.close()
    return ChunkResult(codes, confidence, proba, scores, members, level_codes, level_confidence)
