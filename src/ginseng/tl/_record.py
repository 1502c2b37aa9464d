"""What ``tl`` functions record in ``adata.uns["ginseng"]``: h5ad-safe summaries."""

from __future__ import annotations

from typing import Any

import numpy as np


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """h5ad cannot store ``None``; tuples become lists so they write as arrays."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None}


def model_summary(state) -> dict[str, Any]:
    """The model-card figures of ``state`` as plain scalars."""
    metrics = state.metrics
    return {
        "n_genes": state.n_genes,
        "n_labels": state.n_labels,
        "accuracy": float(metrics.get("accuracy", np.nan)),
        "macro_f1": float(metrics.get("macro_f1", np.nan)),
        "ece": float(metrics.get("ece", np.nan)),
        "ece_uncalibrated": float(metrics.get("ece_uncalibrated", np.nan)),
        "temperature": float(state.temperature),
        "best_epoch": int(metrics.get("best_epoch", 0)),
        "data_fingerprint": str(state.provenance.get("data_fingerprint", "")),
    }
