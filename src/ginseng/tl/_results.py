"""The one writer of :func:`ginseng.tl.classify`'s AnnData keys, and the table of them.

:class:`Annotation` holds the results of a run (labels, confidence, probabilities,
votes). :func:`write_annotation` is the only code that puts them into an AnnData
(``obs``, ``obsm``, colours in ``uns`` and the ``uns`` record); :func:`annotation_table`
lays them out as the ``return_table=True`` DataFrame, and :func:`results_table`
rebuilds that DataFrame from what ``write_annotation`` wrote. Key names come from
:class:`ginseng._keys.ResultKeys`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import InputError
from .._keys import PREFIX, ResultKeys
from ._labels import model_label_colors


@dataclass(frozen=True)
class Annotation:
    """The results of classifying an AnnData's cells, in its row order.

    Attributes
    ----------
    predicted
        Categorical labels (the model labels that occur, in model order, then
        ``"Unassigned"`` when used).
    confidence
        float32 calibrated probability of the predicted label.
    probabilities
        float32 ``n_cells x n_labels`` probabilities (model order), or ``None``.
    labels
        The model's labels, in output order.
    votes
        Categorical cluster-level labels (majority voting), or ``None``.
    novelty
        float32 novelty scores, or ``None`` (a model without reference statistics).
    prediction_set
        Categorical conformal sets (labels joined by ``"|"``), or ``None``.
    prediction_set_size
        int32 number of labels in each set, or ``None``.
    levels
        For a model with a label hierarchy: ``{level name: categorical labels}`` coarse
        to fine, consistent along each cell's path (``"Unassigned"`` below the level
        called); else ``None``.
    level_confidence
        ``{level name: float32 calibrated probability}`` of those labels, or ``None``.
    names
        The order that fixes colours: the model's labels, then a hierarchy's coarser
        names; ``None`` means ``labels``.
    ontology_ids
        Categorical Cell Ontology id of each predicted label (``"unknown"`` for
        Unassigned and Novel), for a model with ids; else ``None``.
    """

    predicted: pd.Categorical
    confidence: np.ndarray
    probabilities: np.ndarray | None
    labels: list[str]
    votes: pd.Categorical | None = None
    novelty: np.ndarray | None = None
    prediction_set: pd.Categorical | None = None
    prediction_set_size: np.ndarray | None = None
    levels: dict[str, pd.Categorical] | None = None
    level_confidence: dict[str, np.ndarray] | None = None
    names: list[str] | None = None
    ontology_ids: pd.Categorical | None = None

    @property
    def color_order(self) -> list[str]:
        """Names in the order that fixes their colours (:func:`model_label_colors`)."""
        return self.labels if self.names is None else self.names

    def level_columns(self, keys: ResultKeys) -> dict[str, Any]:
        """The ``obs`` columns of the hierarchy levels: labels, then confidence, per level."""
        columns: dict[str, Any] = {}
        for name, values in (self.levels or {}).items():
            columns[keys.level(name)] = values
            columns[keys.level_confidence(name)] = np.asarray(
                (self.level_confidence or {})[name], np.float32
            )
        return columns

    def extra_columns(self, keys: ResultKeys) -> dict[str, Any]:
        """The ``obs`` columns beyond label and confidence: levels, novelty, prediction sets."""
        columns: dict[str, Any] = {}
        if self.ontology_ids is not None:
            columns[keys.ontology_term_id] = self.ontology_ids
        columns.update(self.level_columns(keys))
        if self.novelty is not None:
            columns[keys.novelty] = np.asarray(self.novelty, np.float32)
        if self.prediction_set is not None and self.prediction_set_size is not None:
            columns[keys.prediction_set] = self.prediction_set
            columns[keys.prediction_set_size] = np.asarray(self.prediction_set_size, np.int32)
        return columns


def annotation_table(annotation: Annotation, index: pd.Index, keys: ResultKeys) -> pd.DataFrame:
    """The ``return_table=True`` DataFrame: label, confidence, probabilities, novelty, sets, vote."""
    table = pd.DataFrame(
        {keys.cell_type: annotation.predicted, keys.confidence: np.asarray(annotation.confidence)},
        index=pd.Index(index).copy(),
    )
    columns = pd.DataFrame(annotation.probabilities, index=table.index, columns=annotation.labels)
    table = pd.concat([table, columns], axis=1)
    for column, values in annotation.extra_columns(keys).items():
        table[column] = values
    if annotation.votes is not None:
        table[keys.majority_vote] = annotation.votes
    return table


def write_annotation(
    adata: AnnData,
    annotation: Annotation,
    keys: ResultKeys,
    *,
    record: dict[str, Any],
    store_probabilities: bool = True,
) -> tuple[list[str], list[str]]:
    """Write ``annotation`` into ``adata`` under ``keys``; ``record`` goes to ``uns``.

    Writes ``obs[keys.cell_type]``, ``obs[keys.confidence]``, their colours, the
    probabilities in ``obsm`` (with ``store_probabilities``), the votes and their
    colours, the novelty and the prediction sets when computed (dropping those of an
    earlier run that are not computed now), and ``uns[keys.uns]["classify"] = record``.

    Returns
    -------
    The ``obsm`` and ``uns`` keys written (and the ``uns`` colour keys of an earlier
    run's hierarchy levels, removed), for writing them into a file.
    """
    entry = adata.uns.get(keys.uns, {})
    if not isinstance(entry, Mapping):
        raise InputError(
            f"adata.uns[{keys.uns!r}] holds a {type(entry).__name__}, not ginseng's records; "
            "pass another key_added= or remove that entry."
        )
    labels = annotation.color_order
    adata.obs[keys.cell_type] = annotation.predicted
    adata.obs[keys.confidence] = annotation.confidence
    extra = annotation.extra_columns(keys)
    stale = {keys.novelty, keys.prediction_set, keys.prediction_set_size, keys.ontology_term_id}
    earlier = entry.get("classify", {}).get("hierarchy") if isinstance(entry, Mapping) else None
    for name in (earlier or {}).get("levels", []):
        stale |= {keys.level(name), keys.level_confidence(name)}
        adata.uns.pop(keys.colors(keys.level(name)), None)
    stale -= set(extra)
    adata.obs.drop(columns=[c for c in stale if c in adata.obs.columns], inplace=True)
    for column, values in extra.items():
        adata.obs[column] = values
    # Removed colour keys are listed too, so that writing into a file removes them there.
    removed = [keys.colors(keys.level(name)) for name in (earlier or {}).get("levels", [])]
    uns_keys = [keys.uns, keys.colors(keys.cell_type), *removed]
    adata.uns[uns_keys[1]] = model_label_colors(list(annotation.predicted.categories), labels)
    for name, values in (annotation.levels or {}).items():
        color_key = keys.colors(keys.level(name))
        if color_key not in uns_keys:
            uns_keys.append(color_key)
        adata.uns[color_key] = model_label_colors(list(values.categories), labels)
    obsm_keys = []
    if store_probabilities:
        adata.obsm[keys.probabilities] = annotation.probabilities
        obsm_keys.append(keys.probabilities)
    if annotation.votes is not None:
        adata.obs[keys.majority_vote] = annotation.votes
        uns_keys.append(keys.colors(keys.majority_vote))
        adata.uns[uns_keys[-1]] = model_label_colors(list(annotation.votes.categories), labels)
    adata.uns[keys.uns] = {**entry, "classify": record}
    return obsm_keys, uns_keys


def results_table(adata: AnnData, *, key_added: str = PREFIX) -> pd.DataFrame:
    """The results of :func:`ginseng.tl.classify` in ``adata`` as a DataFrame.

    The same table as ``classify(..., return_table=True)`` gives, rebuilt from the keys
    classify wrote, so the cells need not be classified again.

    Parameters
    ----------
    adata
        An AnnData annotated by :func:`ginseng.tl.classify` with
        ``store_probabilities=True``.
    key_added
        The ``key_added`` given to classify.

    Returns
    -------
    A DataFrame indexed by ``obs_names`` with columns ``f"{key_added}_cell_type"``,
    ``f"{key_added}_confidence"``, one probability column per label (model order), the
    hierarchy-level, novelty and prediction-set columns when classify wrote them, and
    ``f"{key_added}_majority_vote"`` when classify voted.

    Raises
    ------
    InputError
        ``adata`` holds no complete results under ``key_added``.

    Examples
    --------
    >>> gs.tl.classify(query, state)
    >>> table = gs.tl.results_table(query)
    >>> table.equals(gs.tl.classify(query, state, return_table=True))
    True
    """
    keys = ResultKeys.from_prefix(key_added)
    obs = adata.obs
    record = adata.uns.get(keys.uns)
    complete = (
        keys.cell_type in obs.columns
        and keys.confidence in obs.columns
        and keys.probabilities in adata.obsm
        and isinstance(record, Mapping)
        and "classify" in record
    )
    if not complete:
        raise InputError(
            f"adata holds no complete ginseng.tl.classify results under key_added={key_added!r} "
            "(with store_probabilities=True)."
        )
    levels = (record["classify"].get("hierarchy") or {}).get("levels", [])
    annotation = Annotation(
        levels={name: obs[keys.level(name)].array for name in levels} or None,
        level_confidence={name: obs[keys.level_confidence(name)].to_numpy() for name in levels}
        or None,
        ontology_ids=(obs[keys.ontology_term_id].array if keys.ontology_term_id in obs else None),
        predicted=obs[keys.cell_type].array,
        confidence=obs[keys.confidence].to_numpy(),
        probabilities=np.asarray(adata.obsm[keys.probabilities]),
        labels=list(record["classify"]["labels"]),
        votes=obs[keys.majority_vote].array if keys.majority_vote in obs else None,
        novelty=obs[keys.novelty].to_numpy() if keys.novelty in obs else None,
        prediction_set=obs[keys.prediction_set].array if keys.prediction_set in obs else None,
        prediction_set_size=(
            obs[keys.prediction_set_size].to_numpy() if keys.prediction_set_size in obs else None
        ),
    )
    return annotation_table(annotation, adata.obs_names, keys)
