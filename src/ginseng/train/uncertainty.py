"""The trainer's hook after calibration: fit novelty statistics and conformal scores.

Called once by :meth:`GinsengClassifierTrainer.fit` on the kept weights, on the same
holdout (random cells, or whole held-out groups) the temperature was fitted on; see
:mod:`ginseng.model.uncertainty` for what is fitted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..model.uncertainty import REFERENCE_CELLS, Uncertainty, fit_uncertainty

if TYPE_CHECKING:
    from ..data.dataset import GinsengDataset
    from ..model.state import GinsengModelState

# Rows per read of the reference passes.
_BATCH = 1024


def _features(
    state: GinsengModelState, batches: Iterator[tuple[np.ndarray, np.ndarray]], limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hidden features, logits and labels of up to ``limit`` cells of ``batches``."""
    hidden, logits, labels = [], [], []
    seen = 0
    for x, y in batches:
        h, z = state.predict_hidden_logits(x[: limit - seen])
        hidden.append(h)
        logits.append(z)
        labels.append(np.asarray(y[: limit - seen]))
        seen += len(h)
        if seen >= limit:
            break
    width = int(state.config["hidden_dim"])
    if not labels:
        empty = np.zeros((0, width), np.float32)
        return empty, np.zeros((0, state.n_labels), np.float32), np.zeros(0, np.int64)
    return np.concatenate(hidden), np.concatenate(logits), np.concatenate(labels).astype(np.int64)


def fit_reference_uncertainty(state: GinsengModelState, dataset: GinsengDataset) -> Uncertainty:
    """Novelty statistics from training cells, reference quantiles and conformal scores from the holdout.

    Reads up to :data:`~ginseng.model.uncertainty.REFERENCE_CELLS` training cells (in
    store order, which is shuffled) and every holdout cell once, in evaluation mode.
    """
    stream = dataset.stream
    train = _features(
        state, stream(_BATCH, "train", shuffle=False, drop_last=False), REFERENCE_CELLS
    )
    holdout = _features(state, stream(_BATCH, "test", shuffle=False, drop_last=False), 2**62)
    return fit_uncertainty((train[0], train[2]), holdout, state.n_labels, float(state.temperature))
