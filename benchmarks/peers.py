"""Peer classifiers for the accuracy benchmark, and the metrics they are scored with.

Needs the benchmark environment (``pip install -e ".[bench]"``, which brings
``celltypist==1.7.1`` and ``scikit-learn<1.8``). Each runner takes raw-count AnnData
objects, does its own preprocessing on copies (counted in its train/predict time, since
ginseng normalises inside the model) and returns a :class:`PeerResult`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import anndata as ad
import numpy as np


@dataclass
class PeerResult:
    """Predictions of one method on one test set."""

    y_pred: np.ndarray  # predicted label per test cell (str)
    proba: np.ndarray  # n_test x n_labels, columns in ``labels`` order
    labels: list[str]
    train_s: float
    predict_s: float

    @classmethod
    def from_proba(cls, proba, labels, train_s: float, predict_s: float) -> PeerResult:
        """Result whose prediction is the most probable of ``labels`` for each cell."""
        labels = [str(label) for label in labels]
        return cls(
            y_pred=np.asarray(labels, dtype=object)[np.asarray(proba).argmax(axis=1)],
            proba=np.asarray(proba),
            labels=labels,
            train_s=train_s,
            predict_s=predict_s,
        )


def log_cp10k(adata: ad.AnnData) -> ad.AnnData:
    """Return a copy holding log1p of counts normalised to 10,000 per cell (CellTypist's input)."""
    import scanpy as sc

    out = ad.AnnData(X=adata.X.copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


_WARM: set[int] = set()


def _warm_joblib(n_jobs: int) -> None:
    """Start joblib's worker processes once, outside any timing.

    CellTypist fits its one-vs-rest models in ``n_jobs`` loky workers; their start-up
    (about 10 s here, importing scikit-learn) would otherwise land in whichever fit runs
    first in the process.
    """
    if n_jobs in _WARM or n_jobs == 1:
        return
    import warnings

    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LogisticRegression(multi_class="ovr", n_jobs=n_jobs, max_iter=5).fit(
            rng.normal(size=(30, 3)), np.arange(30) % 3
        )
    _WARM.add(n_jobs)


def run_celltypist(
    train_adata: ad.AnnData,
    test_adata: ad.AnnData,
    label_key: str,
    seed: int,
    *,
    n_jobs: int = 2,
    feature_selection: bool = False,
) -> PeerResult:
    """Train CellTypist 1.7.1 with default settings and annotate ``test_adata``.

    Defaults: L2 logistic regression (lbfgs, one-vs-rest, C=1) on scaled log1p CP10k
    input, no SGD, no feature selection; annotation in "best match" mode without majority
    voting. ``feature_selection=True`` is CellTypist's own two-pass mode (a first fit, then
    a refit on the union of each label's top 300 genes). CellTypist matches the query's
    genes to the model's by name itself. Probabilities are CellTypist's per-class sigmoids of the decision scores (they
    do not sum to 1; their max is CellTypist's ``conf_score``). CellTypist's lbfgs fit has
    no randomness, so ``seed`` is accepted only for a uniform runner signature.
    """
    import celltypist

    logging.getLogger("celltypist").setLevel(logging.WARNING)
    _warm_joblib(n_jobs)
    t0 = time.perf_counter()
    train = log_cp10k(train_adata)
    model = celltypist.train(
        train,
        labels=train_adata.obs[label_key].astype(str).to_numpy(),
        check_expression=True,
        n_jobs=n_jobs,
        use_SGD=False,
        feature_selection=feature_selection,
    )
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = celltypist.annotate(log_cp10k(test_adata), model=model, majority_voting=False)
    predict_s = time.perf_counter() - t0
    prob = result.probability_matrix
    labels = [str(c) for c in prob.columns]
    return PeerResult(
        y_pred=result.predicted_labels["predicted_labels"].astype(str).to_numpy(),
        proba=prob.to_numpy(dtype=np.float64),
        labels=labels,
        train_s=train_s,
        predict_s=predict_s,
    )


def run_logreg(
    train_adata: ad.AnnData,
    test_adata: ad.AnnData,
    label_key: str,
    seed: int,
    *,
    max_iter: int = 1000,
    C: float = 1.0,
) -> PeerResult:
    """Multinomial L2 logistic regression (lbfgs) on log1p CP10k, no scaling.

    Each side is normalised over all its own genes; the model is fitted on the training
    genes that ``test_adata`` also has (all of them when both share one gene list).
    """
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    shared = train_adata.var_names[train_adata.var_names.isin(test_adata.var_names)]
    if shared.size == 0:
        raise ValueError("the training and test data share no gene names")
    train = log_cp10k(train_adata)[:, shared]
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    clf.fit(train.X, train_adata.obs[label_key].astype(str).to_numpy())
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    proba = clf.predict_proba(log_cp10k(test_adata)[:, shared].X)
    predict_s = time.perf_counter() - t0
    return PeerResult.from_proba(proba, clf.classes_, train_s, predict_s)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> float:
    """ECE with ``n_bins`` equal-width bins on [0, 1] of the confidence (max probability)."""
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    correct = np.asarray(correct, dtype=np.float64)
    # Bin i holds (i/n, (i+1)/n]; confidence 0 goes to the first bin.
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def metrics(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray, labels: list[str]
) -> dict[str, float | dict[str, float]]:
    """Accuracy, macro-F1, per-label F1 and ECE (15 bins on the max probability).

    Macro-F1 averages over the labels present in ``y_true``; a prediction of a label the
    test set lacks still lowers the recall of the true label. ``labels`` gives the column
    order of ``proba``.
    """
    from sklearn.metrics import accuracy_score, f1_score

    y_true = np.asarray(y_true, dtype=str)
    y_pred = np.asarray(y_pred, dtype=str)
    if proba.shape != (y_true.size, len(labels)):
        raise ValueError(f"proba has shape {proba.shape}, expected ({y_true.size}, {len(labels)})")
    present = sorted(set(y_true))
    per_label = f1_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(np.mean(per_label)),
        "ece": expected_calibration_error(proba.max(axis=1), y_pred == y_true),
        "per_label_f1": {str(k): float(v) for k, v in zip(present, per_label, strict=True)},
    }
