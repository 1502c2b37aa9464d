"""What a trained model records about its training (``GinsengModelState.provenance``).

When and with which versions it was trained, on which data (a fingerprint of the genes,
labels and label counts, the store's path), how (cells per split, batch size, steps,
passes per epoch, seconds) and on which devices.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from ..logging import versions
from ..model.state import data_fingerprint

if TYPE_CHECKING:
    from .._trainer_settings import GinsengClassifierTrainerSettings
    from ..data.dataset import GinsengDataset


def training_provenance(
    dataset: GinsengDataset,
    settings: GinsengClassifierTrainerSettings,
    plan: Any,
    steps: int,
    started: float,
) -> dict[str, Any]:
    """The provenance record of a fit that began at ``started`` (``time.perf_counter``).

    ``plan`` is the trainer's plan of the fit: its splits' rows, batch size, passes per
    epoch and devices.
    """
    label_names = np.asarray(dataset.label_names, dtype=str)
    counts = np.bincount(np.asarray(dataset.labels), minlength=len(label_names))
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "seed": settings.seed,
        "data_fingerprint": data_fingerprint(dataset.gene_names, label_names, counts),
        "store": str(getattr(dataset, "path", "")),
        "n_cells": int(counts.sum()),
        "n_train": int(plan.train_rows.size),
        "n_holdout": int(plan.test_rows.size),
        "label_counts": {str(k): int(v) for k, v in zip(label_names, counts, strict=True)},
        "batch_size": int(plan.batch_size),
        "steps": int(steps),
        "passes_per_epoch": int(plan.passes),
        "train_seconds": round(time.perf_counter() - started, 2),
        "device": plan.devices.platform,
        "devices": plan.devices.provenance,
    }
