"""Cell Ontology ids of a model's labels: checked at training, written at classification.

``gs.tl.train(..., ontology_key="cell_type_ontology_term_id")`` reads each label's
Cell Ontology (CL) id from that ``obs`` column (CELLxGENE's name for it) and checks the
ids against the copy of the ontology that ships with the ``cellxgene-ontology-guide``
package (offline; ``pip install "ginseng[ontology]"``): every id must be a current CL
term, or ``"unknown"``. A model with a label hierarchy also gets an id for each coarser
node: the deepest common ancestor of its labels' terms. :func:`ginseng.tl.classify`
then writes ``obs["ginseng_cell_type_ontology_term_id"]`` next to the label
(``"unknown"`` for ``"Unassigned"`` and ``"Novel"``), without needing the package.

:func:`subtype_of` counts a prediction right when it is the true term or a subtype of
it, for metrics on data annotated at varying depth.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import pandas as pd

from .._errors import InputError

# CELLxGENE's value for a cell type without an ontology term.
UNKNOWN = "unknown"
PACKAGE = "cellxgene-ontology-guide"


@dataclass(frozen=True)
class OntologyIds:
    """The Cell Ontology term of each name a model can call.

    Attributes
    ----------
    ids
        ``{name: term id}`` for every label (and coarser hierarchy node), e.g.
        ``{"CD4 T": "CL:0000624"}``; ``"unknown"`` where there is none.
    key
        The ``obs`` column the ids were read from.
    source
        Where they were checked: ontology, its version and the package, e.g.
        ``"CL v2026-03-26 (cellxgene-ontology-guide 1.11.1)"``.
    """

    ids: Mapping[str, str]
    key: str
    source: str

    def to_json(self) -> str:
        """The JSON the model file stores (dataset ``ontology``)."""
        return json.dumps({"ids": dict(self.ids), "key": self.key, "source": self.source})

    @classmethod
    def from_json(cls, text: str) -> OntologyIds:
        """Read :meth:`to_json`'s text."""
        value = json.loads(text)
        ids = value["ids"]
        if not isinstance(ids, dict) or not all(isinstance(v, str) for v in ids.values()):
            raise ValueError("ids must map names to strings")
        return cls(ids, str(value["key"]), str(value["source"]))

    def check(self, labels: Sequence[str]) -> None:
        """Raise ``ValueError`` unless every label has an id."""
        lacking = [str(x) for x in labels if str(x) not in self.ids]
        if lacking:
            raise ValueError(f"no ontology id for the label(s) {lacking[:5]}")

    def for_names(self, names: Iterable[str]) -> np.ndarray:
        """The id of each name (``"unknown"`` for names without one, e.g. "Unassigned")."""
        return np.array([self.ids.get(str(n), UNKNOWN) for n in names], dtype=object)


def parser() -> Any:
    """The ``cellxgene-ontology-guide`` parser of its latest bundled schema (offline)."""
    try:
        from cellxgene_ontology_guide.ontology_parser import OntologyParser
    except ImportError as err:
        raise InputError(
            "ontology_key= checks the ids against the Cell Ontology bundled with "
            f"{PACKAGE}, which is not installed: pip install 'ginseng[ontology]'."
        ) from err
    return OntologyParser()


def _source(ontology: Any) -> str:
    cl = ontology.cxg_schema.supported_ontologies.get("CL", {})
    try:
        package = version(PACKAGE)
    except PackageNotFoundError:  # pragma: no cover - imported above, so installed
        package = "unknown version"
    return f"CL {cl.get('version', '?')} ({PACKAGE} {package})"


def label_ids(
    obs: pd.DataFrame,
    ontology_key: str,
    label_key: str,
    labels: Sequence[str],
    *,
    hierarchy: Any = None,
) -> OntologyIds:
    """Each label's id from ``obs[ontology_key]``, checked against the Cell Ontology.

    Raises :class:`~ginseng.InputError` naming the label, column and id when a label
    has two ids, a labelled cell has none, or an id is not a current CL term (an
    obsolete one names its replacement). With a ``hierarchy``, coarser nodes get the
    deepest common ancestor of their labels' terms (``"unknown"`` if one is unknown).
    """
    if ontology_key not in obs.columns:
        raise InputError(
            f"ontology_key={ontology_key!r} is not a column of adata.obs "
            f"(columns: {', '.join(map(str, obs.columns))})."
        )
    frame = pd.DataFrame(
        {"label": obs[label_key].astype(object), "id": obs[ontology_key].astype(object)}
    ).dropna(subset=["label"])
    frame["label"] = frame["label"].astype(str)
    if frame["id"].isna().any():
        bad = frame.loc[frame["id"].isna(), "label"].iloc[0]
        raise InputError(
            f"obs[{ontology_key!r}] is missing for cells labelled {bad!r}; use "
            f"{UNKNOWN!r} for a type without a Cell Ontology term."
        )
    frame["id"] = frame["id"].astype(str).str.strip()
    per_label = frame.groupby("label", sort=False)["id"].unique()
    ids: dict[str, str] = {}
    for label in labels:
        found = per_label.get(str(label))
        if found is None:
            raise InputError(f"No cell labelled {label!r} in obs[{label_key!r}].")
        if len(found) > 1:
            raise InputError(
                f"Cells labelled {label!r} have {len(found)} ids in obs[{ontology_key!r}] "
                f"({', '.join(map(repr, found[:5]))}); each label needs one Cell Ontology term."
            )
        ids[str(label)] = str(found[0])
    ontology = parser()
    for label, term in ids.items():
        if term == UNKNOWN:
            continue
        if not term.startswith("CL:") or not ontology.is_valid_term_id(term, "CL"):
            raise InputError(
                f"obs[{ontology_key!r}] gives label {label!r} the id {term!r}, which is not a "
                f"Cell Ontology term ({_source(ontology)}); ids look like 'CL:0000624'."
            )
        if ontology.is_term_deprecated(term):
            replacement = ontology.get_term_replacement(term)
            hint = f"; use {replacement!r} instead" if replacement else ""
            raise InputError(
                f"obs[{ontology_key!r}] gives label {label!r} the obsolete term {term!r}{hint}."
            )
    if hierarchy is not None:
        for k in range(hierarchy.n_levels - 1):
            for node in dict.fromkeys(map(str, hierarchy.paths[:, k])):
                if node in ids:
                    continue
                members = [ids[str(row[-1])] for row in hierarchy.paths if str(row[k]) == node]
                ids[node] = _common_ancestor(ontology, members)
    return OntologyIds(ids, ontology_key, _source(ontology))


def ontology_parents(ids: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A ``{child: parent}`` tree over the labels from the Cell Ontology, and its nodes' ids.

    Each label's term climbs through CELLxGENE's curated cell classes and subclasses
    (the lists bundled with ``cellxgene-ontology-guide``): a term's parent is its
    nearest strict ancestor in those lists (ties: the smallest id), named by its
    ontology label, so "CD4-positive, alpha-beta memory T cell" sits under
    "CD4-positive, alpha-beta T cell" under "T cell" and so on. Taking one parent per
    term turns the ontology's graph into a tree. Labels with an ``"unknown"`` id stay
    roots. For :meth:`ginseng.model.hierarchy.Hierarchy.from_mapping`.

    Returns
    -------
    ``(parents, node_ids)``: the mapping, and the term of every node it adds.
    """
    from cellxgene_ontology_guide.curated_ontology_term_lists import (
        get_curated_ontology_term_list,
    )
    from cellxgene_ontology_guide.entities import CuratedOntologyTermList

    ontology = parser()
    curated = sorted(
        set(get_curated_ontology_term_list(CuratedOntologyTermList.CELL_CLASS))
        | set(get_curated_ontology_term_list(CuratedOntologyTermList.CELL_SUBCLASS))
    )

    def parent_term(term: str) -> str | None:
        above = [t for t in ontology.get_high_level_terms(term, curated) if t != term]
        if not above:
            return None
        distance = ontology.get_term_ancestors_with_distances(term)
        return min(above, key=lambda t: (distance[t], t))

    parents: dict[str, str] = {}
    node_ids: dict[str, str] = {}
    for label, term in ids.items():
        child, current = str(label), term
        while current != UNKNOWN and child not in parents:
            up = parent_term(current)
            if up is None:
                break
            name = ontology.get_term_label(up)
            parents[child] = name
            node_ids.setdefault(name, up)
            child, current = name, up
    return parents, node_ids


def _common_ancestor(ontology: Any, terms: list[str]) -> str:
    """The deepest CL term that every one of ``terms`` is (a subtype of)."""
    if not terms or UNKNOWN in terms:
        return UNKNOWN
    common: set[str] | None = None
    for term in set(terms):
        ancestors = set(ontology.get_term_ancestors(term, include_self=True))
        common = ancestors if common is None else common & ancestors
    candidates = sorted(t for t in (common or set()) if t.startswith("CL:"))
    if not candidates:
        return UNKNOWN
    # The deepest: the one with the most ancestors of its own (ties: smallest id).
    depth = {t: len(ontology.get_term_ancestors(t)) for t in candidates}
    return max(candidates, key=lambda t: (depth[t], -int(t[3:]) if t[3:].isdigit() else 0))


def subtype_of(predicted: Iterable[str], truth: Iterable[str]) -> np.ndarray:
    """Whether each predicted term is the true term or a subtype of it.

    For metrics on references annotated at different depths: a prediction of "CD4-positive,
    alpha-beta T cell" (CL:0000624) counts as right for a cell annotated "T cell"
    (CL:0000084), not the other way round. ``"unknown"`` is never right.

    >>> subtype_of(["CL:0000624", "CL:0000084"], ["CL:0000084", "CL:0000624"]).tolist()
    [True, False]
    """
    ontology = parser()
    cache: dict[str, set[str]] = {}
    out = []
    for pred, true in zip(predicted, truth, strict=True):
        pred, true = str(pred), str(true)
        if UNKNOWN in (pred, true):
            out.append(False)
            continue
        if pred not in cache:
            cache[pred] = set(ontology.get_term_ancestors(pred, include_self=True))
        out.append(true in cache[pred])
    return np.asarray(out, bool)
