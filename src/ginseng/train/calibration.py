"""Holdout metrics and temperature scaling, in numpy (no jax).

Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T`` fitted to
minimise the negative log-likelihood on held-out cells: it changes confidences, never
the predicted label, so accuracy and F1 are unaffected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from .._logging import logger

ECE_BINS = 15
# Temperatures are searched in [1/_T_RANGE, _T_RANGE] on a log scale.
_T_RANGE = 100.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    logp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Return the temperature minimising the holdout NLL (1.0 when there is no holdout)."""
    if len(labels) == 0:
        return 1.0
    logits = np.asarray(logits, np.float64)
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))),
        bounds=(-np.log(_T_RANGE), np.log(_T_RANGE)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


def expected_calibration_error(
    proba: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Expected calibration error of probabilities ``proba`` (cells x labels).

    Cells are binned by confidence (max probability) into ``n_bins`` equal-width bins;
    ``|accuracy - confidence|`` is averaged over bins, weighted by bin size.
    """
    if len(labels) == 0:
        return float("nan")
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == labels
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_labels: int) -> np.ndarray:
    """Counts ``C[i, j]`` of cells with true label ``i`` predicted as ``j``."""
    matrix = np.zeros((n_labels, n_labels), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def f1_per_label(matrix: np.ndarray) -> np.ndarray:
    """Per-label F1 from a confusion matrix; NaN for labels with no true and no predicted cell."""
    tp = np.diag(matrix).astype(np.float64)
    denom = matrix.sum(axis=0) + matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, label_names: np.ndarray, temperature: float = 1.0
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label F1, NLL, ECE and confusion matrix of holdout logits.

    Macro-F1 averages over the labels present in ``labels`` (a label absent from the
    holdout has no meaningful F1). Everything is JSON-able.
    """
    n_labels = len(label_names)
    predicted = logits.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, n_labels)
    f1 = f1_per_label(matrix)
    present = matrix.sum(axis=1) > 0
    proba = softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return {
        "n_cells": len(labels),
        "accuracy": float((predicted == labels).mean()) if len(labels) else float("nan"),
        "macro_f1": float(np.mean(f1[present])) if present.any() else float("nan"),
        "f1_per_label": {
            str(name): (None if np.isnan(v) else float(v))
            for name, v in zip(label_names, f1, strict=True)
        },
        "nll": nll(logits, labels, temperature) if len(labels) else float("nan"),
        "ece": expected_calibration_error(proba, labels),
        "confusion": matrix.tolist(),
    }


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, label_names: np.ndarray
) -> dict[str, Any]:
    """Fit the temperature on holdout logits and return the metrics before and after it."""
    temperature = fit_temperature(logits, labels)
    metrics = classification_metrics(logits, labels, label_names)
    calibrated = classification_metrics(logits, labels, label_names, temperature)
    metrics["ece_uncalibrated"] = metrics.pop("ece")
    metrics["nll_uncalibrated"] = metrics.pop("nll")
    metrics["ece"] = calibrated["ece"]
    metrics["nll"] = calibrated["nll"]
    metrics["temperature"] = temperature
    metrics["ece_bins"] = ECE_BINS
    return metrics


def holdout_split(dataset: Any, test_rows: np.ndarray, group_level: bool, ece: float) -> dict:
    """What the temperature was fitted on: random cells or whole held-out groups.

    With ``group_level`` the holdout is made of whole groups (donors, batches) the
    network never saw, so its ECE (``ece_heldout_groups``) estimates the calibration
    on a new group; a random-cell holdout shares donors and batches with training and
    says little about a new lab (see the calibration page of the docs).
    """
    names, groups = dataset.group_names, dataset.groups
    if not group_level or names is None or groups is None:
        if names is not None:
            logger.info(
                "the temperature is fitted on random held-out cells; group_level=True "
                "fits it on whole held-out groups (%d in the store), which predicts the "
                "calibration on a new batch or study better",
                len(names),
            )
        return {"holdout_split": "cells"}
    held = np.unique(groups[test_rows])
    return {
        "holdout_split": "groups",
        "n_heldout_groups": int(held.size),
        "heldout_groups": [str(g) for g in names[held]],
        "ece_heldout_groups": float(ece),
    }
