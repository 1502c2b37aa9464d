"""Small real datasets for examples, tests and the demo (offline, shipped with scanpy)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData


def pbmc68k_counts() -> AnnData:
    """Raw counts of scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs x 765 genes).

    scanpy ships this subset of 10x PBMC 68k log-normalised; the integer UMI counts are
    recovered exactly as ``rint(expm1(raw.X) * n_counts / 1e4)``.

    Returns
    -------
    AnnData with integer counts (CSR float32) in ``X`` and ``layers["counts"]``, and the
    original annotations in ``obs`` (``bulk_labels``: 10 noisy sorted-bulk labels,
    ``louvain``: 11 clusters) and ``obsm`` (``X_umap``, ``X_pca``).

    Examples
    --------
    >>> import ginseng as gs
    >>> adata = gs.datasets.pbmc68k_counts()
    >>> adata.shape
    (700, 765)
    >>> int(adata.layers["counts"].max())
    259
    >>> adata.obs["bulk_labels"].cat.categories[:2].tolist()
    ['CD4+/CD25 T Reg', 'CD4+/CD45RA+/CD25- Naive T']
    """
    import scanpy as sc

    reduced = sc.datasets.pbmc68k_reduced()
    size_factors = reduced.obs["n_counts"].to_numpy()[:, None] / 1e4
    counts = np.rint(np.expm1(np.asarray(reduced.raw.X.todense())) * size_factors)
    X = sp.csr_matrix(counts.astype(np.float32))
    adata = AnnData(
        X=X,
        obs=reduced.obs[["bulk_labels", "louvain", "n_counts", "phase"]].copy(),
        var=reduced.raw.var[[]].copy(),
        obsm={k: reduced.obsm[k].copy() for k in ("X_umap", "X_pca")},
    )
    adata.layers["counts"] = X.copy()
    return adata
