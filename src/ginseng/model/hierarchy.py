"""Label hierarchies: coarse-to-fine levels over a model's labels, and calibrated back-off.

A model trains on its finest labels; a :class:`Hierarchy` stores, for each of them, its
ancestor at every coarser level (``paths``: one row per model label, one column per
level, the last column the label itself). The levels form a tree: a node (a name at a
level) has the same parent in every row. A label whose branch stops early repeats its
name at the finer levels (``["Lymphoid", "B cell", "B cell"]``).

Classification (:func:`level_calls`) descends the tree with the calibrated
probabilities: the probability of a node is the sum of those of its labels; at each
level the most probable child of the node chosen above it is taken. The nodes on that
path are consistent by construction (each is its parent's child), and their
probabilities never increase from coarse to fine. With a threshold,
:func:`back_off` keeps the deepest node whose probability passes it ("T cell" rather
than "Unassigned" when the T-cell subtypes are uncertain).

Nodes are numbered in one space shared by every level (:attr:`Hierarchy.names`): the
model's labels first, in output order, then the coarser names in order of appearance;
a name used at several levels is one node there only when it is the same branch (a
repeated label), otherwise the tree is refused as inconsistent.

Everything here is numpy: no jax.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._errors import InputError


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """Coarse-to-fine levels over a model's labels.

    Attributes
    ----------
    levels
        Level names, coarse to fine; the last is the level of the model's labels.
    paths
        ``n_labels x n_levels`` object array: row ``i`` holds the node of model label
        ``i`` at each level, its last entry the label itself.
    """

    levels: tuple[str, ...]
    paths: np.ndarray
    _codes: np.ndarray = field(init=False, repr=False, compare=False)
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        paths = np.asarray(self.paths, dtype=object)
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "levels", tuple(str(x) for x in self.levels))
        if paths.ndim != 2 or paths.shape[1] != len(self.levels) or len(self.levels) < 2:
            raise InputError(
                f"A hierarchy needs at least two levels and one node per level for each "
                f"label; got levels {list(self.levels)} and paths of shape {paths.shape}."
            )
        if len(set(self.levels)) != len(self.levels):
            raise InputError(f"Hierarchy levels must be distinct, got {list(self.levels)}.")
        labels = [str(x) for x in paths[:, -1]]
        if len(set(labels)) != len(labels):
            raise InputError("The finest level of a hierarchy must list each label once.")
        _check_tree(self.levels, paths)
        names = list(labels)
        index = {name: i for i, name in enumerate(names)}
        for name in paths[:, :-1].T.ravel():
            if str(name) not in index:
                index[str(name)] = len(names)
                names.append(str(name))
        codes = np.vectorize(lambda x: index[str(x)], otypes=[np.int32])(paths)
        object.__setattr__(self, "_codes", codes)
        object.__setattr__(self, "_names", tuple(names))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Hierarchy):
            return NotImplemented
        return self.levels == other.levels and [list(map(str, r)) for r in self.paths] == [
            list(map(str, r)) for r in other.paths
        ]

    __hash__ = None  # type: ignore[assignment]  # mutable-looking array field

    # --- construction -----------------------------------------------------------------

    @classmethod
    def from_columns(
        cls, obs: pd.DataFrame, columns: Sequence[str], label_key: str, labels: Sequence[str]
    ) -> Hierarchy:
        """The hierarchy that ``obs`` columns (coarse to fine) give the model's ``labels``.

        ``columns`` may end with ``label_key`` or leave it out. Every cell of a label must
        have the same, non-missing value in each coarser column; the message of the
        :class:`~ginseng.InputError` otherwise names the label, column and values.
        """
        columns = [str(c) for c in columns]
        if columns and columns[-1] == label_key:
            columns = columns[:-1]
        if not columns:
            raise InputError(
                f"hierarchy= names no level coarser than label_key={label_key!r}; give the "
                "obs columns from coarse to fine, e.g. ['lineage', 'cell_type']."
            )
        if label_key in columns:
            raise InputError(
                f"hierarchy= lists label_key={label_key!r} before its last place; the levels "
                "go from coarse to fine and end with the labels the model trains on."
            )
        missing = [c for c in columns if c not in obs.columns]
        if missing:
            raise InputError(
                f"hierarchy= names obs column(s) {missing} that adata.obs does not have "
                f"(columns: {', '.join(map(str, obs.columns))})."
            )
        label_of = obs[label_key].astype(object).to_numpy()
        paths = np.empty((len(labels), len(columns) + 1), dtype=object)
        paths[:, -1] = [str(x) for x in labels]
        position = {str(label): i for i, label in enumerate(labels)}
        for j, column in enumerate(columns):
            values = obs[column].astype(object).to_numpy()
            frame = pd.DataFrame({"label": label_of, "value": values})
            frame = frame[frame["label"].notna()]
            frame["label"] = frame["label"].astype(str)
            frame = frame[frame["label"].isin(position)]
            if frame["value"].isna().any():
                bad = frame.loc[frame["value"].isna(), "label"].iloc[0]
                raise InputError(
                    f"obs[{column!r}] is missing for cells labelled {bad!r}; every labelled "
                    "cell needs a value at every level of the hierarchy."
                )
            frame["value"] = frame["value"].astype(str)
            per_label = frame.groupby("label", sort=False)["value"].unique()
            for label, found in per_label.items():
                if len(found) > 1:
                    raise InputError(
                        f"Inconsistent hierarchy: cells labelled {label!r} have "
                        f"{len(found)} values in obs[{column!r}] ({', '.join(map(repr, found[:5]))}); "
                        "each label must sit under one node of each coarser level."
                    )
                paths[position[str(label)], j] = str(found[0])
        return cls((*columns, label_key), paths)

    @classmethod
    def from_mapping(
        cls, parents: Mapping[str, str], labels: Sequence[str], label_key: str
    ) -> Hierarchy:
        """The hierarchy of a ``{child: parent}`` mapping over the model's ``labels``.

        Each label is followed up through its parents to a root; branches of different
        depths are aligned at the root, and a label repeats at the finer levels its
        branch does not reach. Levels are named ``level_0`` (the roots) onwards, the last
        ``label_key``. Entries no label reaches are ignored; a cycle is refused.
        """
        if not isinstance(parents, Mapping):
            raise InputError(
                f"hierarchy= must be a list of obs columns or a {{child: parent}} mapping, "
                f"got {type(parents).__name__}."
            )
        parents = {str(k): str(v) for k, v in parents.items()}
        chains = []
        for label in labels:
            chain = [str(label)]
            while chain[-1] in parents:
                parent = parents[chain[-1]]
                if parent in chain:
                    raise InputError(
                        f"Inconsistent hierarchy: the mapping has a cycle through {parent!r} "
                        f"({' -> '.join([*chain, parent])})."
                    )
                chain.append(parent)
            chains.append(chain[::-1])  # root first
        if all(len(c) == 1 for c in chains):
            raise InputError(
                "The hierarchy mapping gives none of the model's labels a parent; its keys "
                f"must be labels (e.g. {list(labels)[:3]}) or their ancestors."
            )
        depth = max(len(c) for c in chains)
        paths = np.empty((len(chains), depth), dtype=object)
        for i, chain in enumerate(chains):
            paths[i] = chain + [chain[-1]] * (depth - len(chain))
        levels = (*(f"level_{k}" for k in range(depth - 1)), label_key)
        return cls(levels, paths)

    @classmethod
    def build(
        cls,
        spec: Sequence[str] | Mapping[str, str],
        *,
        obs: pd.DataFrame,
        label_key: str,
        labels: Sequence[str],
    ) -> Hierarchy:
        """From ``gs.tl.train``'s ``hierarchy=``: obs columns or a ``{child: parent}`` mapping."""
        if isinstance(spec, Mapping):
            return cls.from_mapping(spec, labels, label_key)
        if isinstance(spec, str) or not isinstance(spec, Sequence):
            raise InputError(
                "hierarchy= must be a list of obs columns from coarse to fine (e.g. "
                f"['lineage', {label_key!r}]), a {{child: parent}} mapping or \"ontology\" "
                f"(with ontology_key=), got {spec!r}."
            )
        return cls.from_columns(obs, spec, label_key, labels)

    # --- file ---------------------------------------------------------------------------

    def to_json(self) -> str:
        """The JSON the model file stores (dataset ``hierarchy``)."""
        return json.dumps(
            {"levels": list(self.levels), "paths": [[str(x) for x in r] for r in self.paths]}
        )

    @classmethod
    def from_json(cls, text: str) -> Hierarchy:
        """Read :meth:`to_json`'s text."""
        value = json.loads(text)
        return cls(tuple(value["levels"]), np.asarray(value["paths"], dtype=object))

    def for_labels(self, labels: Sequence[str]) -> Hierarchy:
        """The same tree with its rows in the order of ``labels`` (a model's output order).

        Raises :class:`~ginseng.InputError` naming a label the hierarchy lacks.
        """
        row = {str(x): i for i, x in enumerate(self.paths[:, -1])}
        lacking = [str(x) for x in labels if str(x) not in row]
        if lacking:
            raise InputError(f"The hierarchy has no place for the label(s) {lacking[:5]}.")
        return Hierarchy(self.levels, self.paths[[row[str(x)] for x in labels]])

    def check(self, labels: Sequence[str]) -> None:
        """Raise ``ValueError`` unless the finest level is exactly ``labels``, in order."""
        finest = [str(x) for x in self.paths[:, -1]]
        if finest != [str(x) for x in labels]:
            raise ValueError("its finest level does not list the model's labels in order")

    # --- numbers -----------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Every node name, the model's labels (output order) first, then the coarser names."""
        return self._names

    @property
    def codes(self) -> np.ndarray:
        """``n_labels x n_levels`` int32 index (into :attr:`names`) of each label's nodes."""
        return self._codes

    @property
    def n_levels(self) -> int:
        """Number of levels, the labels' own included."""
        return len(self.levels)

    def level_calls(self, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The top-down path of each cell: node codes and summed probabilities per level.

        Parameters
        ----------
        proba
            ``n_cells x n_labels`` calibrated probabilities (model order).

        Returns
        -------
        ``(codes, confidence)``: int32 and float32 arrays of ``n_cells x n_levels``,
        the node (index into :attr:`names`) chosen at each level and its probability.
        """
        proba = np.asarray(proba, np.float32)
        n = proba.shape[0]
        n_names = len(self._names)
        codes = np.empty((n, self.n_levels), np.int32)
        confidence = np.empty((n, self.n_levels), np.float32)
        allowed = np.ones((n, proba.shape[1]), bool)  # labels under the node chosen so far
        rows = np.arange(n)
        for k in range(self.n_levels):
            onehot = np.zeros((proba.shape[1], n_names), np.float32)
            onehot[np.arange(proba.shape[1]), self._codes[:, k]] = 1.0
            node_proba = (proba * allowed) @ onehot  # n x names; 0 outside the branch
            # Nodes outside the branch must lose even to a child of probability 0.
            reachable = (allowed.astype(np.float32) @ onehot) > 0
            choice = np.where(reachable, node_proba, -1.0).argmax(axis=1).astype(np.int32)
            codes[:, k] = choice
            confidence[:, k] = node_proba[rows, choice]
            allowed &= self._codes[:, k][None, :] == choice[:, None]
        return codes, confidence


def back_off(
    codes: np.ndarray, confidence: np.ndarray, threshold: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The deepest node of each top-down path whose probability passes ``threshold``.

    Parameters
    ----------
    codes, confidence
        :meth:`Hierarchy.level_calls`'s arrays.
    threshold
        Minimum probability; ``None`` keeps the finest level.

    Returns
    -------
    ``(call, call_confidence, depth)``: the node code called per cell (``-1`` when not
    even the coarsest level passes), its probability (the coarsest level's when none
    passes) and the index of the level called (``-1`` when none).
    """
    n, n_levels = codes.shape
    if threshold is None:
        depth = np.full(n, n_levels - 1, np.int64)
    else:
        # Probabilities only decrease from coarse to fine: count the passing levels.
        depth = (confidence >= threshold).sum(axis=1).astype(np.int64) - 1
    rows = np.arange(n)
    at = np.maximum(depth, 0)
    call = np.where(depth >= 0, codes[rows, at], -1).astype(np.int32)
    return call, confidence[rows, at].astype(np.float32), depth.astype(np.int32)


def _check_tree(levels: tuple[str, ...], paths: np.ndarray) -> None:
    """Refuse paths that are not a tree: a node with two parents, or a name reused."""
    first_level: dict[str, int] = {}
    for k in range(paths.shape[1]):
        column = paths[:, k]
        if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in column):
            raise InputError(f"The hierarchy has a missing node at level {levels[k]!r}.")
        for name in set(map(str, column)):
            first_level.setdefault(name, k)
        if k == 0:
            continue
        parent: dict[str, str] = {}
        for row in paths:
            child, up = str(row[k]), str(row[k - 1])
            if parent.setdefault(child, up) != up:
                raise InputError(
                    f"Inconsistent hierarchy: {child!r} at level {levels[k]!r} has two "
                    f"parents at level {levels[k - 1]!r}: {parent[child]!r} and {up!r}."
                )
            # A name at two levels is one node only as a repeat down its own branch.
            if child != up and first_level[child] < k:
                raise InputError(
                    f"Inconsistent hierarchy: {child!r} is a node at level "
                    f"{levels[first_level[child]]!r} and again, under {up!r}, at level "
                    f"{levels[k]!r}; give the nodes of different levels different names."
                )


def describe(hierarchy: Hierarchy | None) -> dict[str, Any] | None:
    """A JSON-able summary for records: level names and number of nodes per level."""
    if hierarchy is None:
        return None
    return {
        "levels": list(hierarchy.levels),
        "nodes_per_level": [len(set(hierarchy.paths[:, k])) for k in range(hierarchy.n_levels)],
    }
