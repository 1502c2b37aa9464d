"""Recognising what a path holds (``.h5ad``, AnnData ``.zarr``, 10x ``.h5`` or folder) by content."""

from __future__ import annotations

import json
from pathlib import Path

from .. import _keys
from .._errors import InputError

ACCEPTED_FORMATS = (
    "an AnnData, an .h5ad file, an AnnData .zarr store, a 10x Genomics .h5 file, "
    "a 10x matrix directory (matrix.mtx.gz + features.tsv.gz + barcodes.tsv.gz, or "
    "matrix.mtx + genes.tsv + barcodes.tsv), or an http(s):// URL of one of these files"
)
FORMAT_NAMES = {
    "h5ad": ".h5ad",
    "zarr": "AnnData zarr store",
    "10x_h5": "10x Genomics .h5",
    "10x_mtx": "10x matrix directory",
}


def detect_format(path: Path, label: str) -> tuple[str, str]:
    """Return ``(format, 10x file-name prefix)`` of ``path`` by looking at its content."""
    if path.is_dir():
        return _detect_directory(path, label)
    import h5py

    if not h5py.is_hdf5(path):
        if path.suffix.lower() in (".h5ad", ".h5", ".hdf5"):
            raise InputError(f"{label} is not a valid HDF5 file (empty, truncated or corrupt).")
        raise InputError(f"Unknown format of {label}; expected {ACCEPTED_FORMATS}.")
    try:
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            attrs = {k: _as_str(v) for k, v in f.attrs.items()}
            if attrs.get("encoding-type") == "anndata":
                return "h5ad", ""
            if isinstance(f.get("matrix"), h5py.Group):
                return "10x_h5", ""
            if {"obs", "var"} <= keys:  # written before anndata 0.8 tagged its files
                return "h5ad", ""
            if attrs.get("format") == _keys.MODEL_FORMAT:
                raise InputError(
                    f"{label} is a ginseng model file, not single-cell data; load it "
                    "with ginseng.data.io.load_model."
                )
            # Cell Ranger v2: one group per genome, each with barcodes and gene names.
            if keys and all(
                isinstance(f[k], h5py.Group) and {"barcodes", "gene_names"} <= set(f[k].keys())
                for k in keys
            ):
                return "10x_h5", ""
    except OSError as error:
        raise InputError(f"{label} is a truncated or corrupt HDF5 file: {error}") from error
    raise InputError(
        f"{label} is an HDF5 file but neither an AnnData .h5ad nor a 10x Genomics .h5 "
        f"(top-level keys: {sorted(keys)[:10]}); expected {ACCEPTED_FORMATS}."
    )


def _detect_directory(path: Path, label: str) -> tuple[str, str]:
    names = sorted(p.name for p in path.iterdir())
    if {"zarr.json", ".zgroup", ".zattrs"} & set(names):
        attrs = _zarr_attributes(path)
        if attrs.get("format") == _keys.STORE_FORMAT:
            raise InputError(
                f"{label} is a GinsengDataset store, not an AnnData; open it with "
                "ginseng.data.GinsengDataset(path)."
            )
        encoding = attrs.get("encoding-type")
        if encoding is not None and encoding != "anndata":
            raise InputError(
                f"{label} is a zarr store of {encoding!r}, not an AnnData; expected "
                f"{ACCEPTED_FORMATS}."
            )
        return "zarr", ""
    tenx = ("matrix.mtx", "barcodes.tsv", "features.tsv", "genes.tsv")
    if any(name.removesuffix(".gz").endswith(tenx) for name in names):
        return "10x_mtx", _check_10x_directory(path, names, label)
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") or "nothing"
    raise InputError(
        f"Unknown format of directory {label} (it holds {shown}); expected {ACCEPTED_FORMATS}."
    )


def _check_10x_directory(path: Path, names: list[str], label: str) -> str:
    """Return the common file-name prefix, or raise naming the files scanpy would miss."""
    prefixes = {
        name.removesuffix(".gz").removesuffix(stem)
        for stem in ("matrix.mtx", "barcodes.tsv")
        for name in names
        if name.removesuffix(".gz").endswith(stem)
    }
    if len(prefixes) > 1:
        raise InputError(
            f"10x directory {label} holds several matrices (file-name prefixes "
            f"{sorted(prefixes)}); move each into its own directory."
        )
    prefix = prefixes.pop() if prefixes else ""
    # scanpy's own rule: genes.tsv means Cell Ranger v2 (plain text), else v3 (all gzipped).
    if (path / f"{prefix}genes.tsv").is_file():
        required = ["matrix.mtx", "genes.tsv", "barcodes.tsv"]
    else:
        required = ["matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"]
    missing = [prefix + name for name in required if not (path / (prefix + name)).is_file()]
    if missing:
        raise InputError(
            f"10x directory {label} is missing {', '.join(missing)} (found: "
            f"{', '.join(names[:20]) or 'nothing'}). Cell Ranger v3+ writes matrix.mtx.gz, "
            "features.tsv.gz and barcodes.tsv.gz (all gzipped); v2 writes matrix.mtx, "
            "genes.tsv and barcodes.tsv (plain text)."
        )
    return prefix


def _zarr_attributes(path: Path) -> dict:
    """Root attributes of a zarr v3 (``zarr.json``) or v2 (``.zattrs``) store, or {}."""
    try:
        if (path / "zarr.json").is_file():
            return json.loads((path / "zarr.json").read_text()).get("attributes", {})
        if (path / ".zattrs").is_file():
            return json.loads((path / ".zattrs").read_text())
    except (OSError, ValueError, AttributeError):
        pass  # let anndata's reader report the broken store
    return {}


def _as_str(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None
