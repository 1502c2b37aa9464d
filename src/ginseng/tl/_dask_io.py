"""The files on the dask path of ``gs.tl.classify``: rows read lazily, the array written.

:func:`lazy_rows` presents the counts of an ``.h5ad`` or ``.zarr`` file as a dask
array whose blocks each worker reads for itself (the client reads no counts), and
:func:`create_probability_array` creates the empty ``obsm`` array, in anndata's
encoding, that the workers of :func:`ginseng.tl._dask.classify_dask` fill;
:func:`compute_settled` computes so that no task still writes once an error is raised.
Nothing here imports dask, h5py or zarr before it is called.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def compute_settled(*collections: Any) -> tuple[Any, ...]:
    """``dask.compute(*collections)``, raising a task's error only once no task still runs.

    dask raises the first error while other tasks keep running; those writing the
    probabilities into a staged copy of the user's store would then write into it after
    the failed update removed it, leaving a half-written copy behind. Here, with a
    distributed client the collections are persisted and the task of every output chunk
    (every block) is waited for (``distributed.wait``), and with the
    local threaded scheduler the thread pool is shut down, waiting for running tasks,
    before the error propagates. Other schedulers run as ``dask.compute`` does.
    """
    import dask
    import dask.threaded
    from dask.base import get_scheduler

    scheduler = get_scheduler(collections=collections)
    client = getattr(scheduler, "__self__", None)
    if client is not None and hasattr(client, "persist") and hasattr(client, "gather"):
        from distributed import futures_of, wait

        # One future per output chunk (each block's task), not one per collection: a
        # collection's future errs with its first failed block while the others run.
        persisted = client.persist(list(collections))
        wait(futures_of(persisted))  # every block finished, errors included
        return tuple(client.gather(client.compute(persisted)))
    if scheduler is dask.threaded.get:
        from concurrent.futures import ThreadPoolExecutor

        from dask.system import CPU_COUNT

        pool = ThreadPoolExecutor(max_workers=CPU_COUNT, thread_name_prefix="ginseng-dask")
        try:
            return tuple(dask.compute(*collections, scheduler="threads", pool=pool))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return tuple(dask.compute(*collections))


def create_probability_array(group: Any, key: str, n_cells: int, n_labels: int, rows: int) -> None:
    """An empty float32 ``obsm[key]`` array in anndata's encoding, chunked by ``rows``.

    ``group`` is the zarr root of an AnnData store; the workers fill the array.
    """
    obsm = group["obsm"] if "obsm" in group else group.create_group("obsm")
    if "encoding-type" not in obsm.attrs:
        obsm.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
    if key in obsm:
        del obsm[key]
    array = obsm.create_array(
        key,
        shape=(n_cells, n_labels),
        chunks=(max(1, min(rows, n_cells)), n_labels),
        dtype=np.float32,
        fill_value=0.0,
    )
    array.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})


def _read_rows(path: str, fmt: str, key: str, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of the matrix ``key`` of an ``.h5ad`` or ``.zarr`` file (CSR or dense)."""
    from anndata.io import sparse_dataset

    if fmt == "h5ad":
        import h5py

        with h5py.File(path, "r") as file:
            elem = file[key]
            if isinstance(elem, h5py.Group):
                return sparse_dataset(elem)[start:stop].tocsr()
            return np.asarray(elem[start:stop])
    import zarr

    elem = zarr.open_group(path, mode="r")[key]
    if isinstance(elem, zarr.Group):
        return sparse_dataset(elem)[start:stop].tocsr()
    return np.asarray(elem[start:stop])


def lazy_rows(path: str, fmt: str, key: str, shape: tuple[int, int], dtype: Any, rows: int) -> Any:
    """The matrix ``key`` of the file at ``path`` as a dask array of ``rows``-row blocks.

    Each block is read by the worker that classifies it, with anndata's sparse dataset
    (a row slice reads only those rows), so the client reads no counts. Used for a path
    given to ``classify`` while a ``distributed.Client`` is active.
    """
    import dask
    import dask.array as da
    import scipy.sparse as sp

    n, n_vars = shape
    read = dask.delayed(_read_rows, pure=True)
    meta = sp.csr_matrix((0, n_vars), dtype=dtype)
    blocks = [
        da.from_delayed(
            read(str(path), fmt, key, start, min(start + rows, n)),
            shape=(min(start + rows, n) - start, n_vars),
            dtype=dtype,
            meta=meta,
        )
        for start in range(0, n, rows)
    ]
    return da.concatenate(blocks, axis=0)
