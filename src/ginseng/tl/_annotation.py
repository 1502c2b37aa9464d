"""From a kernel's results to what ``gs.tl.classify`` writes into the AnnData.

:func:`annotation_from` turns the per-cell codes, confidences, novelty scores and sets
into the :class:`~ginseng.tl._results.Annotation` (labels with ``"Unassigned"`` and
``"Novel"``, hierarchy back-off, ontology ids, cluster votes); :func:`classify_record`
builds the ``uns`` record. The serial and the dask path share both, so that they
write the same keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..model.hierarchy import back_off, describe
from ._record import model_summary
from ._results import Annotation
from ._uncertainty import novel_mask, set_columns, uncertainty_record
from .kernel import assign_labels

if TYPE_CHECKING:
    from ..model.state import GinsengModelState
    from ._options import ClassifyOptions
    from ._query import Query


def annotation_from(
    result: Any,
    labels: list[str],
    options: ClassifyOptions,
    state: GinsengModelState,
    votes: Callable[[pd.Series], pd.Series | None],
) -> Annotation:
    """Labels (with Unassigned, Novel), votes and sets from a kernel's results.

    ``votes`` turns the predicted labels into cluster votes (``None`` without
    majority voting): the serial path votes on them directly, the dask path from the
    per-block tables its workers summed. With a hierarchy the labels back off along
    each cell's path (``ginseng.model.hierarchy.back_off``); a model with ontology
    ids gets the id of each predicted label too.
    """
    novel = novel_mask(result.novelty, state, options)
    sets, sizes = set_columns(result.prediction_sets, labels)
    threshold = options.unassigned_threshold
    levels = level_confidence = names = None
    if state.hierarchy is None or result.level_codes is None:
        confidence = result.confidence
        predicted = assign_labels(result.codes, confidence, labels, threshold, novel)
    else:
        names = list(state.hierarchy.names)
        call, confidence, depth = back_off(result.level_codes, result.level_confidence, threshold)
        # A cell no level passes has call -1 and its coarsest probability, below threshold.
        predicted = assign_labels(np.maximum(call, 0), confidence, names, threshold, novel)
        levels, level_confidence = {}, {}
        for k, name in enumerate(state.hierarchy.levels):
            # assign_labels marks Unassigned where "confidence" < threshold: give it 1 down
            # to the level called and 0 below it, so that every column agrees with the call.
            called = (depth >= k).astype(np.float32)
            levels[name] = assign_labels(
                result.level_codes[:, k], called, names, None if threshold is None else 1.0, novel
            )
            level_confidence[name] = result.level_confidence[:, k]
    ontology_ids = None
    if state.ontology is not None:
        codes = pd.Categorical(predicted)
        ontology_ids = pd.Categorical(state.ontology.for_names(codes.categories)[codes.codes])
    return Annotation(
        predicted,
        confidence,
        result.probabilities,
        labels,
        votes(predicted),
        result.novelty,
        sets,
        sizes,
        levels=levels,
        level_confidence=level_confidence,
        names=names,
        ontology_ids=ontology_ids,
    )


def classify_record(
    options: ClassifyOptions, query: Query, batch_size: int, state, alignment, labels
):
    """``uns[key_added]["classify"]``, the same for the serial and the dask path."""
    from ..model.first_layer import missing_genes_note

    record = {
        "params": options.params(query.layer, batch_size),
        "labels": labels,
        "model": model_summary(state),
        "gene_overlap": alignment.summary(missing_genes_note(state.config)),
    }
    if state.uncertainty is not None:
        record["uncertainty"] = uncertainty_record(state.uncertainty, options)
    if state.hierarchy is not None:
        record["hierarchy"] = describe(state.hierarchy)
    return record
