"""The first layer on the numpy side: sparse counts and the genes a query lacks.

Inference on sparse counts skips the dense first layer: :func:`first_linear_sparse`
multiplies only the non-zero counts (:func:`sparse_delta`), with the arithmetic of
:meth:`ginseng.model.network.GinsengClassifier.preprocess`. A model gene the query
lacks is unknown, not zero: it reads as its training mean, and the normalisation target
shrinks by the share of counts the present genes carry (:func:`present_share`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .network import CLIP, imputes_missing


def first_linear_sparse(
    config: dict[str, Any],
    params: dict[str, np.ndarray],
    X: sp.csr_matrix,
    *,
    missing: np.ndarray | None = None,
) -> np.ndarray:
    """The first Linear layer's output for raw counts ``X`` (CSR), from its non-zeros only.

    A zero count preprocesses to a per-gene constant ``h0`` (``clip(-mean * scale)``
    after standardisation, else 0), so ``preprocess(x) @ W + b`` equals
    ``(h0 @ W + b) + D @ W`` with ``D`` non-zero only where ``x`` is: ``nnz x hidden``
    operations instead of ``n_genes x hidden`` per cell. The clip is applied to each
    value exactly as in :meth:`GinsengClassifier.preprocess`.

    ``missing`` (boolean, one per gene) marks genes the query lacks: their value is
    unknown, not zero, so their ``h0`` is their training mean (see :func:`sparse_delta`)
    and the normalisation target is scaled by ``present_share``, as in
    :meth:`GinsengClassifier.preprocess` with ``present = ~missing``. Their columns of
    ``X`` must be empty.
    """
    kernel = params["blocks/0/linear/kernel"]
    bias = params["blocks/0/linear/bias"]
    D, h0 = sparse_delta(config, params, X, missing=missing)
    offset = h0 @ kernel + bias if h0.any() else bias
    return np.asarray(D @ kernel, dtype=np.float32) + offset.astype(np.float32)


def sparse_delta(
    config: dict[str, Any],
    params: dict[str, np.ndarray],
    X: sp.csr_matrix,
    *,
    missing: np.ndarray | None = None,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(D, h0)``: the preprocessed counts ``X`` (CSR) as ``h0 + D``, ``D`` sparse like ``X``.

    ``h0`` (one value per gene) is what a zero count preprocesses to (``clip(-mean *
    scale)`` when standardising, else 0) and, for a ``missing`` gene, its training mean
    (0 in standardised space, else the stored log-mean when the model imputes);
    ``D`` holds ``h - h0`` at the non-zero counts. The first layer
    (:func:`first_linear_sparse`) and the attributions
    (:func:`ginseng.model.attribution.preprocess_delta`) are built on it.
    """
    X = sp.csr_matrix(X, dtype=np.float32)
    if not X.has_canonical_format:
        # Entries stored twice must be summed before log1p, as a dense row would be.
        X = X.copy()
        X.sum_duplicates()
    values = X.data
    if config["normalize"]:
        total = np.asarray(X.sum(axis=1), dtype=np.float32).ravel()
        target = np.float32(config["target_sum"])
        if missing is not None:
            target = target * np.float32(present_share(config, params, missing))
        factor = target / np.maximum(total, np.float32(1.0))
        values = values * np.repeat(factor, np.diff(X.indptr))
    values = np.log(np.float32(1.0) + values)
    h0 = np.zeros(X.shape[1], np.float32)
    gaps = None if missing is None else np.asarray(missing, bool)
    if config["standardize"]:
        mean, scale = params["gene_mean"], params["gene_scale"]
        h0 = np.clip(-mean * scale, -CLIP, CLIP).astype(np.float32)
        if gaps is not None:
            h0[gaps] = 0.0
        values = np.clip((values - mean[X.indices]) * scale[X.indices], -CLIP, CLIP)
        values = values - h0[X.indices]
    elif gaps is not None and imputes_missing(config):
        h0[gaps] = params["gene_mean"][gaps]
    D = sp.csr_matrix((values.astype(np.float32), X.indices, X.indptr), shape=X.shape)
    return D, h0


def present_share(config: dict[str, Any], params: dict[str, np.ndarray], missing: Any) -> float:
    """Expected share of a cell's counts (over the model's genes) carried by the present genes.

    A query lacking some model genes has a smaller total, so normalising it to
    ``target_sum`` would inflate every present gene. The model's input is therefore
    normalised to ``target_sum * share``, which keeps each present gene at its expected
    level. A gene's expected normalised count is estimated from the stored statistics
    of its log-normalised values, taken as log-normal: ``exp(mean + std**2 / 2) - 1``
    with ``std = 1 / gene_scale`` (on Liu 2021 PBMC this is within 0.01 of the share
    measured on the training counts). 1.0 when nothing is missing or the model neither
    normalises nor standardises (no statistics to estimate from).
    """
    missing = np.asarray(missing, dtype=bool)
    if not missing.any() or not (config.get("normalize") and imputes_missing(config)):
        return 1.0
    mean = np.asarray(params["gene_mean"], np.float64)
    std = 1.0 / np.asarray(params["gene_scale"], np.float64)
    expected = np.maximum(np.expm1(mean + np.square(std) / 2.0), 0.0)
    total = float(expected.sum())
    if not np.isfinite(total) or total <= 0.0:
        return 1.0
    return float(np.clip(expected[~missing].sum() / total, 1e-3, 1.0))


def missing_genes_note(config: dict[str, Any]) -> str:
    """How a model built from ``config`` reads genes the query lacks (for ``uns``).

    ``"mean-imputed"`` when the model stores its training statistics (a missing gene
    is set to its training mean, 0 in standardised space; see :func:`imputes_missing`);
    otherwise ``"zero-filled"`` (older models without standardisation stored no mean,
    and 0 is log1p of a zero count).
    """
    return "mean-imputed" if imputes_missing(config) else "zero-filled"
