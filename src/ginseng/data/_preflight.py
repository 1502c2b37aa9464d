"""Refuse matrices that are not raw counts before a model sees them.

A model normalises raw counts itself; fed log-normalised or scaled values it still
returns confident labels, only wrong ones. This is the most common silent misuse after
a standard scanpy workflow (``.X`` log-normalised, counts in ``layers["counts"]``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp

from .._errors import InputError
from .._logging import logger
from ._matrix import check_finite_nonnegative

# Per-cell totals this close to a constant (coefficient of variation) mean normalised data.
_CONSTANT_TOTAL_CV = 0.01
# Non-integer data whose largest value is below this is log-transformed, not counts.
_LOG_MAX = 20.0


def check_raw_counts(
    chunk: sp.csr_matrix, *, where: str, layers: Iterable[str] = (), option: str = "check_counts"
) -> None:
    """Raise :class:`~ginseng.InputError` if ``chunk`` looks log-normalised or scaled.

    Negative or non-finite values are refused (scaled data). Non-integer values are
    refused when the cells' totals, or the totals of ``expm1`` of the values, are
    (nearly) constant (normalised, e.g. CP10k then ``log1p``), or when every value is
    small (log-transformed). Other non-integer data (ambient-corrected or estimated
    counts) pass with a warning.

    Parameters
    ----------
    chunk
        A block of rows (the first chunk is a good sample).
    where
        Name of the matrix for the message, e.g. ``"adata.X"``.
    layers
        The AnnData's layer names, so the message can suggest one.
    option
        The keyword that switches this check off, named in the message.
    """
    hint = _layer_hint(layers)
    try:
        check_finite_nonnegative(chunk, where=where)
    except InputError as error:
        raise InputError(f"{error} {hint}Pass {option}=False only if you are sure.") from None
    data = chunk.data
    if data.size == 0:
        return
    fractional = data != np.round(data)
    if not fractional.any():
        return
    totals = np.asarray(chunk.sum(axis=1)).ravel()
    candidates = [("totals", totals)]
    if data.max() < _LOG_MAX:  # expm1 of larger values overflows and cannot be log1p data
        candidates.append(("expm1 totals", np.asarray(chunk.expm1().sum(axis=1)).ravel()))
    nonempty = totals > 0
    reason = None
    for name, values in candidates:
        values = values[nonempty]
        if values.size > 1 and values.std() <= _CONSTANT_TOTAL_CV * values.mean():
            reason = f"its per-cell {name} are all about {values.mean():.4g} (normalised data)"
            break
    if reason is None and data.max() < _LOG_MAX:
        reason = f"all its values are below {_LOG_MAX:g} (log-transformed data)"
    example = float(data[np.flatnonzero(fractional)[0]])
    if reason is not None:
        raise InputError(
            f"{where} does not hold raw counts: it has non-integer values (e.g. "
            f"{example:.4g}) and {reason}. ginseng models normalise raw counts "
            f"themselves. {hint}Pass {option}=False only if you are sure."
        )
    logger.warning(
        "%s has non-integer values (e.g. %.4g); treating them as counts "
        "(ambient-corrected or estimated counts are fine)",
        where,
        example,
    )


def _layer_hint(layers: Iterable[str | None]) -> str:
    # anndata >= 0.13 lists None (an alias of X) among the layer keys.
    layers = [key for key in layers if isinstance(key, str)]
    if "counts" in layers:
        return 'Use layer="counts". '
    if layers:
        return f"Pass layer= naming the raw counts (layers: {', '.join(map(repr, layers))}). "
    return "Pass layer= naming a layer of raw counts, or keep counts in adata.layers['counts']. "
