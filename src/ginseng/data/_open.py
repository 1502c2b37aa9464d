"""Opening a GinsengDataset store: refuse anything foreign, newer or truncated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import _keys
from .._errors import StoreError

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
    return group, attrs
