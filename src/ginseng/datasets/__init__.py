"""Datasets for examples, tutorials and tests.

- :func:`pbmc68k_counts`: 700 PBMCs bundled with scanpy (offline).
- :func:`liu2021_pbmc`: 30,534 CITE-seq PBMCs in three batches, downloaded once from a
  pinned package release, checked by sha256 and cached in ``ginseng.settings.cache_dir``;
  ``LIU2021_COARSE`` is its fine-to-coarse label mapping (``obs["coarse_label"]``).
- :func:`mouse_human_orthologs`: Ensembl's one-to-one mouse-human orthologs (a
  ``gene_map=`` for :func:`ginseng.tl.classify`), fetched once like ``liu2021_pbmc``.
- :func:`synthetic_counts` and :func:`write_synthetic_h5ad`: synthetic raw counts of any
  size, in memory or written to ``.h5ad`` in bounded memory.
"""

from ._real import LIU2021_COARSE, liu2021_pbmc, mouse_human_orthologs, pbmc68k_counts
from ._synthetic import synthetic_counts, write_synthetic_h5ad

__all__ = [
    "LIU2021_COARSE",
    "liu2021_pbmc",
    "mouse_human_orthologs",
    "pbmc68k_counts",
    "synthetic_counts",
    "write_synthetic_h5ad",
]
