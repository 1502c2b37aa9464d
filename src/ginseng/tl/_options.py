"""The options of ``gs.tl.classify``, gathered and checked in one object.

:class:`ClassifyOptions` holds the keyword options of :func:`ginseng.tl.classify`
(and the seed API's ``counts_fallback``), refuses contradicting or out-of-range ones
for a given ``adata`` before any counts are read, and says what the ``uns`` record
lists as the call's parameters; the serial and the dask path both read it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from anndata import AnnData

from .._errors import InputError
from .._keys import PREFIX
from .._validate import fraction, nonempty_str, positive_int
from ..data import backed_mode
from ._record import drop_none


@dataclass(frozen=True)
class ClassifyOptions:
    """The keyword options of :func:`classify`, checked by :meth:`check`.

    ``counts_fallback`` is not an option of ``gs.tl.classify``: ``ginseng.classify``
    (the seed API) sets it so that ``layer="counts"`` falls back to ``.X`` when the
    data have no such layer.
    """

    layer: str | None = None
    key_added: str = PREFIX
    gene_key: str | None = None
    min_gene_overlap: float = 0.5
    gene_map: Any = None
    unassigned_threshold: float | None = None
    novelty_threshold: float | None = None
    prediction_sets: float | None = None
    labels: Sequence[str] | None = None
    majority_vote_key: str | None = None
    min_prop: float = 0.0
    store_probabilities: bool = True
    check_counts: bool = True
    batch_size: int | None = None
    return_table: bool = False
    copy: bool = False
    write: bool = False
    counts_fallback: bool = False

    def check(self, adata: object) -> None:
        """Refuse contradicting or out-of-range options for this ``adata``."""
        if self.return_table and (self.copy or self.write):
            raise InputError(
                "return_table=True leaves adata untouched; do not combine it with copy= or write=."
            )
        if self.copy and not isinstance(adata, AnnData):
            raise InputError(
                "copy=True applies to an AnnData; for a path, classify already returns the "
                "annotated AnnData it reads (use return_table=True for a DataFrame)."
            )
        if self.copy and isinstance(adata, AnnData) and adata.isbacked:
            raise InputError(
                "copy=True would load the backed AnnData into memory; annotate it in place, "
                "or use return_table=True, or pass adata.to_memory() if it fits."
            )
        if self.write and isinstance(adata, AnnData):
            _check_writable_adata(adata)
        if self.unassigned_threshold is not None:
            fraction("unassigned_threshold", self.unassigned_threshold)
        if self.novelty_threshold is not None:
            fraction("novelty_threshold", self.novelty_threshold, "(0, 1)")
        if self.prediction_sets is not None:
            fraction("prediction_sets", self.prediction_sets, "(0, 1)")
        nonempty_str("key_added", self.key_added)
        if self.batch_size is not None:
            positive_int("batch_size", self.batch_size)

    def params(self, layer: str | None, batch_size: int) -> dict[str, object]:
        """What ``uns[key_added]["classify"]["params"]`` records (no ``None``)."""
        params = {
            "layer": layer,
            "key_added": self.key_added,
            "gene_key": self.gene_key,
            "min_gene_overlap": float(self.min_gene_overlap),
            "gene_map": None if self.gene_map is None else f"{len(self.gene_map)} pairs",
            "unassigned_threshold": self.unassigned_threshold,
            "novelty_threshold": self.novelty_threshold,
            "prediction_sets": self.prediction_sets,
            "labels": None if self.labels is None else [str(x) for x in self.labels],
            "majority_vote_key": self.majority_vote_key,
            "min_prop": float(self.min_prop),
            "store_probabilities": bool(self.store_probabilities),
            "check_counts": bool(self.check_counts),
            "batch_size": int(batch_size),
        }
        return drop_none(params)

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any], **internal: Any) -> ClassifyOptions:
        """Options from keyword arguments of :func:`classify` (plus ``internal`` fields).

        An unknown keyword raises the :class:`TypeError` a call of ``classify`` would.
        """
        from ._classify import classify

        accepted = set(inspect.signature(classify).parameters) - {"adata", "model"}
        for name in keywords:
            if name not in accepted:
                raise TypeError(f"classify() got an unexpected keyword argument {name!r}")
        return cls(**{**keywords, **internal})

    def replace(self, **changes: Any) -> ClassifyOptions:
        """A copy with ``changes`` applied."""
        return ClassifyOptions(**{**asdict(self), **changes})


def _check_writable_adata(adata: AnnData) -> None:
    if not adata.isbacked:
        raise InputError(
            "write=True writes into the file behind a path or a backed AnnData; an "
            "in-memory AnnData is annotated in place (save it with adata.write_h5ad)."
        )
    mode = backed_mode(adata)
    if mode != "r+":
        state = "closed" if mode is None else "open read-only"
        raise InputError(
            f"write=True needs the backed AnnData opened with backed='r+' "
            f"({adata.filename} is {state})."
        )
