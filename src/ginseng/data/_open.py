"""Opening a GinsengDataset store: refuse anything foreign, newer, truncated or damaged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import _keys
from .._errors import StoreError
from ._chunks import FlatArray

# Values per read while checking the small per-cell arrays (8 MB of int64).
_CHECK_SLICE = 1 << 20

_REQUIRED = ("X/data", "X/indices", "X/indptr", "cell_index", "labels", "genes")


def open_store(path: Path) -> tuple[Any, dict[str, Any]]:
    """Open the zarr group at ``path`` read-only and return it with its attributes.

    Cheap checks only (metadata and shapes, no counts read), so opening stays instant
    for stores of any size; each failure is a :class:`StoreError` naming ``path``.
    """
    import zarr

    where = repr(str(path))
    if not path.exists():
        raise StoreError(f"No GinsengDataset store at {where}: the path does not exist.")
    try:
        # Any: zarr types a group's members as Array | Group, each use site knows which.
        group: Any = zarr.open_group(path, mode="r", zarr_format=3)
        attrs: dict[str, Any] = dict(group.attrs)
    except Exception as err:  # zarr raises several types for foreign directories
        raise StoreError(
            f"{where} is not a GinsengDataset store (no readable zarr v3 group: {err})."
        ) from err
    if attrs.get("format") != _keys.STORE_FORMAT:
        raise StoreError(
            f"{where} is not a GinsengDataset store (format attribute "
            f"{attrs.get('format')!r}, expected {_keys.STORE_FORMAT!r})."
        )
    version = attrs.get("format_version")
    if not isinstance(version, int) or version > _keys.STORE_FORMAT_VERSION:
        raise StoreError(
            f"Store {where} has format version {version!r}; this ginseng reads "
            f"up to {_keys.STORE_FORMAT_VERSION}. Upgrade ginseng or recreate the store."
        )
    required = _REQUIRED + (("groups",) if attrs.get("group_key") else ())
    missing = [name for name in required if name not in group]
    if missing:
        raise StoreError(f"Store {where} is truncated: missing {missing}. Recreate it.")
    n, nnz, n_genes = int(attrs["n_cells"]), int(attrs["nnz"]), int(attrs["n_genes"])
    expected = {
        "X/indptr": (n + 1,),
        "X/data": (nnz,),
        "X/indices": (nnz,),
        "labels": (n,),
        "genes": (n_genes,),
    }
    bad = {k: (group[k].shape, v) for k, v in expected.items() if group[k].shape != v}
    if bad:
        raise StoreError(f"Store {where} is inconsistent (shape, expected): {bad}. Recreate it.")
    _check_files(path, where)
    _check_indptr(group, where, nnz)
    _check_codes(group, "labels", len(attrs.get("label_names", [])), where)
    if attrs.get("group_key"):
        _check_codes(group, "groups", len(attrs.get("group_names", [])), where)
    return group, attrs


def _check_files(path: Path, where: str) -> None:
    """Refuse links among the store's files: a chunk must be the store's own bytes.

    A chunk that is a symbolic link may point anywhere (random bytes decode to garbage or
    fail deep inside numcodecs; a dangling link reads as zeros), so none is accepted.
    """
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            entry = Path(root) / name
            if entry.is_symlink():
                raise StoreError(
                    f"Store {where} is damaged: {str(entry.relative_to(path))!r} is a "
                    f"symbolic link (to {str(entry.readlink())!r}); a store holds only its own "
                    "files. Recreate it."
                )


def _slices(n: int):
    for start in range(0, n, _CHECK_SLICE):
        yield start, min(start + _CHECK_SLICE, n)


def _check_indptr(group, where: str, nnz: int) -> None:
    """``X/indptr`` starts at 0, never decreases and ends at the number of values."""
    indptr = FlatArray(group["X/indptr"])
    previous = 0
    for start, stop in _slices(indptr.shape[0]):
        values = indptr[start:stop]
        if start == 0 and values[0] != 0:
            raise StoreError(f"Store {where} is damaged: X/indptr starts at {values[0]}, not 0.")
        steps = np.diff(values, prepend=previous)
        if (steps < 0).any():
            row = start + int(np.argmax(steps < 0)) - 1
            raise StoreError(
                f"Store {where} is damaged: X/indptr decreases at row {row} "
                "(rows would overlap). Recreate it."
            )
        previous = values[-1]
    if previous != nnz:
        raise StoreError(
            f"Store {where} is damaged: X/indptr ends at {previous}, but the store holds "
            f"{nnz} values. Recreate it."
        )


def _check_codes(group, name: str, n_names: int, where: str) -> None:
    """Codes of ``labels`` / ``groups`` index their names."""
    codes = group[name]
    for start, stop in _slices(codes.shape[0]):
        values = codes[start:stop]
        if values.size and (values.min() < 0 or values.max() >= n_names):
            bad = values[(values < 0) | (values >= n_names)][0]
            raise StoreError(
                f"Store {where} is damaged: {name} holds code {bad}, but there are "
                f"{n_names} {name[:-1]} names. Recreate it."
            )
