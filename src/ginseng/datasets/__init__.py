"""Datasets for examples, tutorials and tests.

- :func:`pbmc68k_counts`: 700 PBMCs bundled with scanpy (offline).
- :func:`liu2021_pbmc`: 30,534 CITE-seq PBMCs in three batches, downloaded once from a
  pinned package release, checked by sha256 and cached in ``ginseng.settings.cache_dir``.
- :func:`synthetic_counts` and :func:`write_synthetic_h5ad`: synthetic raw counts of any
  size, in memory or written to ``.h5ad`` in bounded memory.
"""

from ._real import liu2021_pbmc, pbmc68k_counts
from ._synthetic import synthetic_counts, write_synthetic_h5ad

__all__ = ["liu2021_pbmc", "pbmc68k_counts", "synthetic_counts", "write_synthetic_h5ad"]
