"""Novelty scores: Mahalanobis distance in the last hidden layer, fitted and scored.

The numbers behind :attr:`ginseng.model.uncertainty.Uncertainty.novelty_means` and
``novelty_whiten`` (see :mod:`ginseng.model.uncertainty` for what a model stores and
why): :func:`fit_novelty` fits them on reference features, :func:`novelty_scores`
scores cells with them. Everything here is numpy: no jax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .uncertainty import Uncertainty

# Rows of hidden features converted to float64 at a time while fitting the novelty.
FIT_ROWS = 8192
# Ridge added to the pooled covariance, relative to its mean variance.
RIDGE = 1e-3
# Rows a block of hidden features is padded to before scoring its novelty.
MIN_SCORE_ROWS = 128


def fit_novelty(
    hidden: np.ndarray, labels: np.ndarray, n_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Whitened class means and whitening matrix from reference hidden features.

    Two passes over :data:`FIT_ROWS` rows at a time, in float64: the class means, then
    the pooled within-label scatter around them. Memory stays at one block's, not at
    float64 copies of every feature (100,000 cells x 256 hidden units: 200 MB each).
    """
    labels = np.asarray(labels, np.int64)
    n, d = hidden.shape
    blocks = [slice(start, start + FIT_ROWS) for start in range(0, n, FIT_ROWS)]
    sums = np.zeros((n_labels, d))
    for rows in blocks:
        one_hot = np.zeros((len(labels[rows]), n_labels))
        one_hot[np.arange(one_hot.shape[0]), labels[rows]] = 1.0
        sums += one_hot.T @ np.asarray(hidden[rows], np.float64)
    counts = np.bincount(labels, minlength=n_labels)
    means = np.full((n_labels, d), np.nan)
    present = counts > 0
    means[present] = sums[present] / counts[present, None]
    cov = np.zeros((d, d))
    for rows in blocks:
        centred = np.asarray(hidden[rows], np.float64) - means[labels[rows]]
        cov += centred.T @ centred
    cov /= max(n - 1, 1)
    cov += RIDGE * max(float(np.trace(cov)) / d, 1e-12) * np.eye(d)
    # S^-1 = W W^T with W = inverse of the Cholesky factor's transpose.
    chol = np.linalg.cholesky(cov)
    whiten = np.linalg.inv(chol).T
    return (means @ whiten).astype(np.float32), whiten.astype(np.float32)


def novelty_scores(hidden: np.ndarray, uncertainty: Uncertainty) -> np.ndarray:
    """float32 novelty of each cell: Mahalanobis distance of ``hidden`` to the nearest label.

    ``hidden`` is the last hidden layer's output (cells x hidden_dim). A cell's score
    does not depend on how many other cells are scored with it.
    """
    # The whitening in float32 (2x cheaper than float64), the distances in float64: in
    # float32 the expansion |z|^2 - 2 z.m + |m|^2 loses digits to cancellation, which
    # made scores depend on the chunk size. BLAS also rounds a product of a few rows
    # differently (OpenBLAS: gemv for one row, other kernels for a handful), so a short
    # block (a last chunk, a small query) is scored padded to MIN_SCORE_ROWS rows.
    hidden = np.asarray(hidden, np.float32)
    n = hidden.shape[0]
    if n < MIN_SCORE_ROWS:
        hidden = np.concatenate(
            [hidden, np.zeros((MIN_SCORE_ROWS - n, hidden.shape[1]), np.float32)]
        )
    whiten = np.asarray(uncertainty.novelty_whiten, np.float32)
    z = (hidden @ whiten).astype(np.float64)
    means = uncertainty.novelty_means.astype(np.float64)
    means = means[np.isfinite(means).all(axis=1)]
    d2 = (
        np.square(z).sum(axis=1, keepdims=True)
        - 2.0 * (z @ means.T)
        + np.square(means).sum(axis=1)[None, :]
    )
    return np.sqrt(np.maximum(d2.min(axis=1)[:n], 0.0)).astype(np.float32)
