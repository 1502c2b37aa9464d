"""Per-batch, per-gene sums of raw counts over the row chunks of a matrix.

The statistics behind :func:`ginseng.pp.select_hvgs` are sums over cells, so they are
accumulated over row chunks (in float64) and memory stays bounded by the chunk size
whether the AnnData is in memory or backed. The arithmetic mirrors scanpy's
``highly_variable_genes`` (squares of float32 data taken in float32, the same unbiased
variance) so that the selection is the one scanpy makes on the same counts.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._logging import progress
from ..data import check_finite_nonnegative, iter_row_chunks

_TARGET_SUM = 1e4
# Stored values handled at once inside a chunk (bounds the float64 temporaries).
_SLICE_NNZ = 1 << 21


def _squares(data: np.ndarray) -> np.ndarray:
    # scanpy squares float32 data in float32 before accumulating in float64; doing the
    # same keeps the variances, hence near-ties in the ranking, identical.
    if data.dtype == np.float32:
        return (data * data).astype(np.float64)
    data = data.astype(np.float64)
    return data * data


def _cell_scale(chunk: sp.csr_matrix) -> np.ndarray:
    """Per-cell divisor of ``normalize_total(target_sum=1e4)``, in scanpy's precision."""
    totals: np.ndarray = np.asarray(chunk.sum(axis=1, dtype=np.float64)).ravel()
    if chunk.dtype != np.float64:
        totals = totals.astype(np.float32)
    scale = totals / _TARGET_SUM
    return scale + (scale == 0)


def _log_roundtrip(data: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``expm1(log1p(data / scale))`` as scanpy's seurat flavor sees normalised counts."""
    data = data.astype(scale.dtype) / scale
    np.log1p(data, out=data)
    np.expm1(data, out=data)
    return data


class ChunkReader:
    """Per-batch, per-gene sums over the row chunks of a matrix."""

    def __init__(
        self,
        matrix: Any,
        chunk_size: int,
        codes: np.ndarray,
        n_batches: int,
        where: str,
        columns: np.ndarray | None = None,
    ):
        self.matrix = matrix
        self.chunk_size = chunk_size
        self.codes = codes
        self.n_batches = n_batches
        self.where = where
        # Only these columns (sorted indices), as if the matrix had no others.
        self.columns = columns
        self.n_genes = int(matrix.shape[1] if columns is None else len(columns))
        self.n_cells = np.bincount(codes, minlength=n_batches)
        self.checked = False

    def sums(
        self, *, normalise: bool = False, clip: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return per-batch sums and sums of squares, shape ``(n_batches, n_genes)``.

        ``normalise`` sums normalised counts as the seurat flavor sees them; ``clip``
        (``(n_batches, n_genes)``) caps each value before summing.
        """
        size = self.n_batches * self.n_genes
        total, total_sq = np.zeros(size), np.zeros(size)
        non_integer = False
        n_chunks = math.ceil(self.matrix.shape[0] / self.chunk_size)
        chunks = iter_row_chunks(self.matrix, self.chunk_size)
        for rows, chunk in progress(chunks, total=n_chunks, desc="hvg", unit="chunk"):
            if not self.checked:
                check_finite_nonnegative(chunk, where=self.where)
            if self.columns is not None:
                chunk = sp.csr_matrix(chunk[:, self.columns])
            scale = _cell_scale(chunk) if normalise else None
            row_offset = self.codes[rows] * self.n_genes
            indptr = chunk.indptr
            # The float64 temporaries below take 8 bytes per stored value: walk the
            # chunk in slices of rows so they stay small whatever chunk_size is.
            step = max(1, chunk.shape[0] * _SLICE_NNZ // max(chunk.nnz, 1))
            for r0 in range(0, chunk.shape[0], step):
                r1 = min(r0 + step, chunk.shape[0])
                data = chunk.data[indptr[r0] : indptr[r1]]
                lengths = np.diff(indptr[r0 : r1 + 1])
                if not self.checked and not non_integer:
                    non_integer = bool(np.any(data != np.round(data)))
                if scale is not None:
                    data = _log_roundtrip(data, np.repeat(scale[r0:r1], lengths))
                key = chunk.indices[indptr[r0] : indptr[r1]].astype(np.intp)
                if self.n_batches > 1:
                    key += np.repeat(row_offset[r0:r1], lengths)
                if clip is None:
                    values, squares = data.astype(np.float64), _squares(data)
                else:
                    values = np.minimum(data.astype(np.float64), clip.ravel()[key])
                    squares = values * values
                total += np.bincount(key, weights=values, minlength=size)
                total_sq += np.bincount(key, weights=squares, minlength=size)
        if not self.checked and non_integer:
            warnings.warn(
                f"{self.where} contains non-integer values; select_hvgs expects raw counts.",
                UserWarning,
                stacklevel=4,
            )
        self.checked = True
        shape = (self.n_batches, self.n_genes)
        return total.reshape(shape), total_sq.reshape(shape)


def mean_var(total: np.ndarray, total_sq: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    # Same formula and unbiased correction as scanpy's _get_mean_var.
    mean = total / n
    var = total_sq / n - mean**2
    if n != 1:
        var *= n / (n - 1)
    return mean, var
