"""Validation of what a user asks to store: labels, groups and genes.

Everything here runs on ``obs``/``var`` only (in memory even for backed AnnData), so a
bad request fails in milliseconds, before any count is read or any file is written.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import InputError


@dataclass(frozen=True)
class Codes:
    """Integer codes of an ``obs`` column and the names they stand for."""

    codes: np.ndarray  # int32, one per cell
    names: np.ndarray  # str, code i -> names[i]


def encode_obs_column(adata: AnnData, key: str, *, role: str) -> Codes:
    """Encode ``adata.obs[key]`` as int32 codes, refusing missing or empty values.

    ``role`` ("label_key", "group_key") names the argument in error messages.
    """
    if key not in adata.obs.columns:
        close = [c for c in adata.obs.columns if key.lower() in c.lower()][:5]
        hint = f" Similar columns: {close}." if close else ""
        raise InputError(
            f"{role}={key!r} is not a column of adata.obs "
            f"(columns: {list(adata.obs.columns)[:20]}).{hint}"
        )
    column = adata.obs[key]
    n_missing = int(column.isna().sum())
    if n_missing:
        raise InputError(
            f"adata.obs[{key!r}] has {n_missing} missing (NaN) value(s) out of {adata.n_obs}; "
            f"drop or label those cells first, e.g. adata = adata[adata.obs[{key!r}].notna()]."
        )
    if not isinstance(column.dtype, pd.CategoricalDtype):
        try:
            column = column.astype("category")
        except TypeError:  # unorderable mixed types
            column = column.astype(str).astype("category")
    # Keep the user's category order; unused categories would be labels with no cell.
    # Checking names per category, not per cell, keeps millions of cells cheap.
    categorical = column.cat.remove_unused_categories()
    names = np.asarray([str(c) for c in categorical.cat.categories], dtype=str)
    codes = np.asarray(categorical.cat.codes, dtype=np.int32)
    empty = np.flatnonzero(np.char.strip(names) == "")
    n_empty = int(np.isin(codes, empty).sum())
    if n_empty:
        raise InputError(
            f"adata.obs[{key!r}] has {n_empty} empty label(s) out of {adata.n_obs}; "
            "give those cells a label or drop them."
        )
    return Codes(codes, names)


def encode_labels(adata: AnnData, key: str) -> Codes:
    """Encode the ``label_key`` column, refusing what cannot train a classifier.

    Refused (:class:`~ginseng.InputError` naming ``key`` and the counts): no labelled cell
    (no cells, or every value missing), any missing or empty label (see
    :func:`encode_obs_column`), and a single label. A label with one cell cannot have
    cells on both sides of the holdout split: it is named in a :class:`UserWarning` and,
    in the label-stratified split, kept in training and absent from the holdout.
    """
    if key in adata.obs.columns:
        n_missing = int(adata.obs[key].isna().sum())
        if adata.n_obs == 0 or n_missing == adata.n_obs:
            raise InputError(
                f"label_key={key!r} has no labelled cells: {n_missing} of {adata.n_obs} "
                f"values of adata.obs[{key!r}] are missing."
            )
    labels = encode_obs_column(adata, key, role="label_key")
    counts = np.bincount(labels.codes, minlength=labels.names.size)
    if labels.names.size < 2:
        raise InputError(
            f"label_key={key!r} holds a single label ({str(labels.names[0])!r}, {adata.n_obs} "
            "cells); a classifier needs at least 2 labels."
        )
    if np.any(singletons := counts < 2):
        named = ", ".join(
            f"{str(name)!r} ({n} cell)"
            for name, n in zip(labels.names[singletons], counts[singletons], strict=True)
        )
        warnings.warn(
            f"adata.obs[{key!r}] has {int(singletons.sum())} label(s) with a single cell, "
            f"which cannot be on both sides of the holdout: {named}. They are kept in "
            "training and absent from the holdout (with a label-stratified split), so the "
            "holdout metrics and the calibration do not cover them.",
            UserWarning,
            stacklevel=_caller_outside_ginseng(),
        )
    return labels


def select_genes(adata: AnnData, genes: str | Sequence[str] | np.ndarray | None) -> np.ndarray:
    """Return the sorted column indices of the genes to store.

    ``genes`` is ``None`` (all genes), the name of a boolean ``var`` column, a boolean
    mask over ``var_names``, or a list of gene names. Stored gene names must be unique,
    because classification aligns a query to the model by name.
    """
    var_names = adata.var_names
    if genes is None:
        idx = np.arange(adata.n_vars)
    elif isinstance(genes, str):
        if genes not in adata.var.columns:
            raise InputError(
                f"genes={genes!r} is not a column of adata.var; run "
                f"gs.pp.select_hvgs(adata) to create 'ginseng_genes', or pass a list of gene names."
            )
        mask = adata.var[genes]
        if mask.dtype != bool:
            raise InputError(
                f"adata.var[{genes!r}] must be boolean (True = use the gene), got dtype {mask.dtype}."
            )
        idx = np.flatnonzero(mask.to_numpy())
    else:
        chosen: np.ndarray = np.asarray(genes)
        if chosen.dtype == bool:
            if chosen.shape != (adata.n_vars,):
                raise InputError(
                    f"A boolean genes mask must have one entry per gene ({adata.n_vars}), "
                    f"got shape {chosen.shape}."
                )
            idx = np.flatnonzero(chosen)
        else:
            wanted = pd.Index(chosen.astype(str))
            if wanted.has_duplicates:
                dup = wanted[wanted.duplicated()].unique()[:5].tolist()
                raise InputError(f"genes lists {len(dup)}+ name(s) twice, e.g. {dup}.")
            positions = var_names.get_indexer(wanted) if var_names.is_unique else None
            if positions is None:
                raise InputError(
                    "adata.var_names are not unique; call adata.var_names_make_unique() first."
                )
            missing = wanted[positions < 0]
            if len(missing):
                raise InputError(
                    f"{len(missing)} of {len(wanted)} requested genes are not in adata.var_names, "
                    f"e.g. {missing[:5].tolist()}."
                )
            # Store genes in the file's column order: reads stay sequential.
            idx = np.sort(positions)
    if idx.size == 0:
        raise InputError(f"genes={_describe(genes)} selects 0 genes; select at least one.")
    selected = var_names[idx]
    if not selected.is_unique:
        dup = selected[selected.duplicated()].unique()[:5].tolist()
        raise InputError(
            f"The selected genes contain duplicated names (e.g. {dup}); call "
            "adata.var_names_make_unique() first so a model can align genes by name."
        )
    return idx.astype(np.int64)


def _describe(genes) -> str:
    return repr(genes) if isinstance(genes, str) else f"<{type(genes).__name__}>"


def _caller_outside_ginseng() -> int:
    """``stacklevel`` that points a warning raised here at the first caller outside ginseng."""
    package = str(Path(__file__).resolve().parents[1])
    frame, level = inspect.currentframe(), 0
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return max(level, 1)
