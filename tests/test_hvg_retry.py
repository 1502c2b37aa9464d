"""select_hvgs when skmisc's loess fit of variance on mean is singular (scanpy fails there)."""

from __future__ import annotations

import logging
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from skmisc.loess import loess

import ginseng as gs

N_VARYING, N_OVERDISPERSED = 1200, 100


def _counts(rng: np.random.Generator, n_cells: int, n_tied: int) -> np.ndarray:
    """Negative-binomial genes (the first ``N_OVERDISPERSED`` strongly overdispersed), then
    ``n_tied`` genes that each hold a single count in one cell: these all share one mean,
    as the many barely detected genes of a real unfiltered dataset do."""
    mu = np.exp(rng.normal(-0.5, 1.2, N_VARYING))
    dispersion = np.where(np.arange(N_VARYING) < N_OVERDISPERSED, 2.0, 0.05)
    varying = rng.poisson(rng.gamma(1 / dispersion, mu * dispersion, (n_cells, N_VARYING)))
    tied = np.zeros((n_cells, n_tied))
    tied[rng.integers(0, n_cells, n_tied), np.arange(n_tied)] = 1
    return np.hstack([varying, tied]).astype(np.float32)


@pytest.fixture(scope="module")
def tied() -> ad.AnnData:
    """600 cells; 800 of 2,000 genes (more than span=0.3 of them) share one mean."""
    counts = _counts(np.random.default_rng(0), 600, 800)
    var = pd.DataFrame(index=[f"g{j}" for j in range(counts.shape[1])])
    return ad.AnnData(sp.csr_matrix(counts), var=var)


def _scanpy_fails(adata: ad.AnnData, **kwargs) -> None:
    n_top = min(200, adata.n_vars // 2)
    with pytest.raises(ValueError, match=r"svddc|singular|condition"):
        sc.pp.highly_variable_genes(adata.copy(), flavor="seurat_v3", n_top_genes=n_top, **kwargs)


def _refits(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ginseng" and "Refitted" in r.getMessage()]


def test_singular_fit_is_refitted_on_distinct_means(tied, caplog):
    _scanpy_fails(tied)
    with caplog.at_level(logging.WARNING, logger="ginseng"):
        table = gs.pp.select_hvgs(tied, n_top_genes=200, inplace=False)
    assert table["selected"].sum() == 200
    assert sorted(table["rank"].dropna()) == list(range(200))
    (record,) = _refits(caplog)
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    X = tied.X.toarray()
    mean = X.mean(0)[X.var(0) > 0]
    _, counts = np.unique(mean, return_counts=True)
    assert counts.max() >= 800  # the single-count genes (and any varying gene alike)
    shared = f"{counts[counts > 1].sum()} of 2000 genes share their mean with another gene"
    assert f"{shared}, up to {counts.max()} genes one mean" in message
    assert "span=0.3" in message

    # Sensible: the overdispersed genes are found, none of the single-count genes is
    # taken, and the selection is nearly the one scanpy makes once those genes are removed.
    selected = np.flatnonzero(table["selected"].to_numpy())
    assert np.isin(np.arange(N_OVERDISPERSED), selected).sum() >= 95
    assert selected.max() < N_VARYING
    filtered = tied[:, :N_VARYING].copy()
    ref = sc.pp.highly_variable_genes(filtered, flavor="seurat_v3", n_top_genes=200, inplace=False)
    overlap = np.intersect1d(selected, np.flatnonzero(ref["highly_variable"].to_numpy()))
    assert overlap.size >= 190


def _weighted_fit_norm_var(X: np.ndarray, span: float) -> np.ndarray:
    """seurat_v3 normalised variances with the documented refit, computed with skmisc."""
    n = X.shape[0]
    mean, var = X.mean(0), X.var(0, ddof=1)
    varying = var > 0
    x, y = np.log10(mean[varying]), np.log10(var[varying])
    distinct, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    model = loess(
        distinct, np.bincount(inverse, weights=y) / counts, span=span, degree=2, weights=counts
    )
    model.fit()
    fitted = np.zeros(X.shape[1])
    fitted[varying] = model.outputs.fitted_values[inverse]
    std = np.sqrt(10**fitted)
    clipped = np.minimum(X, mean + std * np.sqrt(n))
    return ((clipped - mean) ** 2).sum(0) / ((n - 1) * std**2)


def test_refit_is_the_documented_weighted_fit(tied):
    """Recompute variances_norm with skmisc directly from the documented refit."""
    expected = _weighted_fit_norm_var(tied.X.toarray().astype(np.float64), 0.3)
    table = gs.pp.select_hvgs(tied, n_top_genes=200, inplace=False, chunk_size=97)
    np.testing.assert_allclose(table["variances_norm"], expected, rtol=1e-9)
    top = np.argsort(-expected, kind="stable")[:200]
    assert set(np.flatnonzero(table["selected"].to_numpy())) == set(top)


def test_few_distinct_means_fall_back_to_a_larger_span(caplog):
    """40 genes with 8 distinct means: span=0.3 fails even on the distinct means."""
    counts = np.zeros((50, 40), dtype=np.float32)
    for j in range(40):
        counts[np.arange(j % 8 + 1) + j % 7, j] = 1
    adata = ad.AnnData(sp.csr_matrix(counts))
    _scanpy_fails(adata)
    X = counts.astype(np.float64)
    with caplog.at_level(logging.WARNING, logger="ginseng"):
        table = gs.pp.select_hvgs(adata, n_top_genes=10, inplace=False)
    (record,) = _refits(caplog)
    span = float(re.search(r"with span=([\d.]+)\.$", record.getMessage()).group(1))
    assert span in (0.5, 0.75, 1.0)
    assert "on the 8 distinct means" in record.getMessage()
    np.testing.assert_allclose(table["variances_norm"], _weighted_fit_norm_var(X, span), rtol=1e-9)
    assert table["selected"].sum() == 10


def test_refit_within_one_batch(caplog):
    """Ties in one batch only: that batch is refitted, and named in the warning."""
    rng = np.random.default_rng(1)
    ties = _counts(rng, 400, 800)
    plain = _counts(rng, 400, 0)
    # In batch "b" the last 800 genes are ordinary expressed genes with distinct means.
    plain = np.hstack([plain, rng.poisson(rng.uniform(0.05, 3, 800), (400, 800))])
    adata = ad.AnnData(
        sp.csr_matrix(np.vstack([ties, plain]).astype(np.float32)),
        obs=pd.DataFrame({"batch": ["a"] * 400 + ["b"] * 400}, index=[f"c{i}" for i in range(800)]),
    )
    _scanpy_fails(adata, batch_key="batch")
    with caplog.at_level(logging.WARNING, logger="ginseng"):
        gs.pp.select_hvgs(adata, n_top_genes=200, batch_key="batch")
    (record,) = _refits(caplog)
    assert "batch 'a' (400 cells)" in record.getMessage()
    assert adata.var["ginseng_genes"].sum() == 200


def test_no_refit_where_scanpy_fits(tied, caplog):
    filtered = tied[:, :N_VARYING].copy()
    with caplog.at_level(logging.WARNING, logger="ginseng"):
        table = gs.pp.select_hvgs(filtered, n_top_genes=200, inplace=False)
    assert not _refits(caplog)
    ref = sc.pp.highly_variable_genes(filtered, flavor="seurat_v3", n_top_genes=200, inplace=False)
    np.testing.assert_allclose(table["variances_norm"], ref["variances_norm"], rtol=1e-10)


def test_too_few_distinct_means_is_an_input_error():
    # Every gene varies, but only through a single count: one distinct mean.
    counts = np.zeros((50, 40), dtype=np.float32)
    counts[np.arange(40) % 50, np.arange(40)] = 1
    with pytest.raises(gs.GinsengError, match=r"40 genes with non-zero variance, 1 distinct"):
        gs.pp.select_hvgs(ad.AnnData(sp.csr_matrix(counts)), n_top_genes=10)
