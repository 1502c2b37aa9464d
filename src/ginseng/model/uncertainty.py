"""Novelty scores and conformal prediction sets: what a model stores, and the numbers.

Both are fitted at training time, once, after the temperature, and stored in the
model file; :func:`ginseng.tl.classify` uses them through :func:`novelty_scores` and
:func:`prediction_set_members`. The trainer (:mod:`ginseng.train.uncertainty`) fits the
novelty statistics on training features (:func:`ginseng.model.novelty.fit_novelty`, which
also holds :func:`~ginseng.model.novelty.novelty_scores`), then streams the holdout
and keeps two float32 numbers per held-out cell, its novelty score and its
nonconformity (:func:`nonconformity_scores`), from which :func:`uncertainty_from_scores`
makes the stored arrays; :func:`fit_uncertainty` does the same from whole feature
arrays. Everything here is numpy: no jax.

Novelty
    The Mahalanobis distance (Lee et al., 2018) of a cell's last hidden layer to the
    nearest reference label: class means ``mu_k`` and one shared (pooled within-label)
    covariance ``S``, estimated on up to :data:`REFERENCE_CELLS` training cells, with a
    small ridge. ``novelty = min_k sqrt((h - mu_k)^T S^-1 (h - mu_k))``. A cell between
    two known types is near both means (ambiguous, low confidence, low novelty); a
    cell unlike every reference type is far from all of them (high novelty, whatever
    its confidence). Quantiles of the score over the held-out reference cells are
    stored, so a cut-off can be given as a reference quantile
    (:meth:`Uncertainty.novelty_cutoff`).

Prediction sets
    Class-conditional (Mondrian) split-conformal prediction (Vovk et al., 2005): the
    nonconformity score of a held-out cell is ``1 - p_y`` (its calibrated probability
    of its true label ``y``); the sorted scores of each label are stored. For a level
    ``alpha``, label ``k`` with ``n_k`` calibration cells enters a cell's set when
    ``1 - p_k <= q_k``, ``q_k`` the ``ceil((n_k + 1)(1 - alpha))``-th smallest score of
    label ``k``. Then a new cell of label ``k`` (exchangeable with the holdout) is
    covered with probability at least ``1 - alpha`` for every label, and at most
    ``1 - alpha + 1 / (n_k + 1)``. A label with fewer than
    :data:`MIN_LABEL_CALIBRATION` held-out cells, or with ``alpha < 1 / (n_k + 1)``
    (where no finite ``q_k`` exists), uses the threshold of all held-out cells pooled
    instead (Ding et al., 2023): marginal coverage only, but no label with a handful of
    cells enters (nearly) every set. A set can be empty (no label is plausible); with
    equal thresholds a non-empty set always holds the predicted (argmax) label.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .novelty import fit_novelty, novelty_scores

# Training cells read to fit the novelty means and covariance.
REFERENCE_CELLS = 100_000
# Labels with fewer held-out cells than this share the pooled conformal threshold.
MIN_LABEL_CALIBRATION = 20
# Number of stored reference quantiles of the novelty score (0, 0.001, ..., 1).
N_QUANTILES = 1001
# The arrays of Uncertainty, as stored in the model file (group "uncertainty").
FIELDS = (
    "novelty_means",
    "novelty_whiten",
    "novelty_quantiles",
    "conformal_scores",
    "conformal_offsets",
)


@dataclass(eq=False)
class Uncertainty:
    """Reference statistics for novelty scores and per-label conformal scores.

    Attributes
    ----------
    novelty_means
        float32 ``n_labels x hidden_dim``: each label's mean last-hidden-layer output
        over the reference training cells, multiplied by ``novelty_whiten``
        (NaN rows for labels without training cells).
    novelty_whiten
        float32 ``hidden_dim x hidden_dim`` matrix ``W`` with ``W W^T = S^-1``, the
        inverse of the pooled within-label covariance (plus ridge).
    novelty_quantiles
        float32 quantiles ``0, 0.001, ..., 1`` of the novelty score over the held-out
        reference cells (the training cells when there was no holdout).
    conformal_scores
        float32 nonconformity scores ``1 - p_y`` of the held-out cells, sorted within
        each label, labels one after another in model order.
    conformal_offsets
        int64 ``n_labels + 1`` offsets: label ``k``'s scores are
        ``conformal_scores[offsets[k]:offsets[k + 1]]``.
    """

    novelty_means: np.ndarray
    novelty_whiten: np.ndarray
    novelty_quantiles: np.ndarray
    conformal_scores: np.ndarray
    conformal_offsets: np.ndarray

    def __post_init__(self) -> None:
        for name in FIELDS:
            dtype = np.int64 if name == "conformal_offsets" else np.float32
            setattr(self, name, np.asarray(getattr(self, name), dtype=dtype))

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored arrays by name (``FIELDS``)."""
        return {name: getattr(self, name) for name in FIELDS}

    def restrict(self, keep: np.ndarray) -> Uncertainty:
        """The statistics of the labels where ``keep`` (a boolean mask) is true.

        Novelty then measures the distance to the nearest kept label; the reference
        quantiles (of all held-out cells) and each kept label's conformal scores stay
        as fitted.
        """
        keep = np.asarray(keep, bool)
        pieces = [
            self.conformal_scores[start:stop]
            for k, (start, stop) in enumerate(_pairs(self.conformal_offsets))
            if keep[k]
        ]
        offsets = np.zeros(int(keep.sum()) + 1, np.int64)
        np.cumsum([p.size for p in pieces], out=offsets[1:])
        scores = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        return Uncertainty(
            self.novelty_means[keep], self.novelty_whiten, self.novelty_quantiles, scores, offsets
        )

    @property
    def n_calibration(self) -> np.ndarray:
        """int64 number of calibration (held-out) cells of each label."""
        return np.diff(self.conformal_offsets)

    def novelty_cutoff(self, quantile: float) -> float:
        """The novelty score that a fraction ``quantile`` of held-out reference cells stay below.

        ``classify(..., novelty_threshold=uncertainty.novelty_cutoff(0.99))`` marks as
        ``"Novel"`` the cells scoring above 99% of known cells, so about 1% of cells of
        known types are marked.
        """
        from .._validate import fraction

        fraction("quantile", quantile)
        grid = np.linspace(0.0, 1.0, len(self.novelty_quantiles))
        return float(np.interp(quantile, grid, self.novelty_quantiles))

    def thresholds(self, alpha: float) -> np.ndarray:
        """Per-label score thresholds ``q_k`` for level ``alpha`` (``inf``: always in the set).

        Labels in :meth:`pooled` get the threshold of all held-out cells pooled.
        """
        pooled_scores = np.sort(self.conformal_scores)
        pooled_q = _conformal_quantile(pooled_scores, alpha)
        out = np.full(len(self.conformal_offsets) - 1, pooled_q)
        own = ~self.pooled(alpha)
        for k, (start, stop) in enumerate(_pairs(self.conformal_offsets)):
            if own[k]:
                out[k] = _conformal_quantile(self.conformal_scores[start:stop], alpha)
        return out

    def pooled(self, alpha: float) -> np.ndarray:
        """Labels with too few held-out cells for their own threshold at ``alpha``.

        A label needs ``n_k >= MIN_LABEL_CALIBRATION`` held-out cells and
        ``alpha >= 1 / (n_k + 1)``; the others share the threshold of all held-out cells
        pooled (marginal coverage only, as the "null cluster" of Ding et al., 2023).
        """
        n = self.n_calibration
        return (n < MIN_LABEL_CALIBRATION) | (alpha < 1.0 / (n + 1.0))

    def min_alpha(self) -> np.ndarray:
        """Per label, the smallest ``alpha`` with a finite own threshold: ``1 / (n_k + 1)``."""
        return 1.0 / (self.n_calibration + 1.0)

    def check(self, n_labels: int, hidden_dim: int) -> None:
        """Raise ``ValueError`` if the arrays do not fit a model of these sizes."""
        shapes = {
            "novelty_means": (n_labels, hidden_dim),
            "novelty_whiten": (hidden_dim, hidden_dim),
            "novelty_quantiles": (N_QUANTILES,),
            "conformal_offsets": (n_labels + 1,),
        }
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"uncertainty/{name} has shape {getattr(self, name).shape}, expected {shape}"
                )
        scores, offsets = self.conformal_scores, self.conformal_offsets
        if scores.ndim != 1:
            raise ValueError("uncertainty/conformal_scores is not one-dimensional")
        if offsets[0] != 0 or offsets[-1] != scores.size or (np.diff(offsets) < 0).any():
            raise ValueError(
                "uncertainty/conformal_offsets do not run from 0 up to the "
                f"{scores.size} conformal scores"
            )
        if not (np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()):
            raise ValueError("uncertainty/conformal_scores must lie in [0, 1]")
        for start, stop in _pairs(offsets):
            if (np.diff(scores[start:stop]) < 0).any():
                raise ValueError("uncertainty/conformal_scores are not sorted within each label")
        quantiles = self.novelty_quantiles
        if not np.isfinite(quantiles).all() or (np.diff(quantiles) < 0).any():
            raise ValueError("uncertainty/novelty_quantiles must be finite and non-decreasing")
        if not np.isfinite(self.novelty_whiten).all():
            raise ValueError("uncertainty/novelty_whiten holds NaN or infinite values")
        # A label without training cells has NaN means; anything else must be finite.
        means = self.novelty_means
        if not (np.isfinite(means) | np.isnan(means).all(axis=1, keepdims=True)).all():
            raise ValueError("uncertainty/novelty_means holds infinite or partly NaN rows")
        if np.isnan(means).all():
            raise ValueError("uncertainty/novelty_means has no finite row")


def _conformal_quantile(sorted_scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``n`` sorted scores, ``inf`` past ``n``."""
    n = sorted_scores.size
    rank = math.ceil((n + 1) * (1.0 - alpha))
    return float(sorted_scores[rank - 1]) if 1 <= rank <= n else math.inf


def _pairs(offsets: np.ndarray) -> Iterable[tuple[int, int]]:
    """``(offsets[k], offsets[k + 1])`` as Python ints."""
    return itertools.pairwise(int(v) for v in offsets)


def prediction_set_members(proba: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Boolean cells x labels: label ``k`` is in a cell's set when ``1 - p_k <= q_k``.

    ``thresholds`` come from :meth:`Uncertainty.thresholds`. A set may be empty: no
    label is as plausible as the held-out cells of that label were.
    """
    return (1.0 - np.asarray(proba, np.float64)) <= thresholds[None, :]


def join_sets(
    members: np.ndarray, labels: Iterable[str], sep: str = "|"
) -> tuple[np.ndarray, list[str]]:
    """Each cell's set as one string of labels in model order, joined by ``sep``.

    Returns the int32 code of each cell's set and the distinct sets (the categories):
    few distinct sets occur, so each is joined once.
    """
    names = np.asarray(list(labels), dtype=object)
    members = np.asarray(members, dtype=bool)
    # One key per row: its bits packed into bytes, viewed as a single fixed-size value.
    packed = np.ascontiguousarray(np.packbits(members, axis=1))
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    joined = [sep.join(names[members[i]]) for i in first]
    return np.asarray(inverse, dtype=np.int32).ravel(), joined


def novelty_statistics(means: np.ndarray, whiten: np.ndarray) -> Uncertainty:
    """An :class:`Uncertainty` holding only the novelty statistics of :func:`fit_novelty`.

    Enough for :func:`novelty_scores`; its quantiles are zeros and it holds no
    conformal scores yet (:func:`uncertainty_from_scores` makes the complete one).

    Parameters
    ----------
    means, whiten
        What :func:`fit_novelty` returns.

    Returns
    -------
    Uncertainty
        Placeholder quantiles and no conformal scores: not for a model file.
    """
    n_labels = len(means)
    return Uncertainty(means, whiten, np.zeros(N_QUANTILES), np.zeros(0), np.zeros(n_labels + 1))


def nonconformity_scores(logits: np.ndarray, labels: np.ndarray, temperature: float) -> np.ndarray:
    """float32 nonconformity ``1 - p_y`` of each cell: one minus its calibrated probability of its label.

    Parameters
    ----------
    logits
        Cells x labels logits.
    labels
        Each cell's label code.
    temperature
        The calibration temperature: ``p = softmax(logits / temperature)``, in float64.

    Returns
    -------
    numpy.ndarray
        One value per cell. Rows are independent: the values of a batch of cells are
        those of the same cells within a larger array.
    """
    from scipy.special import softmax

    labels = np.asarray(labels, np.int64)
    proba = softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return (1.0 - proba[np.arange(len(labels)), labels]).astype(np.float32)


def uncertainty_from_scores(
    means: np.ndarray,
    whiten: np.ndarray,
    novelty: np.ndarray,
    nonconformity: np.ndarray,
    labels: np.ndarray,
) -> Uncertainty:
    """The complete :class:`Uncertainty` from the novelty statistics and per-cell scores.

    Only two numbers per reference cell are needed, not its hidden features or logits,
    so the trainer streams the holdout and keeps these alone.

    Parameters
    ----------
    means, whiten
        The novelty statistics (:func:`fit_novelty`).
    novelty
        Novelty scores (:func:`novelty_scores`) of the held-out cells, or of the
        training cells when there is no holdout: their quantiles are stored.
    nonconformity
        Nonconformity ``1 - p_y`` (:func:`nonconformity_scores`) of the held-out cells (may be
        empty).
    labels
        Label codes of the held-out cells, one per ``nonconformity``.

    Returns
    -------
    Uncertainty
        The arrays a model file stores.
    """
    n_labels = len(means)
    labels = np.asarray(labels, np.int64)
    quantiles = np.quantile(
        np.asarray(novelty, np.float32).astype(np.float64), np.linspace(0.0, 1.0, N_QUANTILES)
    )
    # Rounding to float32 is monotone: the float32 scores sorted are the float64
    # scores sorted, then rounded (as they were stored when those were kept).
    scores = np.asarray(nonconformity, np.float32)
    order = np.lexsort((scores, labels))
    counts = np.bincount(labels, minlength=n_labels)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return Uncertainty(
        means,
        whiten,
        np.maximum.accumulate(quantiles),
        np.clip(scores[order], 0.0, 1.0),
        offsets,
    )


def fit_uncertainty(
    train: tuple[np.ndarray, np.ndarray],
    holdout: tuple[np.ndarray, np.ndarray, np.ndarray],
    n_labels: int,
    temperature: float,
) -> Uncertainty:
    """Fit the novelty statistics and the conformal scores from whole feature arrays.

    :func:`fit_novelty`, then :func:`novelty_scores` and :func:`nonconformity_scores` of every
    held-out cell, then :func:`uncertainty_from_scores`. The trainer computes the same
    while streaming the holdout (:func:`ginseng.train.uncertainty.fit_reference_uncertainty`),
    so that it never holds the holdout's features.

    Parameters
    ----------
    train
        Hidden features and label codes of reference training cells.
    holdout
        Hidden features, logits and label codes of the held-out cells (may be empty:
        the novelty quantiles are then those of the training cells).
    n_labels
        Number of labels.
    temperature
        The calibration temperature (conformal scores use calibrated probabilities).

    Returns
    -------
    Uncertainty
        The arrays a model file stores.
    """
    hidden, codes = train
    means, whiten = fit_novelty(hidden, codes, n_labels)
    h_hold, logits, y_hold = holdout
    reference = h_hold if len(y_hold) else hidden
    novelty = novelty_scores(reference, novelty_statistics(means, whiten))
    scores = nonconformity_scores(logits, y_hold, temperature)
    return uncertainty_from_scores(means, whiten, novelty, scores, y_hold)


def summary(uncertainty: Uncertainty | None) -> dict[str, Any]:
    """A JSON-able description for records and the model card."""
    if uncertainty is None:
        return {}
    n = uncertainty.n_calibration
    return {
        "novelty": "mahalanobis",
        "n_calibration": int(n.sum()),
        "min_label_calibration": int(n.min()) if n.size else 0,
    }
