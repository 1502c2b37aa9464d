"""Novelty and prediction sets in ``gs.tl.classify``: option checks, labels, columns, record.

Shared by the serial and the dask path; the per-cell numbers come from the kernel
(:mod:`ginseng.tl.kernel`) and :mod:`ginseng.model.uncertainty`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._errors import InputError
from .._keys import SET_SEPARATOR
from .._logging import logger
from ..model.uncertainty import MIN_LABEL_CALIBRATION, Uncertainty, join_sets

if TYPE_CHECKING:
    from ..model.state import GinsengModelState
    from ._options import ClassifyOptions


def check_uncertainty(state: GinsengModelState, options: ClassifyOptions) -> None:
    """Refuse novelty_threshold/prediction_sets for a model without reference statistics.

    Without them (a model trained before ginseng 0.3) and neither option, classify
    writes no novelty column and says so in the log.
    """
    asked = [
        name
        for name in ("novelty_threshold", "prediction_sets")
        if getattr(options, name) is not None
    ]
    if state.uncertainty is not None:
        if options.prediction_sets is not None:
            unc = state.uncertainty
            pooled = unc.pooled(options.prediction_sets)
            if pooled.any():
                names = [
                    f"{label} ({n})"
                    for label, n in zip(
                        state.labels[pooled], unc.n_calibration[pooled], strict=True
                    )
                ]
                logger.warning(
                    "prediction_sets=%g: %d label(s) have too few held-out cells n for their "
                    "own threshold (n < %d or alpha < 1/(n+1)): %s; they use the threshold "
                    "pooled over all labels (marginal coverage only)",
                    options.prediction_sets,
                    len(names),
                    MIN_LABEL_CALIBRATION,
                    ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""),
                )
            if not np.isfinite(unc.thresholds(options.prediction_sets)).all():
                logger.warning(
                    "prediction_sets=%g is below 1/(N+1) for the N=%d held-out cells: "
                    "some labels enter every set",
                    options.prediction_sets,
                    int(unc.n_calibration.sum()),
                )
        return
    if asked:
        raise InputError(
            f"{' and '.join(asked)} need the novelty statistics and conformal scores that "
            "ginseng >= 0.3 fits at training time; this model has none (trained by ginseng "
            f"{state.provenance.get('versions', {}).get('ginseng', 'unknown')}). Retrain it "
            "with gs.tl.train, or leave these options None."
        )
    logger.info(
        "the model stores no novelty statistics (trained before ginseng 0.3): no %s column",
        "novelty",
    )


def novel_mask(
    novelty: np.ndarray | None, state: GinsengModelState, options: ClassifyOptions
) -> np.ndarray | None:
    """Cells above the ``novelty_threshold`` reference quantile, or ``None``."""
    if options.novelty_threshold is None or novelty is None or state.uncertainty is None:
        return None
    return np.asarray(novelty) > state.uncertainty.novelty_cutoff(options.novelty_threshold)


def set_columns(
    members: np.ndarray | None, labels: list[str]
) -> tuple[pd.Categorical | None, np.ndarray | None]:
    """The prediction sets as categorical strings and their sizes, or ``(None, None)``."""
    if members is None:
        return None, None
    codes, joined = join_sets(members, labels, SET_SEPARATOR)
    sets = pd.Categorical.from_codes(codes, categories=joined)
    return sets, members.sum(axis=1).astype(np.int32)


def uncertainty_record(unc: Uncertainty, options: ClassifyOptions) -> dict[str, Any]:
    """``uns[key_added]["classify"]["uncertainty"]``: the cut-off and the set thresholds."""
    record: dict[str, Any] = {"novelty": "mahalanobis"}
    if options.novelty_threshold is not None:
        cutoff = unc.novelty_cutoff(options.novelty_threshold)
        record["novelty_cutoff"] = cutoff
    if options.prediction_sets is not None:
        thresholds = unc.thresholds(options.prediction_sets)
        record["prediction_sets"] = {
            "alpha": float(options.prediction_sets),
            # 1 - p_k <= threshold puts label k in the set; 1.0 marks "always".
            "thresholds": [float(min(t, 1.0)) for t in thresholds],
            "n_calibration": [int(n) for n in unc.n_calibration],
            # Labels with too few held-out cells share the pooled threshold.
            "pooled": [bool(b) for b in unc.pooled(options.prediction_sets)],
        }
    return record
