"""Pre-flight check of an AnnData file's declared matrix shapes, before anndata reads it.

A sparse matrix in an ``.h5ad`` / anndata ``.zarr`` declares its shape in an attribute,
independently of the arrays it holds. A damaged or hostile file can declare 10^12 rows
over a few bytes of data; anndata then allocates an ``indptr`` for every declared row
(a ``MemoryError`` of terabytes) or fails deep in scipy. Comparing each matrix's
declared shape with the lengths of ``obs`` and ``var`` costs a few metadata reads.
"""

from __future__ import annotations

from pathlib import Path

from .._errors import InputError


def _index_length(group, name: str) -> int | None:
    """Number of rows of the ``obs`` / ``var`` dataframe element ``name``."""
    if name not in group:
        return None
    frame = group[name]
    index = frame.attrs.get("_index")
    if isinstance(index, bytes):
        index = index.decode()
    if not isinstance(index, str) or index not in frame:
        return None
    element = frame[index]
    # A plain array, or (newer anndata, pandas 3 strings) a group holding its values.
    if not hasattr(element, "shape") and "values" in element:
        element = element["values"]
    shape = getattr(element, "shape", None)
    return int(shape[0]) if shape else None


def _declared_shape(element) -> tuple[int, ...] | None:
    encoding = element.attrs.get("encoding-type", "")
    if isinstance(encoding, bytes):
        encoding = encoding.decode()
    if str(encoding).endswith("_matrix") and "shape" in element.attrs:
        return tuple(int(n) for n in element.attrs["shape"])
    shape = getattr(element, "shape", None)
    return tuple(int(n) for n in shape) if shape is not None else None


def check_declared_shapes(group, label: str) -> None:
    """Refuse ``X`` or a layer whose declared shape is not ``n_obs x n_vars``.

    ``group`` is the file's root (an ``h5py.File`` or a ``zarr.Group``); elements this
    check cannot interpret are left to anndata.
    """
    n_obs, n_vars = _index_length(group, "obs"), _index_length(group, "var")
    if n_obs is None or n_vars is None:
        return
    elements = [("X", "X")] if "X" in group else []
    if "layers" in group:
        elements += [(f"layers/{k}", f"layers[{k!r}]") for k in group["layers"]]
    for key, name in elements:
        shape = _declared_shape(group[key])
        if shape is not None and shape != (n_obs, n_vars):
            raise InputError(
                f"{name} of {label} declares shape {shape}, but the file has {n_obs} cells "
                f"(obs) x {n_vars} genes (var): the file is damaged or was written "
                "inconsistently."
            )


def check_file(path: Path, fmt: str, label: str) -> None:
    """:func:`check_declared_shapes` on the ``.h5ad`` or anndata ``.zarr`` at ``path``."""
    if fmt == "h5ad":
        import h5py

        with h5py.File(path, "r") as f:
            check_declared_shapes(f, label)
    elif fmt == "zarr":
        import zarr

        check_declared_shapes(zarr.open_group(path, mode="r"), label)
