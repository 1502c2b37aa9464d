"""An ``.h5ad`` file opened for store creation without reading its cell names.

``anndata.read_h5ad(path, backed="r")`` reads the whole of ``obs`` into memory, its
index above all: about 110 bytes per cell retained and 160 at the peak of the read for
names such as ``"cell_1234567"`` (measured on 1M cells; 1.6 GB at 10M cells). Store
creation needs none of the names, only the label and group columns, the genes and the
counts. :class:`H5adSource` opens those through anndata's public element API
(:func:`anndata.io.read_elem` for single ``obs`` columns and ``var``,
:func:`anndata.io.sparse_dataset` for the counts) and offers the few AnnData
attributes that :func:`ginseng.data._create.create_store` reads, so memory grows only
with the columns used (1 byte per cell for a categorical label).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd


class _ObsColumns:
    """``obs`` of an ``.h5ad`` file: column names, and one column read per access."""

    def __init__(self, group: Any, n_obs: int) -> None:
        self._group = group
        self._n_obs = n_obs
        self.columns = pd.Index([str(c) for c in group.attrs.get("column-order", [])])

    def __getitem__(self, key: str) -> pd.Series:
        from anndata.io import read_elem

        if key not in self.columns:
            raise KeyError(key)
        values = read_elem(self._group[key])
        return pd.Series(values, index=pd.RangeIndex(self._n_obs), name=key)


class H5adSource:
    """The AnnData attributes store creation reads, from an open ``.h5ad`` file.

    Use :func:`open_h5ad_source`, which returns ``None`` for any file it does not
    recognise, so that the caller falls back to :func:`anndata.read_h5ad`. Close the
    file with :meth:`close` (or use the object as a context manager).
    """

    isbacked = True

    def __init__(self, path: Path, file: Any) -> None:
        from anndata.io import read_elem, sparse_dataset

        self.filename = path
        self.file = file
        obs = file["obs"]
        self.n_obs = int(obs[obs.attrs["_index"]].shape[0])
        self.obs = _ObsColumns(obs, self.n_obs)
        self.var: pd.DataFrame = read_elem(file["var"])
        self.var_names = self.var.index
        self.n_vars = len(self.var_names)
        self.layers = {str(k): None for k in file["layers"].keys()} if "layers" in file else {}
        self.X = None
        if "X" in file:
            element = file["X"]
            sparse = str(element.attrs.get("encoding-type", "")).endswith("_matrix")
            self.X = sparse_dataset(element) if sparse else element

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> H5adSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_h5ad_source(path: str | os.PathLike) -> H5adSource | None:
    """Open ``path`` as an :class:`H5adSource`, or ``None`` if it is not a plain ``.h5ad``.

    Only files whose ``obs`` is anndata's ``dataframe`` encoding (anndata >= 0.7) and
    whose ``var`` can be read qualify; anything else (an old or foreign layout, a file
    that fails to open) returns ``None`` and is left to :func:`anndata.read_h5ad`,
    which also gives the error messages for broken files.
    """
    import h5py

    path = Path(path).expanduser()
    try:
        file = h5py.File(path, "r")
    except OSError:
        return None
    try:
        obs = file.get("obs")
        if (
            obs is None
            or not isinstance(obs, h5py.Group)
            or obs.attrs.get("encoding-type") != "dataframe"
            or "_index" not in obs.attrs
            or "var" not in file
        ):
            file.close()
            return None
        return H5adSource(path, file)
    except Exception:  # noqa: BLE001  # not an error: the fallback reads the file
        # Anything unexpected in the layout: anndata's reader decides (and explains).
        file.close()
        return None
