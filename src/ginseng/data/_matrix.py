"""Row-chunked access to the count matrix of an AnnData, in memory or backed.

Every chunked computation in ginseng (HVG selection, store creation,
classification) reads the matrix through :func:`iter_row_chunks`, so peak memory is
bounded by ``chunk_size`` rows whatever the number of cells.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._errors import InputError

T = TypeVar("T")


def get_matrix(adata: AnnData, layer: str | None = None) -> Any:
    """Return the matrix behind ``adata.X`` or ``adata.layers[layer]`` without loading it.

    For backed AnnData, anndata keeps only ``X`` on disk and reads layers into memory
    on access; we open the layer's element in the file instead so that it stays out of
    core too. The matrix's declared shape must match ``obs`` x ``var``: a file whose
    matrix claims more rows or columns than it has cells or genes is refused before
    anything is allocated for it.
    """
    if layer is None:
        if adata.X is None:
            raise InputError("adata.X is empty (None); pass layer= to name the counts layer.")
        matrix = adata.X
    elif layer not in adata.layers.keys():
        # anndata >= 0.13 lists None (an alias of X) among the layer keys.
        names = [key for key in adata.layers.keys() if isinstance(key, str)]
        available = ", ".join(map(repr, names)) or "none"
        raise InputError(f"Layer {layer!r} not found in adata.layers (available: {available}).")
    elif adata.isbacked:
        from anndata.io import sparse_dataset

        element = adata.file[f"layers/{layer}"]
        is_sparse = hasattr(element, "attrs") and element.attrs.get("encoding-type", "").endswith(
            "_matrix"
        )
        matrix = sparse_dataset(element) if is_sparse else element
    else:
        matrix = adata.layers[layer]
    shape = tuple(int(n) for n in matrix.shape)
    if shape != (adata.n_obs, adata.n_vars):
        where = f" of {str(adata.filename)!r}" if adata.isbacked else ""
        raise InputError(
            f"{matrix_name(layer)}{where} declares shape {shape}, but the AnnData has "
            f"{adata.n_obs} cells (obs) x {adata.n_vars} genes (var): the file is damaged "
            "or was written inconsistently."
        )
    return matrix


def _as_csr(block: Any) -> sp.csr_matrix:
    if sp.issparse(block):
        return sp.csr_matrix(block)
    return sp.csr_matrix(np.asarray(block))


def iter_row_chunks(matrix: Any, chunk_size: int) -> Iterator[tuple[slice, sp.csr_matrix]]:
    """Yield ``(rows, csr_chunk)`` over ``matrix`` in contiguous blocks of ``chunk_size`` rows.

    Chunks are CSR whatever the storage (dense, CSR, CSC, backed), and fresh copies, so
    callers may modify them in place.
    """
    n_rows = matrix.shape[0]
    for start in range(0, n_rows, chunk_size):
        stop = min(start + chunk_size, n_rows)
        yield slice(start, stop), _as_csr(matrix[start:stop])


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """Yield ``items``, fetching the next one in the background while the caller works.

    The fetch runs on the reader thread the training stream uses
    (``ginseng.data._stream``), so reading a backed file's next chunk (h5py, zarr
    decoding) overlaps with classifying this one (XLA and numpy release the GIL). At
    most one item is in flight: memory grows by one chunk. An error raised while
    fetching is raised here; a caller that stops early waits for the fetch in flight.
    """
    from ._stream import _reader

    executor = _reader()
    done = object()
    future = executor.submit(next, items, done)
    try:
        while (item := future.result()) is not done:
            future = executor.submit(next, items, done)
            yield item  # type: ignore[misc]  # not the sentinel
    finally:
        # A caller that stopped early (or an error): the fetch in flight finishes first.
        if not future.cancel():
            future.exception()


def check_finite_nonnegative(chunk: sp.csr_matrix, *, where: str) -> None:
    """Refuse negative or non-finite values in a chunk, naming ``where`` they came from.

    Only the sign and finiteness: :func:`ginseng.data._preflight.check_raw_counts` also
    refuses log-normalised or scaled data.
    """
    data = chunk.data
    if data.size == 0:
        return
    # Two reductions decide the common case without a mask the size of the chunk: NaN
    # propagates to the minimum, inf shows in the maximum, a negative value in the minimum.
    if data.min() >= 0 and np.isfinite(data.max()):
        return
    if not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise InputError(
            f"{where} contains {n_bad} non-finite value(s) (NaN or inf); expected raw counts."
        )
    if data.min() < 0:
        n_neg = int((data < 0).sum())
        raise InputError(
            f"{where} contains {n_neg} negative value(s); expected raw counts "
            "(scaled data cannot be used: pass layer= naming the counts layer)."
        )


def matrix_name(layer: str | None) -> str:
    """Human-readable name of the matrix chosen by ``layer`` for error messages."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"
