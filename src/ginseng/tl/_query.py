"""Open the data ``classify`` annotates.

Whatever the input (AnnData in memory or backed, an ``.h5ad`` or AnnData ``.zarr``
path, any other format ``read_adata`` reads), classification sees the same thing: an
AnnData whose ``obs``/``var``/``uns`` receive the results, and a count matrix that is
read ``chunk`` rows at a time and is never loaded whole. Results go back into the file
through :func:`ginseng.data.write_results`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anndata import AnnData

from .._errors import InputError
from .._logging import logger
from ..data import check_writable, get_matrix, matrix_name


@dataclass
class Query:
    """The AnnData receiving results, its counts, and where to write results back."""

    adata: AnnData
    matrix: Any
    layer: str | None
    where: str
    file: Path | None = None
    fmt: str | None = None
    layers: list[str] = field(default_factory=list)


def _resolve_layer(layers: list[str], layer: str | None, counts_fallback: bool) -> str | None:
    if counts_fallback and layer == "counts" and "counts" not in layers:
        logger.info("no layer 'counts'; classifying the counts in .X")
        return None
    return layer


def open_query(
    adata: AnnData | str | os.PathLike,
    layer: str | None,
    *,
    counts_fallback: bool = False,
    write: bool = False,
) -> Query:
    """Wrap ``adata`` (or the file at that path) for chunked classification.

    ``counts_fallback``: ``layer="counts"`` falls back to ``.X`` when there is no such
    layer (the seed API's default), saying so in the log. ``write``: check up front that
    a path can be written, rather than after classifying every cell.
    """
    if isinstance(adata, AnnData):
        layer = _resolve_layer(list(adata.layers.keys()), layer, counts_fallback)
        file = Path(adata.filename) if adata.isbacked else None
        return Query(
            adata,
            get_matrix(adata, layer),
            layer,
            matrix_name(layer),
            file=file,
            fmt="h5ad" if file else None,
            layers=list(adata.layers.keys()),
        )
    if not isinstance(adata, str | os.PathLike):
        raise InputError(f"adata must be an AnnData or a path to one, got {type(adata).__name__}.")
    from ..data import detect_format, read_adata

    path = Path(adata).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist.")
    fmt, _ = detect_format(path, str(path))
    if write:
        check_writable(path, fmt)
    if fmt == "h5ad":
        backed = read_adata(path, backed="r")
        layers = list(backed.layers.keys())
        layer = _resolve_layer(layers, layer, counts_fallback)
        where = f"{path}: {matrix_name(layer)}"
        return Query(backed, get_matrix(backed, layer), layer, where, path, "h5ad", layers)
    if fmt == "zarr":
        return _open_zarr(path, layer, counts_fallback)
    # 10x files have no obs/obsm to write into: read them in memory, results stay there.
    loaded = read_adata(path)
    layer = _resolve_layer(list(loaded.layers.keys()), layer, counts_fallback)
    return Query(loaded, get_matrix(loaded, layer), layer, f"{path}: {matrix_name(layer)}")


def _open_zarr(path: Path, layer: str | None, counts_fallback: bool) -> Query:
    """An AnnData of the store's obs/var/uns/obsm; the counts stay in the store."""
    import zarr
    from anndata.io import read_elem, sparse_dataset

    try:
        group = zarr.open_group(path, mode="r")
        layers_group = group["layers"] if "layers" in group else None
        layers = list(layers_group.keys()) if isinstance(layers_group, zarr.Group) else []
        layer = _resolve_layer(layers, layer, counts_fallback)
        key = "X" if layer is None else f"layers/{layer}"
        if key not in group:
            available = ", ".join(map(repr, layers)) or "none"
            raise InputError(f"{path} has no {key!r} (layers: {available}).")
        element = group[key]
        encoding = str(element.attrs.get("encoding-type", ""))
        matrix = sparse_dataset(element) if encoding.endswith("_matrix") else element
        parts = {k: read_elem(group[k]) for k in ("obs", "var", "uns", "obsm") if k in group}
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"Could not read {path} as an AnnData zarr store: {error}") from error
    adata = AnnData(**{k: v for k, v in parts.items() if k != "obsm"})
    for key_, value in parts.get("obsm", {}).items():
        adata.obsm[key_] = value
    return Query(adata, matrix, layer, f"{path}: {matrix_name(layer)}", path, "zarr", layers)
