"""The trainer's hook after calibration: fit novelty statistics and conformal scores.

Called once by :meth:`GinsengClassifierTrainer.fit` on the kept weights, on the same
holdout (random cells, or whole held-out groups) the temperature was fitted on; see
:mod:`ginseng.model.uncertainty` for what is fitted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..model.uncertainty import REFERENCE_CELLS, Uncertainty, fit_uncertainty
from ._loop import EVAL_BATCH, pad_rows

if TYPE_CHECKING:
    from ..data.dataset import GinsengDataset
    from ..model.state import GinsengModelState

# Rows per read of the reference passes, and per compiled forward call: the rows are
# padded to it, so that one compiled shape serves every batch, the training pass's and
# the holdout pass's (and the trainer's holdout evaluation, which pads to the same).
_BATCH = EVAL_BATCH

Features = Callable[[np.ndarray], tuple[Any, Any]]


def _features(
    state: GinsengModelState,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    limit: int,
    features: Features,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hidden features, logits and labels of up to ``limit`` cells of ``batches``.

    Each batch's forward pass is dispatched before the previous one's results are
    copied back, so that reading the next batch overlaps with computing this one. The
    results go into arrays of ``limit`` rows (``limit`` is at most the split's size),
    so they are held once, not as a list of pieces and their concatenation.
    """
    width = int(state.config["hidden_dim"])
    hidden = np.empty((limit, width), np.float32)
    logits = np.empty((limit, state.n_labels), np.float32)
    labels = np.empty(limit, np.int64)
    in_flight: tuple[Any, Any, int, int] | None = None

    def collect(h: Any, z: Any, start: int, m: int) -> None:
        hidden[start : start + m] = np.asarray(h)[:m]
        logits[start : start + m] = np.asarray(z)[:m]

    seen = 0
    for x, y in batches:
        m = min(len(y), limit - seen)
        if m <= 0:
            break
        h, z = features(pad_rows(np.asarray(x[:m], np.float32), _BATCH))
        if in_flight is not None:
            collect(*in_flight)
        in_flight = (h, z, seen, m)
        labels[seen : seen + m] = y[:m]
        seen += m
        if seen >= limit:
            break
    if in_flight is not None:
        collect(*in_flight)
    return hidden[:seen], logits[:seen], labels[:seen]


def fit_reference_uncertainty(
    state: GinsengModelState,
    dataset: GinsengDataset,
    *,
    features: Features | None = None,
    holdout: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]] | None = None,
) -> Uncertainty:
    """Novelty statistics from training cells, reference quantiles and conformal scores from the holdout.

    Reads up to :data:`~ginseng.model.uncertainty.REFERENCE_CELLS` training cells (in
    store order, which is shuffled) and every holdout cell once, in evaluation mode.
    ``features`` maps a batch of raw counts (``_BATCH`` rows, zero-padded) to the
    model's last hidden layer and logits; by default
    :meth:`~ginseng.model.GinsengModelState.predict_hidden_logits` (the trainer passes
    its own compiled evaluation step, which computes the same). ``holdout`` returns the
    holdout batches in store order (the trainer passes the ones it keeps in memory);
    by default they are streamed from ``dataset``'s ``"test"`` split.
    """
    if features is None:

        def features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return state.predict_hidden_logits(x, batch_size=_BATCH)

    stream = dataset.stream
    sizes = {name: int(rows.size) for name, rows in dataset.splits.items()}
    n_train = min(REFERENCE_CELLS, sizes.get("train", 0))
    train = _features(
        state, stream(_BATCH, "train", shuffle=False, drop_last=False), n_train, features
    )
    if holdout is None:

        def holdout() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            return stream(_BATCH, "test", shuffle=False, drop_last=False)

    held = _features(state, holdout(), sizes.get("test", 0), features)
    return fit_uncertainty((train[0], train[2]), held, state.n_labels, float(state.temperature))
