"""GinsengDataset: a compressed, shuffled, on-disk store of counts for training.

Layout (zarr v3 group; see ``docs/formats.md``)::

    store.zarr/            attrs: format, format_version, ginseng_version, created, source,
                                  layer, label_key, label_names, group_key, group_names,
                                  n_cells, n_genes, nnz, counts_dtype, shuffle_seed
      X/data               counts (uint16/uint32 when integer, else float32), CSR order
      X/indices            int32 gene index of each value
      X/indptr             int64, n_cells + 1
      cell_index           int64 row of each stored cell in the source
      labels, groups       int32 codes (groups only with group_key)
      genes                gene names, model input order
      splits/train, test   sorted int64 store rows (after make_split)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from .._errors import InputError
from .._settings import settings
from .._validate import positive_int
from ._open import open_store
from ._split import make_split
from ._stream import BlockReader, stream


class GinsengDataset:
    """A GinsengDataset store on disk, opened for reading splits and streaming batches.

    Create one from an AnnData with :meth:`create`; open an existing one with
    ``GinsengDataset(path)``.

    Parameters
    ----------
    path
        Directory of a store written by :meth:`create`.

    Raises
    ------
    StoreError
        If ``path`` does not exist, is not a GinsengDataset store, was written by a
        newer ginseng, or is truncated.

    Examples
    --------
    A store of the raw counts in ``reference`` (:func:`ginseng.datasets.pbmc68k_counts`,
    labels in ``obs["bulk_labels"]``), split, streamed and reopened:

    >>> from ginseng.data import GinsengDataset
    >>> ds = GinsengDataset.create(tmp / "reference.zarr", reference, "bulk_labels")
    >>> ds.n_cells, ds.n_genes, ds.label_names[:2].tolist()
    (350, 765, ['CD4+/CD25 T Reg', 'CD4+/CD45RA+/CD25- Naive T'])
    >>> realised = ds.make_split(fraction=0.1)
    >>> sorted(ds.splits)
    ['test', 'train']
    >>> X, y = next(ds.stream(batch_size=64))
    >>> X.shape, X.dtype, y.dtype
    ((64, 765), dtype('float32'), dtype('int32'))
    >>> GinsengDataset(tmp / "reference.zarr").n_cells
    350
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self._group: Any
        self._group, self._attrs = open_store(self.path)
        # Read once: a small reference streams hundreds of passes, each asking for its split.
        self._splits: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        adata: AnnData | str | os.PathLike,
        label_key: str,
        layer: str | None = None,
        genes: str | Sequence[str] | np.ndarray | None = None,
        group_key: str | None = None,
        overwrite: bool = False,
        *,
        chunk_size: int | None = None,
        seed: int = 0,
        check_counts: bool = True,
    ) -> GinsengDataset:
        """Write raw counts of ``adata`` to a new store at ``path`` and open it.

        Counts are stored as compressed CSR (integer dtype kept when all values are
        integers) in a random row order, via a bounded-memory external shuffle, so
        that streamed blocks are near-iid even when ``adata`` is sorted by label or
        batch. Creation is atomic: the store is written to a hidden sibling and
        renamed at the end; on any failure (bad input, full disk, interrupt) nothing
        is left at ``path``.

        Parameters
        ----------
        path
            Output directory (conventionally ``*.zarr``). Its parent must exist.
        adata
            An AnnData (in memory or backed), or a path/URL read with
            :func:`ginseng.data.io.read_adata` (``.h5ad`` files are read backed).
            An ``.h5ad`` path is the leanest input for large data: only the
            ``label_key`` and ``group_key`` columns, ``var`` and the counts are read,
            never the cell names that a backed AnnData holds in memory (about 100 bytes
            per cell), so memory grows by about 30 bytes per cell.
        label_key
            Column of ``adata.obs`` with the cell-type labels: no missing or empty value,
            at least two labels. A label with a single cell is named in a
            :class:`UserWarning`: it cannot be on both sides of a holdout, so the
            label-stratified split (:meth:`make_split`) keeps it in training and the
            holdout metrics and calibration do not cover it.
        layer
            Layer with raw counts; ``None`` uses ``adata.X``.
        genes
            Genes to store: the name of a boolean ``var`` column (e.g. ``"ginseng_genes"``
            from :func:`ginseng.pp.select_hvgs`), a list of gene names, a boolean mask, or
            ``None`` for all genes.
        group_key
            Optional ``obs`` column (batch, donor, ...) enabling group-level splits.
        overwrite
            Replace an existing store at ``path``. Anything that is not a
            GinsengDataset store is never deleted.
        chunk_size
            Cells read at once; peak memory grows with it, not with the number of cells.
            Defaults to ``ginseng.settings.chunk_size``.
        seed
            Seed of the row shuffle.
        check_counts
            Refuse values that look log-normalised or scaled rather than raw counts
            (checked on the first chunk with values, as :func:`ginseng.tl.classify`
            does: a model trained on them would be refused by classify later). Negative
            and non-finite values are always refused.

        Returns
        -------
        The opened :class:`GinsengDataset`. ``adata`` is not modified.

        Raises
        ------
        InputError
            Missing ``label_key``/``group_key``/``layer``, missing or empty labels, no
            labelled cell, a single label, a ``genes`` column that is missing or not
            boolean, zero genes, negative or non-finite values, values that look
            log-normalised or scaled (with ``check_counts``), an empty AnnData, an
            existing ``path`` without ``overwrite=True``.

        Examples
        --------
        The highly variable genes of the counts in ``layers["counts"]``, with the cell
        cycle ``phase`` standing in for a batch column:

        >>> import ginseng as gs
        >>> from ginseng.data import GinsengDataset
        >>> gs.pp.select_hvgs(adata, n_top_genes=300, layer="counts")
        >>> ds = GinsengDataset.create(
        ...     tmp / "hvg.zarr",
        ...     adata,
        ...     "bulk_labels",
        ...     layer="counts",
        ...     genes="ginseng_genes",
        ...     group_key="phase",
        ... )
        >>> ds.n_cells, ds.n_genes, ds.group_names.tolist()
        (700, 300, ['G1', 'G2M', 'S'])
        >>> ds.counts_dtype
        dtype('uint16')
        """
        from ._create import create_store

        source, opened = None, None
        chunk_size = settings.chunk_size if chunk_size is None else chunk_size
        chunk_size = positive_int("chunk_size", chunk_size)
        if not isinstance(adata, AnnData):
            from ._source import open_h5ad_source
            from .io import read_adata

            source = str(adata)
            if str(adata).endswith(".h5ad"):
                # Without the cell names anndata would read (~110 bytes per cell).
                opened = open_h5ad_source(adata)
            if opened is None:
                adata = read_adata(adata, backed="r" if str(adata).endswith(".h5ad") else None)
        path = Path(path).expanduser()
        try:
            create_store(
                path,
                adata if opened is None else opened,  # an AnnData or its duck-typed stand-in
                label_key=label_key,
                layer=layer,
                genes=genes,
                group_key=group_key,
                overwrite=overwrite,
                chunk_size=chunk_size,
                seed=seed,
                source=source,
                check_counts=check_counts,
            )
        finally:
            if opened is not None:
                opened.close()
        return cls(path)

    # ---------------------------------------------------------------- properties
    @property
    def n_cells(self) -> int:
        """Number of cells in the store."""
        return int(self._attrs["n_cells"])

    @property
    def n_genes(self) -> int:
        """Number of genes (model inputs)."""
        return int(self._attrs["n_genes"])

    @property
    def gene_names(self) -> np.ndarray:
        """Gene names in stored (model input) order."""
        # zarr returns numpy StringDType, which casts to fixed-width str only via object.
        return self._group["genes"][:].astype(object).astype(str)

    @property
    def label_names(self) -> np.ndarray:
        """Label names; label code ``i`` stands for ``label_names[i]``."""
        return np.asarray(self._attrs["label_names"], dtype=str)

    @property
    def has_groups(self) -> bool:
        """Whether the store was created with a ``group_key``."""
        return bool(self._attrs.get("group_key"))

    @property
    def group_names(self) -> np.ndarray | None:
        """Group names (code ``i`` -> ``group_names[i]``), or ``None`` without groups."""
        return np.asarray(self._attrs["group_names"], dtype=str) if self.has_groups else None

    @property
    def labels(self) -> np.ndarray:
        """Label code (int32) of every stored cell, in store order."""
        if not hasattr(self, "_labels"):
            self._labels = np.asarray(self._group["labels"][:], dtype=np.int32)
        return self._labels

    @property
    def groups(self) -> np.ndarray | None:
        """Group code (int32) of every stored cell, or ``None`` without groups."""
        return np.asarray(self._group["groups"][:], dtype=np.int32) if self.has_groups else None

    @property
    def cell_index(self) -> np.ndarray:
        """Row of each stored cell in the source AnnData."""
        return np.asarray(self._group["cell_index"][:], dtype=np.int64)

    @property
    def counts_dtype(self) -> np.dtype:
        """On-disk dtype of the counts (integer when the source held integers)."""
        return np.dtype(self._attrs["counts_dtype"])

    @property
    def attrs(self) -> dict:
        """The store's metadata (source, layer, label and group keys, versions)."""
        return dict(self._attrs)

    @property
    def splits(self) -> dict[str, np.ndarray]:
        """The stored splits, name -> sorted int64 store rows (empty before :meth:`make_split`)."""
        return {name: rows.copy() for name, rows in self._cached_splits().items()}

    def _cached_splits(self) -> dict[str, np.ndarray]:
        if self._splits is None:
            group: Any = self._group["splits"] if "splits" in self._group else None
            names = [] if group is None else sorted(group.array_keys())
            self._splits = {name: np.asarray(group[name][:], dtype=np.int64) for name in names}
            for rows in self._splits.values():
                rows.flags.writeable = False  # shared by every stream: never changed
        return self._splits

    # -------------------------------------------------------------------- splits
    # Defined in _split.py with its docstring, next to the splitting it describes.
    make_split = make_split

    def reload_splits(self) -> None:
        """Read the splits from the store again at their next use.

        A dataset reads its splits once; call this when another process or another
        ``GinsengDataset`` of the same store may have rewritten them (multi-host
        training does, after process 0 made the split).
        """
        import zarr

        self._group = zarr.open_group(self.path, mode="r", zarr_format=3)
        self._splits = None

    @property
    def split_info(self) -> dict:
        """How the stored split was made (fraction asked and realised, seed, mode)."""
        return dict(self._group["splits"].attrs) if "splits" in self._group else {}

    # ----------------------------------------------------------------- streaming
    def _rows(self, split: str) -> np.ndarray:
        if split == "all":
            return np.arange(self.n_cells, dtype=np.int64)
        splits = self._cached_splits()
        if split not in splits:
            hint = " Call make_split() first." if not splits else ""
            raise InputError(f"Unknown split {split!r}; available: {['all', *splits]}.{hint}")
        return splits[split]

    # Defined in _stream.py with its docstring, next to the streaming it describes.
    stream = stream

    def _reader(self) -> BlockReader:
        if not hasattr(self, "_block_reader"):
            self._block_reader = BlockReader.from_group(self._group, self.n_genes)
        return self._block_reader

    # ---------------------------------------------------------------------- repr
    def __len__(self) -> int:
        return self.n_cells

    def __repr__(self) -> str:
        labels = self.label_names
        shown = ", ".join(labels[:6]) + (", ..." if labels.size > 6 else "")
        lines = [
            f"GinsengDataset at {str(self.path)!r}: {self.n_cells} cells x {self.n_genes} genes "
            f"({self.counts_dtype.name} counts, {int(self._attrs['nnz'])} non-zeros)",
            f"    labels: {labels.size} from obs[{self._attrs['label_key']!r}]: {shown}",
        ]
        groups = self.group_names
        if groups is not None:
            lines.append(f"    groups: {groups.size} from obs[{self._attrs['group_key']!r}]")
        splits = self.splits
        if splits:
            sizes = ", ".join(f"{k} {v.size}" for k, v in splits.items())
            lines.append(f"    splits: {sizes}")
        lines.append(f"    source: {self._attrs['source']} (layer {self._attrs['layer']!r})")
        return "\n".join(lines)
