"""Restricting a model to a subset of its labels.

Builds the :class:`~ginseng.model.GinsengModelState` that
:meth:`~ginseng.model.GinsengModelState.restrict_labels` returns: the output layer,
the uncertainty reference and the hierarchy cut down to the kept labels, so that
probabilities are renormalised over them; the state passed in is left as it was.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import InputError

if TYPE_CHECKING:
    from .state import GinsengModelState


def restrict_labels(state: GinsengModelState, labels: Any) -> GinsengModelState:
    """The model over a subset of its labels (see :meth:`GinsengModelState.restrict_labels`)."""
    if isinstance(labels, str) or not hasattr(labels, "__iter__"):
        raise InputError(f"labels= must be a list of label names, got {labels!r}.")
    wanted = [str(x) for x in labels]
    unknown = sorted(set(wanted) - set(state.labels))
    if unknown:
        raise InputError(
            f"labels= names {len(unknown)} label(s) the model lacks: {unknown[:5]}; the "
            f"model's labels are {', '.join(state.labels[:12])}"
            + (", ..." if state.n_labels > 12 else "")
            + "."
        )
    keep = np.isin(state.labels, wanted)
    if keep.sum() < 2:
        raise InputError(
            f"labels= keeps {int(keep.sum())} of the model's labels; give at least two."
        )
    params = dict(state.params)
    params["head/kernel"] = state.params["head/kernel"][:, keep]
    params["head/bias"] = state.params["head/bias"][keep]
    uncertainty = state.uncertainty
    if uncertainty is not None:
        uncertainty = uncertainty.restrict(keep)
    hierarchy = state.hierarchy
    if hierarchy is not None:
        hierarchy = hierarchy.for_labels(state.labels[keep])
    return replace(
        state,
        params=params,
        config={**state.config, "n_labels": int(keep.sum())},
        labels=state.labels[keep],
        uncertainty=uncertainty,
        hierarchy=hierarchy,
    )
