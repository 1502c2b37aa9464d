"""Align a query's genes to a model's input genes by name.

The model sees its genes in a fixed order. A query may order them differently, lack
some or have extra ones (ignored). A gene the query lacks is *unknown*, not
unexpressed: :attr:`GeneAlignment.missing` marks it, :meth:`GeneAlignment.take` leaves
its column empty and the model's prediction (``predict_logits(..., missing=...)``)
sets it to its training mean instead of reading the empty column as zero counts. Names are compared as given, except that Ensembl version suffixes
(``ENSG00000141510.17``) are dropped when both sides use Ensembl ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._errors import GeneMismatchError, InputError
from .._logging import logger
from .._validate import fraction

# Ensembl stable ids of genes of any species: ENSG..., ENSMUSG..., ENSDARG..., optional version.
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_VERSION = re.compile(r"\.\d+$")


def id_type(names: Any) -> str:
    """Return ``"ensembl"`` when most names are Ensembl gene ids, else ``"symbol"``."""
    names = pd.Index(names).astype(str)
    if len(names) == 0:
        return "symbol"
    sample = names[:: max(1, len(names) // 2000)]
    share = np.mean([bool(_ENSEMBL.match(n)) for n in sample])
    return "ensembl" if share > 0.5 else "symbol"


def _keys(names: Any, strip_version: bool) -> pd.Index:
    names = pd.Index(np.asarray(names, dtype=str))
    return names.str.replace(_VERSION, "", regex=True) if strip_version else names


@dataclass(frozen=True)
class GeneAlignment:
    """Where each of the model's genes sits in the query.

    Attributes
    ----------
    source
        Where the query's names came from: ``"var_names"`` or ``"var['<column>']"``.
    positions
        For each model gene (model order), its column in the query, or -1 if missing.
    n_query_genes
        Number of columns of the query matrix.
    model_id_type
        ``"ensembl"`` or ``"symbol"``: the kind of the model's gene names.
    query_id_type
        ``"ensembl"`` or ``"symbol"``: the kind of the query's names used.
    """

    source: str
    positions: np.ndarray
    n_query_genes: int
    model_id_type: str
    query_id_type: str

    @property
    def n_model_genes(self) -> int:
        return int(self.positions.size)

    @property
    def n_found(self) -> int:
        return int((self.positions >= 0).sum())

    @property
    def fraction(self) -> float:
        return self.n_found / max(self.n_model_genes, 1)

    @property
    def missing(self) -> np.ndarray:
        """Boolean mask (model order) of the model's genes the query lacks."""
        return self.positions < 0

    def take(self, chunk: sp.csr_matrix) -> sp.csr_matrix:
        """The chunk's columns in model order: reordered, extras dropped, missing genes empty.

        Values are copied, never computed, so counts stay exact. scipy's column indexing
        picks the found genes (in C, faster than multiplying by a 0/1 selector matrix);
        their columns are then renumbered to the model's positions, leaving the missing ones empty.
        """
        found = self._found
        picked = chunk[:, self.positions[found]]
        return sp.csr_matrix(
            (picked.data, found[picked.indices].astype(picked.indices.dtype), picked.indptr),
            shape=(chunk.shape[0], self.n_model_genes),
        )

    @cached_property
    def _found(self) -> np.ndarray:
        return np.flatnonzero(self.positions >= 0)

    def summary(self, missing_genes: str = "mean-imputed") -> dict[str, Any]:
        """JSON/h5ad-friendly description, recorded in ``uns``.

        ``missing_genes`` says how the prediction treated the missing genes
        (``"mean-imputed"``: set to the training mean; ``"zero-filled"``: read as zero
        counts); it is recorded as such, with ``"n_missing"``.
        """
        return {
            "source": self.source,
            "n_model_genes": self.n_model_genes,
            "n_found": self.n_found,
            "fraction": round(self.fraction, 6),
            "model_id_type": self.model_id_type,
            "query_id_type": self.query_id_type,
            "n_missing": self.n_model_genes - self.n_found,
            "missing_genes": missing_genes,
        }


def _positions(model_genes: np.ndarray, query_names: Any, strip: bool) -> np.ndarray:
    """Column of each model gene among ``query_names`` (-1 if absent); first occurrence wins."""
    query = _keys(query_names, strip)
    first = ~query.duplicated()
    found = query[first].get_indexer(_keys(model_genes, strip))
    columns = np.flatnonzero(first)
    return np.where(found >= 0, columns[found], -1).astype(np.int64)


def _gene_map(gene_map: Any) -> dict[str, str]:
    """``{query name: model name}`` from a mapping or a table's first two columns."""
    if isinstance(gene_map, pd.DataFrame):
        if gene_map.shape[1] < 2:
            raise InputError(
                "gene_map= as a table needs two columns: the query's names, then the "
                f"model's; got columns {list(gene_map.columns)}."
            )
        pairs = gene_map.iloc[:, :2].dropna().astype(str)
        return dict(zip(pairs.iloc[:, 0], pairs.iloc[:, 1], strict=True))
    if isinstance(gene_map, dict) or hasattr(gene_map, "items"):
        return {str(k): str(v) for k, v in gene_map.items()}
    raise InputError(
        "gene_map= must be a {query gene: model gene} mapping or a two-column table, got "
        f"{type(gene_map).__name__}."
    )


def _translated(names: Any, translate: dict[str, str], source: str) -> pd.Index:
    """``names`` through ``translate``; unmapped names become ``""`` (never matched)."""
    names = pd.Index(names).astype(str)
    out = pd.Index(names.map(lambda n: translate.get(n, "")), dtype=object)
    mapped = out[out != ""]
    if mapped.duplicated().any():
        twice = mapped[mapped.duplicated()][0]
        sources = names[out == twice][:3].tolist()
        raise InputError(
            f"gene_map maps several genes of {source} ({', '.join(sources)}) to the model "
            f"gene {twice!r}; give a one-to-one map (e.g. one-to-one orthologs)."
        )
    return out


def _candidate_columns(var: pd.DataFrame) -> list[str]:
    out = []
    for column in var.columns:
        dtype = var[column].dtype
        if isinstance(dtype, pd.CategoricalDtype):
            dtype = dtype.categories.dtype
        if pd.api.types.is_string_dtype(dtype):
            out.append(str(column))
    return out


def align_genes(
    model_genes: Any,
    var: pd.DataFrame,
    *,
    gene_key: str | None = None,
    min_overlap: float = 0.5,
    gene_map: Any = None,
) -> GeneAlignment:
    """Find the model's genes among the query's genes.

    Parameters
    ----------
    model_genes
        The model's input genes, in input order.
    var
        The query's ``adata.var`` (its index is ``var_names``).
    gene_key
        A ``var`` column holding the gene names to match. ``None`` tries ``var_names``
        first and, if fewer than ``min_overlap`` of the model's genes match there, every
        text column of ``var`` (e.g. ``gene_ids``, ``gene_symbols``, ``feature_name``),
        taking the best.
    min_overlap
        Least fraction of the model's genes that must be found, in ``[0, 1]``.
    gene_map
        Translate the query's names before matching: a ``{query name: model name}``
        mapping, or a DataFrame whose first two columns are the query's and the model's
        names (e.g. :func:`ginseng.datasets.mouse_human_orthologs` for a mouse query and
        a human model). Query genes without an entry are left out; two query genes
        mapped to one model gene are refused.

    Raises
    ------
    GeneMismatchError
        Fewer than ``min_overlap`` of the model's genes were found; the message gives
        the overlap, the id types on both sides and example names.
    """
    fraction("min_gene_overlap", min_overlap)
    model_genes = np.asarray(model_genes, dtype=str)
    model_type = id_type(model_genes)
    translate = None if gene_map is None else _gene_map(gene_map)

    if gene_key is not None:
        if gene_key not in var.columns:
            available = ", ".join(map(repr, _candidate_columns(var))) or "none"
            raise InputError(
                f"gene_key={gene_key!r} is not a column of adata.var (text columns: {available})."
            )
        candidates = {f"var[{gene_key!r}]": var[gene_key]}
    else:
        candidates = {"var_names": var.index}
        candidates.update({f"var[{c!r}]": var[c] for c in _candidate_columns(var)})

    tried = []
    best = None
    if translate is not None:
        candidates = {
            f"{source} via gene_map": _translated(names, translate, source)
            for source, names in candidates.items()
        }
    for source, names in candidates.items():
        names = pd.Index(names).astype(str)
        query_type = id_type(names)
        strip = model_type == query_type == "ensembl"
        positions = _positions(model_genes, names, strip)
        alignment = GeneAlignment(source, positions, len(var), model_type, query_type)
        tried.append(f"{source} {alignment.fraction:.0%}")
        if best is None or alignment.n_found > best.n_found:
            best, best_names = alignment, names
        # var_names win whenever they are good enough: columns are only a fallback.
        if source == "var_names" and alignment.fraction >= min_overlap:
            break

    assert best is not None
    if best.fraction < min_overlap or best.n_found == 0:
        raise GeneMismatchError(_mismatch_message(best, model_genes, var, tried, min_overlap))
    n_duplicated = int(best_names.duplicated().sum())
    if n_duplicated:
        logger.warning(
            "%d gene names occur more than once in %s; the first occurrence is used",
            n_duplicated,
            best.source,
        )
    if best.source != "var_names":
        logger.warning(
            "adata.var_names match %d of the model's genes; using %s instead, which matches %d",
            int((_positions(model_genes, var.index.astype(str), False) >= 0).sum()),
            best.source,
            best.n_found,
        )
    logger.info(
        "found %d of %d model genes (%.1f%%) in %s; %d missing genes are read as unknown "
        "(set to their training mean)",
        best.n_found,
        best.n_model_genes,
        100 * best.fraction,
        best.source,
        best.n_model_genes - best.n_found,
    )
    return best


def _mismatch_message(best, model_genes, var, tried, min_overlap) -> str:
    examples_model = ", ".join(model_genes[:3])
    examples_query = ", ".join(map(str, var.index[:3]))
    cause = ""
    if best.model_id_type != id_type(var.index):
        cause = (
            f" The model uses {best.model_id_type} names but adata.var_names look like "
            f"{id_type(var.index)}s; pass gene_key= naming the var column with "
            f"{best.model_id_type} names."
        )
    elif best.n_found == 0:
        cause = " The query may come from another species or annotation."
    return (
        f"Only {best.n_found} of the model's {best.n_model_genes} genes "
        f"({best.fraction:.1%}) were found in the query (best match: {best.source}; tried "
        f"{', '.join(tried)}); at least {min_overlap:.0%} are required.{cause} Model genes: "
        f"{examples_model}, ...; query var_names: {examples_query}, .... Lower "
        "min_gene_overlap= only if you accept predictions from a partial gene panel; "
        "better, retrain on the genes the query measures: gs.tl.train(reference, ..., "
        "query_genes=query.var_names)."
    )
