"""Writing a GinsengDataset store: validate, externally shuffle, compress, rename.

The store holds the counts as CSR in a random row order, so that reading contiguous
blocks later gives near-iid mini-batches even when the source is sorted by label or
batch. The shuffle is external and bounded in memory: pass 1 reads the source chunk
by chunk and routes every row to the shard that owns its destination position (a few
appends per chunk into flat binary files); pass 2 loads one shard at a time, puts its
rows in destination order and appends them to the compressed zarr arrays. Peak memory
is therefore set by the chunk size, never by the number of cells.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .. import _keys
from .._errors import InputError, StoreError
from .._logging import logger, progress
from .._write import check_free_space, writing
from ._chunks import FlatArrayWriter
from ._inputs import encode_labels, encode_obs_column, select_genes
from ._matrix import check_finite_nonnegative, get_matrix, iter_row_chunks, matrix_name
from ._preflight import check_raw_counts
from ._shuffle import ShardFiles

# Values per compressed chunk of the flat CSR arrays. zarr's per-chunk overhead
# dominates below this: 64k-value chunks read 2-3x slower (measured on 100k x 2k cells),
# while one chunk still holds only ~100-1000 cells, far less than a streamed block.
VALUES_PER_CHUNK = 262_144


def _compressors(dtype: np.dtype) -> list:
    from zarr.codecs import BloscCodec

    # Blosc's lz4 decompresses ~1.5x faster than zstd here for a ~10% larger store;
    # bit-shuffling small integer counts makes them compress like a run of zeros.
    shuffle: Literal["bitshuffle", "shuffle"] = "bitshuffle" if dtype.itemsize <= 2 else "shuffle"
    return [BloscCodec(cname="lz4", clevel=5, shuffle=shuffle)]


def _counts_dtype(all_integer: bool, max_value: float) -> np.dtype:
    if not all_integer:
        return np.dtype(np.float32)
    if max_value <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if max_value <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    return np.dtype(np.float32)


def _route_rows(
    matrix,
    gene_idx: np.ndarray,
    n_genes_source: int,
    dest: np.ndarray,
    shard_rows: int,
    shards: ShardFiles,
    chunk_size: int,
    where: str,
    guard,
    raw_check: Callable[[sp.csr_matrix], None] | None = None,
) -> tuple[int, bool, float]:
    """Pass 1: read the source, validate it, append each row to its shard.

    ``guard()`` is the :func:`ginseng._write.writing` context of the store's writes; it
    wraps the appends only, so that errors reading the source keep their own message.
    ``raw_check``, if given, runs on the first chunk that holds values.

    Returns the number of stored values, whether all are integers, and the maximum.
    """
    all_genes = gene_idx.size == n_genes_source
    nnz, all_integer, max_value = 0, True, 0.0
    bar = progress(total=dest.size, desc="reading counts", unit=" cells")
    for rows, chunk in iter_row_chunks(matrix, chunk_size):
        if not all_genes:
            chunk = chunk[:, gene_idx]
        chunk.eliminate_zeros()
        chunk.sort_indices()
        check_finite_nonnegative(chunk, where=where)
        if raw_check is not None and chunk.nnz:
            raw_check(chunk)
            raw_check = None
        if chunk.nnz:
            all_integer = all_integer and bool(np.array_equal(chunk.data, np.rint(chunk.data)))
            max_value = max(max_value, float(chunk.data.max()))
        nnz += chunk.nnz
        chunk_dest = dest[rows]
        shard_of = chunk_dest // shard_rows
        order = np.argsort(shard_of, kind="stable")
        chunk, chunk_dest, shard_of = chunk[order], chunk_dest[order], shard_of[order]
        bounds = np.searchsorted(shard_of, np.arange(shards.n_shards + 1))
        with guard():
            for shard in np.flatnonzero(np.diff(bounds)):
                lo, hi = bounds[shard], bounds[shard + 1]
                shards.append(int(shard), chunk_dest[lo:hi], chunk[lo:hi])
        bar.update(chunk.shape[0])
    bar.close()
    return nnz, all_integer, max_value


def _write_counts(
    group,
    shards: ShardFiles,
    n_cells: int,
    n_genes: int,
    nnz: int,
    dtype: np.dtype,
    shard_rows: int,
) -> None:
    """Pass 2: put each shard's rows in destination order and append them."""
    data = group.create_array(
        "X/data",
        shape=(nnz,),
        chunks=(VALUES_PER_CHUNK,),
        dtype=dtype,
        compressors=_compressors(dtype),
    )
    indices = group.create_array(
        "X/indices",
        shape=(nnz,),
        chunks=(VALUES_PER_CHUNK,),
        dtype=np.int32,
        compressors=_compressors(np.dtype(np.int32)),
    )
    data, indices = FlatArrayWriter(data), FlatArrayWriter(indices)
    # X/indptr is appended shard by shard too: no array of one int64 per cell.
    indptr = FlatArrayWriter(
        group.create_array(
            "X/indptr",
            shape=(n_cells + 1,),
            chunks=(VALUES_PER_CHUNK,),
            dtype=np.int64,
            compressors=_compressors(np.dtype(np.int64)),
        )
    )
    indptr.append(np.zeros(1, np.int64))
    offset = 0
    for shard in progress(range(shards.n_shards), desc="writing store", unit=" shards"):
        dest, block = shards.read(shard, n_genes)
        order = np.argsort(dest)
        start = shard * shard_rows
        expected = np.arange(start, min(start + shard_rows, n_cells))
        if not np.array_equal(dest[order], expected):
            raise StoreError(
                f"Internal error: shard {shard} of the external shuffle is incomplete."
            )
        block = block[order]
        indptr.append(offset + block.indptr[1:])
        data.append(block.data)
        indices.append(block.indices)
        offset += block.nnz
    data.close()
    indices.close()
    indptr.close()


def _write_array(group, name: str, values: np.ndarray) -> None:
    if values.dtype.kind in "OUT":
        array = group.create_array(name, shape=values.shape, dtype=str)
        array[:] = values.astype(str)
    else:
        group.create_array(name, data=values, chunks=(max(1, min(values.size, 1 << 20)),))


def _write_sliced(group, name: str, n: int, dtype: np.dtype, values: Callable) -> None:
    """Write ``values(lo, hi)`` for consecutive slices of ``n`` as ``dtype``.

    The same array as :func:`_write_array` writes, without ever holding it whole:
    ``cell_index`` (int64 on disk) and the stored label and group codes, gathered in
    stored order, cost only their slice.
    """
    step = max(1, min(n, 1 << 20))
    array = group.create_array(name, shape=(n,), dtype=dtype, chunks=(step,))
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        array[lo:hi] = np.asarray(values(lo, hi), dtype=dtype)


def _stored_values(matrix) -> int | None:
    """Number of stored values of a sparse source, read without loading it."""
    if sp.issparse(matrix):
        return int(matrix.nnz)
    group = getattr(matrix, "group", None)  # anndata's backed sparse dataset
    if group is not None and "indptr" in group:
        return int(group["indptr"][-1])
    return None


def space_needed(matrix, n_cells: int, n_genes_source: int, n_genes: int) -> int | None:
    """Estimated peak disk use of :func:`create_store`, in bytes (``None``: unknown).

    Pass 1's shard files take 8 bytes per stored value (float32 value, int32 index) and
    16 per cell; pass 2 writes the compressed store next to them, at most as large
    again (counts compress to about 2-4 bytes per value). With a gene subset the values
    of the chosen genes are estimated by their share of the genes. Dense sources give
    ``None``: their number of non-zero values is unknown until they are read.
    """
    nnz = _stored_values(matrix)
    if nnz is None:
        return None
    values = nnz * n_genes / max(n_genes_source, 1)
    return int(2 * (8 * values + 16 * n_cells))


def _source_description(adata: AnnData, source: str | None) -> str:
    if source is not None:
        return source
    if adata.isbacked:
        return str(adata.filename)
    return "AnnData (in memory)"


def _replace(tmp: Path, path: Path) -> None:
    """Move the finished store into place; an old store there is removed only now."""
    if path.exists():
        trash = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        path.replace(trash)
        tmp.replace(path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.replace(path)


def check_output_path(path: Path, overwrite: bool) -> None:
    """Refuse to replace anything but a ginseng store, and that only with overwrite."""
    if not path.exists():
        if not path.parent.exists():
            raise InputError(
                f"Cannot create store {str(path)!r}: folder {str(path.parent)!r} does not exist."
            )
        return
    if not overwrite:
        raise InputError(
            f"Store path {str(path)!r} already exists; pass overwrite=True to replace it."
        )
    meta = path / "zarr.json"
    try:
        is_store = json.loads(meta.read_text())["attributes"]["format"] == _keys.STORE_FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        is_store = False
    if not is_store:
        raise StoreError(
            f"{str(path)!r} exists and is not a GinsengDataset store; refusing to delete it "
            "even with overwrite=True. Choose another path."
        )


def create_store(
    path: Path,
    adata: AnnData,
    *,
    label_key: str,
    layer: str | None,
    genes,
    group_key: str | None,
    overwrite: bool,
    chunk_size: int,
    seed: int,
    source: str | None,
    check_counts: bool = True,
) -> None:
    """Validate ``adata`` and write it as a GinsengDataset store at ``path`` (atomically)."""
    from .. import __version__

    check_output_path(path, overwrite)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(
            f"Cannot create a store from an empty AnnData ({adata.n_obs} cells x {adata.n_vars} genes)."
        )
    labels = encode_labels(adata, label_key)
    groups = (
        encode_obs_column(adata, group_key, role="group_key") if group_key is not None else None
    )
    gene_idx = select_genes(adata, genes)
    matrix = get_matrix(adata, layer)
    n_cells, n_genes = adata.n_obs, gene_idx.size

    import zarr

    needed = space_needed(matrix, n_cells, adata.n_vars, n_genes)
    if needed is not None:
        # Refuse only when clearly too small: the estimate is rough, by a factor of ~2.
        check_free_space(path.parent, needed, f"the GinsengDataset store {str(path)!r}", margin=0.5)

    raw_check = None
    if check_counts:

        def raw_check(chunk: sp.csr_matrix) -> None:
            check_raw_counts(chunk, where=matrix_name(layer), layers=list(adata.layers.keys()))

    def guard():
        return writing(path, "the GinsengDataset store", needed=needed)

    rng = np.random.default_rng(seed)
    # Destination row of each source row; int32 halves the one per-cell array held
    # through both passes (the permutation itself is the same for a given seed).
    index_dtype = np.int32 if n_cells < np.iinfo(np.int32).max else np.int64
    dest = rng.permutation(n_cells).astype(index_dtype)
    shard_rows = chunk_size
    n_shards = -(-n_cells // shard_rows)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with guard():
        tmp.mkdir()
    try:
        with guard():
            # Opening with mode="w" empties the folder, so it comes before the shard files.
            group = zarr.open_group(tmp, mode="w", zarr_format=3)
            shards = ShardFiles(tmp / "_shuffle", n_shards)
        try:
            nnz, all_integer, max_value = _route_rows(
                matrix,
                gene_idx,
                adata.n_vars,
                dest,
                shard_rows,
                shards,
                chunk_size,
                matrix_name(layer),
                guard,
                raw_check,
            )
        finally:
            with guard():
                shards.close()
        dtype = _counts_dtype(all_integer, max_value)
        with guard():
            _write_counts(group, shards, n_cells, n_genes, nnz, dtype, shard_rows)
            shutil.rmtree(shards.root)
            # Source row of each stored row: the inverse permutation, without argsort's
            # int64 result and its temporaries.
            cell_index = np.empty(n_cells, dtype=index_dtype)
            cell_index[dest] = np.arange(n_cells, dtype=index_dtype)
            del dest
            int64 = np.dtype(np.int64)
            _write_sliced(group, "cell_index", n_cells, int64, lambda lo, hi: cell_index[lo:hi])
            codes = labels.codes
            _write_sliced(
                group, "labels", n_cells, codes.dtype, lambda lo, hi: codes[cell_index[lo:hi]]
            )
            _write_array(group, "genes", np.asarray(adata.var_names[gene_idx], dtype=str))
            if groups is not None:
                group_codes = groups.codes
                _write_sliced(
                    group,
                    "groups",
                    n_cells,
                    group_codes.dtype,
                    lambda lo, hi: group_codes[cell_index[lo:hi]],
                )
            group.attrs.update(
                {
                    "format": _keys.STORE_FORMAT,
                    "format_version": _keys.STORE_FORMAT_VERSION,
                    "ginseng_version": __version__,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "source": _source_description(adata, source),
                    "layer": layer if layer is not None else "X",
                    "label_key": label_key,
                    "label_names": labels.names.tolist(),
                    "group_key": group_key if group_key is not None else "",
                    "group_names": groups.names.tolist() if groups is not None else [],
                    "n_cells": n_cells,
                    "n_genes": int(n_genes),
                    "nnz": int(nnz),
                    "counts_dtype": dtype.name,
                    "shuffle_seed": int(seed),
                }
            )
            _replace(tmp, path)
    except BaseException:
        # Interrupts included: a failed create must leave nothing behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "stored %d cells x %d genes (%s counts, %d labels) in %s",
        n_cells,
        n_genes,
        dtype.name,
        labels.names.size,
        path,
    )
