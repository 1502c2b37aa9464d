"""The trainer's hook after calibration: fit novelty statistics and conformal scores.

Called once by :meth:`GinsengClassifierTrainer.fit` on the kept weights, on the same
holdout (random cells, or whole held-out groups) the temperature was fitted on; see
:mod:`ginseng.model.uncertainty` for what is fitted.

Memory: the last hidden layer of up to
:data:`~ginseng.model.uncertainty.REFERENCE_CELLS` training cells is held to fit the
novelty statistics (100,000 x 256 float32: 100 MB at most, whatever the reference's
size). The holdout is then streamed once, and of each held-out cell only its float32
novelty score, its float32 nonconformity and its int64 label code are kept (16 bytes
per cell, not its ``hidden_dim + n_labels`` float32 features).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..model.novelty import fit_novelty, novelty_scores
from ..model.uncertainty import (
    REFERENCE_CELLS,
    Uncertainty,
    nonconformity_scores,
    novelty_statistics,
    uncertainty_from_scores,
)
from ._loop import EVAL_BATCH, pad_rows

if TYPE_CHECKING:
    from ..data.dataset import GinsengDataset
    from ..model.state import GinsengModelState

# Rows per read of the reference passes, and per compiled forward call: the rows are
# padded to it, so that one compiled shape serves every batch, the training pass's and
# the holdout pass's (and the trainer's holdout evaluation, which pads to the same).
_BATCH = EVAL_BATCH

Features = Callable[[np.ndarray], tuple[Any, Any]]
Batches = Iterator[tuple[np.ndarray, np.ndarray]]


def _dispatched(
    batches: Batches, limit: int, features: Features
) -> Iterator[tuple[Any, Any, np.ndarray, int]]:
    """The forward pass of each batch of up to ``limit`` cells, one batch ahead.

    Yields ``(hidden, logits, labels, start)`` per batch, ``hidden`` and ``logits``
    as ``features`` returns them (``_BATCH`` padded rows, possibly not computed yet),
    ``labels`` the batch's ``m`` label codes and ``start`` its first cell's position.
    Each batch's forward pass is dispatched before the previous batch is yielded, so
    that copying back and using one batch's results overlaps with computing the next
    one.
    """
    in_flight: tuple[Any, Any, np.ndarray, int] | None = None
    seen = 0
    for x, y in batches:
        m = min(len(y), limit - seen)
        if m <= 0:
            break
        h, z = features(pad_rows(np.asarray(x[:m], np.float32), _BATCH))
        if in_flight is not None:
            yield in_flight
        in_flight = (h, z, np.asarray(y[:m], np.int64), seen)
        seen += m
        if seen >= limit:
            break
    if in_flight is not None:
        yield in_flight


def _features(
    state: GinsengModelState, batches: Batches, limit: int, features: Features
) -> tuple[np.ndarray, np.ndarray]:
    """Hidden features and labels of up to ``limit`` cells of ``batches``.

    The results go into arrays of ``limit`` rows (``limit`` is at most the split's
    size), so they are held once, not as a list of pieces and their concatenation.
    """
    hidden = np.empty((limit, int(state.config["hidden_dim"])), np.float32)
    labels = np.empty(limit, np.int64)
    seen = 0
    for h, _, y, start in _dispatched(batches, limit, features):
        m = len(y)
        hidden[start : start + m] = np.asarray(h)[:m]
        labels[start : start + m] = y
        seen = start + m
    return hidden[:seen], labels[:seen]


def _holdout_scores(
    batches: Batches,
    limit: int,
    features: Features,
    novelty: Uncertainty,
    temperature: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Novelty scores, nonconformity and labels of up to ``limit`` cells of ``batches``.

    One pass; per batch, only the three per-cell values are kept. Row by row they equal
    :func:`~ginseng.model.novelty.novelty_scores` and
    :func:`~ginseng.model.uncertainty.nonconformity_scores` of every cell's features at
    once: neither depends on the block it is computed in (``novelty_scores`` pads short
    blocks, whose products BLAS would round differently).
    """
    scores = np.empty(limit, np.float32)
    nonconf = np.empty(limit, np.float32)
    labels = np.empty(limit, np.int64)
    seen = 0
    for h, z, y, start in _dispatched(batches, limit, features):
        m = len(y)
        scores[start : start + m] = novelty_scores(np.asarray(h)[:m], novelty)
        nonconf[start : start + m] = nonconformity_scores(np.asarray(z)[:m], y, temperature)
        labels[start : start + m] = y
        seen = start + m
    return scores[:seen], nonconf[:seen], labels[:seen]


def fit_reference_uncertainty(
    state: GinsengModelState,
    dataset: GinsengDataset,
    *,
    features: Features | None = None,
    holdout: Callable[[], Batches] | None = None,
) -> Uncertainty:
    """Novelty statistics from training cells, reference quantiles and conformal scores from the holdout.

    Reads up to :data:`~ginseng.model.uncertainty.REFERENCE_CELLS` training cells (in
    store order, which is shuffled) and fits the novelty statistics on their last
    hidden layer; then reads every holdout cell once and keeps only its novelty score,
    nonconformity and label (the result equals
    :func:`~ginseng.model.uncertainty.fit_uncertainty` of the same features). Both
    passes run in evaluation mode.

    Parameters
    ----------
    state
        The trained model (its temperature already fitted).
    dataset
        The reference store, with its ``"train"`` and ``"test"`` splits. Without
        holdout cells, the novelty quantiles are those of the training cells read.
    features
        Maps a batch of raw counts (``_BATCH`` rows, zero-padded) to the model's last
        hidden layer and logits; by default
        :meth:`~ginseng.model.GinsengModelState.predict_hidden_logits` (the trainer
        passes its own compiled evaluation step, which computes the same).
    holdout
        Returns the holdout batches in store order (the trainer passes the ones it
        keeps in memory); by default they are streamed from ``dataset``'s ``"test"``
        split. At most the ``"test"`` split's number of cells are read from it, in
        batches of ``_BATCH`` rows but the last.

    Returns
    -------
    Uncertainty
        Novelty statistics, reference quantiles and conformal scores.
    """
    if features is None:

        def features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return state.predict_hidden_logits(x, batch_size=_BATCH)

    stream = dataset.stream
    sizes = {name: int(rows.size) for name, rows in dataset.splits.items()}
    n_train = min(REFERENCE_CELLS, sizes.get("train", 0))
    hidden, codes = _features(
        state, stream(_BATCH, "train", shuffle=False, drop_last=False), n_train, features
    )
    means, whiten = fit_novelty(hidden, codes, state.n_labels)
    novelty = novelty_statistics(means, whiten)
    if holdout is None:

        def holdout() -> Batches:
            return stream(_BATCH, "test", shuffle=False, drop_last=False)

    scores, nonconf, labels = _holdout_scores(
        holdout(), sizes.get("test", 0), features, novelty, float(state.temperature)
    )
    if not labels.size:  # no holdout: the reference quantiles of the training cells
        scores = novelty_scores(hidden, novelty)
    return uncertainty_from_scores(means, whiten, scores, nonconf, labels)
