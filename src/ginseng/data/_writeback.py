"""Write annotation results into an existing ``.h5ad`` file or AnnData ``.zarr`` store.

``gs.tl.classify(path, ..., write=True)`` annotates a file without loading it: it
replaces ``obs`` and the given ``obsm`` and ``uns`` entries in the file and leaves
``X``, the layers and everything else as they were. This module is the only place that
writes into a user's AnnData file.

The update is crash-safe: the elements are written with anndata's
:func:`anndata.io.write_elem` into a staged copy of the file that then replaces it in
one atomic rename (:func:`ginseng.data._atomic.staged_update`), so a process killed at
any moment leaves the file as it was or fully updated, and a second concurrent writer
gets a clear error.

anndata is used through its public API only: ``adata.file.is_open``,
``adata.file.open``/``close`` and ``adata.file["/"]`` (an :class:`h5py.Group`, whose
``.file.mode`` says whether the backed AnnData may write).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anndata import AnnData

from .._errors import InputError
from .._logging import logger

WRITABLE_FORMATS = ("h5ad", "zarr")


def backed_mode(adata: AnnData) -> str | None:
    """``"r"`` or ``"r+"`` for a backed AnnData whose file is open, else ``None``."""
    if not adata.isbacked or not adata.file.is_open:
        return None
    return str(adata.file["/"].file.mode)


def check_writable(path: str | os.PathLike, fmt: str) -> None:
    """Refuse, before any work, a file that ``write_results`` could not write into."""
    path = Path(path)
    if fmt not in WRITABLE_FORMATS:
        raise InputError(
            f"write=True needs an .h5ad or AnnData .zarr file; {path} is not one. Use "
            "return_table=True, or save the returned AnnData with write_h5ad."
        )
    if fmt == "h5ad":
        _check_h5ad_writable(path)


def _check_h5ad_writable(path: Path) -> None:
    """Refuse an ``.h5ad`` that cannot be replaced or that an HDF5 handle holds open.

    Without opening the file for writing: opening ``r+`` and closing rewrites the file's
    metadata, so a process killed while merely checking left the file's bytes changed
    (seen by the crash-safety test under load). Instead, the permission is checked, and
    an exclusive ``flock`` is tried and released at once: it fails while any handle
    (HDF5 takes a shared ``flock`` for reading) has the file open.
    """
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise InputError(
            f"Cannot write into {path}: no write permission for the file or its folder."
        )
    try:
        import fcntl
    except ImportError:  # not POSIX: the staged write reports a held file itself
        return
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            raise InputError(
                f"Cannot write into {path} ({error.strerror or error}): it is open "
                "elsewhere. If an AnnData from an earlier classify call (or "
                "read_h5ad(backed=...)) holds it open, close it first with "
                "adata.file.close()."
            ) from error
        fcntl.flock(handle, fcntl.LOCK_UN)


def write_results(
    adata: AnnData,
    path: str | os.PathLike,
    fmt: str,
    *,
    obsm_keys: Sequence[str],
    uns_keys: Sequence[str],
    prepare: Callable[[Path], tuple[Sequence[str], Sequence[str]]] | None = None,
    write_index: bool = True,
) -> None:
    """Write ``adata.obs`` and the given ``obsm``/``uns`` entries into the file at ``path``.

    Parameters
    ----------
    adata
        Holds the elements to write (in memory, or backed by ``path``).
    path
        The ``.h5ad`` file or AnnData ``.zarr`` store the results go into.
    fmt
        ``"h5ad"`` or ``"zarr"``.
    obsm_keys, uns_keys
        Keys of ``adata.obsm`` and ``adata.uns`` to write; a key that ``adata`` no
        longer holds is deleted from the file. Other entries of the file's ``obsm`` and
        ``uns`` stay as they were.
    prepare
        Called first with the staged copy's path (zarr only), inside the crash-safe
        update: it may write into the copy itself (the dask path's workers write the
        probabilities there) and fill ``adata``; it returns the ``obsm`` and ``uns``
        keys then written from ``adata``, replacing ``obsm_keys`` and ``uns_keys``.
    write_index
        Rewrite ``obs`` whole, its index (the cell names) included. ``False`` when the
        names in ``adata`` are those read from the file: then only the columns are
        written (a column of the file that ``adata.obs`` lacks is removed), which leaves
        the file as a whole rewrite would, without encoding every name again (about 35
        bytes per cell of memory and the time to write them).
    """
    from ._atomic import staged_update

    path = Path(path)
    if fmt not in WRITABLE_FORMATS:
        raise InputError(
            "write=True needs an .h5ad or AnnData .zarr file (a path or a backed AnnData)."
        )
    mode = backed_mode(adata) if fmt == "h5ad" else None
    if mode is not None:
        adata.file.close()  # the staged copy replaces the file the AnnData holds open
    try:
        with staged_update(path, "classify's results") as staged:
            if fmt == "h5ad":
                import h5py

                with h5py.File(staged, "r+") as group:
                    _write_elements(group, adata, obsm_keys, uns_keys, write_index)
            else:
                import zarr

                if prepare is not None:
                    obsm_keys, uns_keys = prepare(staged)
                group = zarr.open_group(staged, mode="r+", use_consolidated=False)
                _write_elements(group, adata, obsm_keys, uns_keys, write_index)
                # anndata writes consolidated metadata; refresh it so readers see the new keys.
                zarr.consolidate_metadata(str(staged))
    finally:
        if mode is not None:
            adata.file.open(path, mode)
    logger.info("wrote obs, obsm %s and uns %s into %s", list(obsm_keys), list(uns_keys), path)


def _write_elements(group: Any, adata: AnnData, obsm_keys, uns_keys, write_index=True) -> None:
    from anndata.io import write_elem

    if write_index or not _write_obs_columns(group, adata.obs):
        write_elem(group, "obs", adata.obs)
    for name, keys in (("obsm", obsm_keys), ("uns", uns_keys)):
        if not keys:
            continue
        if name not in group:
            write_elem(group, name, {})
        mapping = getattr(adata, name)
        for key in keys:
            if key in mapping:
                write_elem(group[name], key, mapping[key])
            elif key in group[name]:  # removed from adata by this run: remove it here too
                del group[name][key]


def _write_obs_columns(group: Any, obs: Any) -> bool:
    """Write the columns of ``obs`` into the file's ``obs``, keeping its index.

    Returns ``False``, writing nothing, when the file's ``obs`` is not anndata's
    ``dataframe`` encoding with an index of ``len(obs)`` names; the caller then writes
    ``obs`` whole.
    """
    import pandas as pd
    from anndata.io import write_elem

    target = group["obs"] if "obs" in group else None
    if target is None or target.attrs.get("encoding-type") != "dataframe":
        return False
    index_key = target.attrs.get("_index")
    if index_key not in target or _element_length(target[index_key]) != len(obs):
        return False
    columns = [str(c) for c in obs.columns]
    for name in list(target.keys()):
        if name != index_key and name not in columns:
            del target[name]
    for name in columns:
        series = obs[name]
        # An extension array (categorical, nullable, string) as anndata writes it in a
        # data frame; anything else as a numpy array.
        dtype = series.dtype
        values = (
            series.array
            if isinstance(dtype, pd.api.extensions.ExtensionDtype)
            else series.to_numpy()
        )
        write_elem(target, name, values)
    target.attrs["column-order"] = columns
    return True


def _element_length(element: Any) -> int | None:
    """Rows of a stored array: a dataset's, or an encoded group's (``None`` if unknown).

    anndata >= 0.13 with pandas 3 writes a string index as a group (e.g. the
    ``nullable-string-array`` encoding: ``values`` and ``mask``), older versions as a
    dataset.
    """
    shape = getattr(element, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else None
    for key in ("values", "codes"):
        if key in element:
            return int(element[key].shape[0])
    return None
