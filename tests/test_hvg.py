"""select_hvgs against scanpy, chunked and backed."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import ginseng as gs
from ginseng._errors import InputError
from ginseng.utils import select_hvgs


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    """pbmc68k_reduced with its raw counts recovered (700 cells x 765 genes)."""
    full = sc.datasets.pbmc68k_reduced()
    raw = full.raw.to_adata()
    logged = raw.X.toarray() if sp.issparse(raw.X) else np.asarray(raw.X)
    counts = np.rint(np.expm1(logged) * full.obs["n_counts"].to_numpy()[:, None] / 1e4)
    return ad.AnnData(
        sp.csr_matrix(counts.astype(np.float32)),
        obs=full.obs[["bulk_labels", "phase"]].copy(),
        var=pd.DataFrame(index=raw.var_names.copy()),
    )


@pytest.fixture(scope="module")
def synth() -> ad.AnnData:
    return gs.datasets.synthetic_counts(1500, 1200, n_types=5, seed=3)


def _scanpy_v3(adata, n, batch_key=None, span=0.3) -> pd.Index:
    """Genes scanpy selects with seurat_v3, in its order."""
    ref = sc.pp.highly_variable_genes(
        adata.copy(), flavor="seurat_v3", n_top_genes=n, batch_key=batch_key, span=span,
        inplace=False,
    )  # fmt: skip
    keys = ["highly_variable_rank"] + (["highly_variable_nbatches"] if batch_key else [])
    ref = ref.sort_values(keys, ascending=[True, False][: len(keys)], na_position="last")
    assert ref["highly_variable"].sum() == n
    return ref.index[:n]


def _scanpy_seurat(adata, n, batch_key=None) -> pd.Index:
    """Genes scanpy selects with seurat on normalize_total + log1p, in its order."""
    logged = adata.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = sc.pp.highly_variable_genes(
            logged, flavor="seurat", n_top_genes=n, batch_key=batch_key, inplace=False
        )
    if batch_key is None:
        ref = ref.sort_values("dispersions_norm", ascending=False, kind="stable")
    else:  # scanpy breaks ties in gene-name order
        ref = ref.sort_index().sort_values(
            ["highly_variable_nbatches", "dispersions_norm"], ascending=False, na_position="last"
        )
    return ref.index[: int(ref["highly_variable"].sum())]


def _selected(table: pd.DataFrame) -> pd.Index:
    return table.index[table["selected"]][np.argsort(table["rank"][table["selected"]])]


@pytest.mark.parametrize("n_top", [50, 200])
def test_seurat_v3_matches_scanpy_pbmc(pbmc, n_top):
    table = select_hvgs(pbmc, n_top, inplace=False, chunk_size=64)
    assert _selected(table).equals(_scanpy_v3(pbmc, n_top))
    ref = sc.pp.highly_variable_genes(
        pbmc.copy(), flavor="seurat_v3", n_top_genes=n_top, inplace=False
    )
    np.testing.assert_allclose(table["means"], ref["means"], rtol=1e-12)
    np.testing.assert_allclose(table["variances_norm"], ref["variances_norm"], rtol=1e-10)
    assert "nbatches" not in table


@pytest.mark.parametrize(("data", "batch_key"), [("pbmc", "phase"), ("synth", "batch")])
def test_seurat_v3_batches_match_scanpy(request, data, batch_key):
    adata = request.getfixturevalue(data)
    table = select_hvgs(adata, 200, batch_key=batch_key, inplace=False, chunk_size=97)
    expected = _scanpy_v3(adata, 200, batch_key)
    assert set(_selected(table)) == set(expected)
    assert table["nbatches"].max() == adata.obs[batch_key].nunique()
    # Per-batch ranks of near-tied genes depend on float rounding, which differs between
    # scanpy releases (1.11 squares float32 data in float32, 1.12 in float64), so the
    # median ranks agree up to such swaps and the order is scanpy's criterion.
    ref = sc.pp.highly_variable_genes(
        adata.copy(), flavor="seurat_v3", n_top_genes=200, batch_key=batch_key, inplace=False
    )
    ours = table.loc[expected]
    np.testing.assert_array_equal(ours["nbatches"], ref.loc[expected, "highly_variable_nbatches"])
    diff = np.abs(ours["median_rank"] - ref.loc[expected, "highly_variable_rank"])
    assert diff.median() == 0 and diff.max() <= 0.05 * 200
    ordered = table[table["selected"]].sort_values("rank")
    keys = list(zip(ordered["median_rank"], -ordered["nbatches"], strict=True))
    assert keys == sorted(keys)


@pytest.mark.parametrize("n_top", [100, 1200])
def test_seurat_v3_matches_scanpy_synthetic(synth, n_top):
    table = select_hvgs(synth, n_top, inplace=False)
    assert _selected(table).equals(_scanpy_v3(synth, n_top))


@pytest.mark.parametrize(("data", "span"), [("pbmc", 0.15), ("pbmc", 0.6), ("synth", 0.8)])
def test_seurat_v3_span_matches_scanpy(request, data, span):
    adata = request.getfixturevalue(data)
    table = select_hvgs(adata, 100, span=span, inplace=False, chunk_size=128)
    expected = _scanpy_v3(adata, 100, span=span)
    assert _selected(table).equals(expected)
    ref = sc.pp.highly_variable_genes(
        adata.copy(), flavor="seurat_v3", n_top_genes=100, span=span, inplace=False
    )
    np.testing.assert_allclose(table["variances_norm"], ref["variances_norm"], rtol=1e-10)
    # span reaches the loess fit: the normalised variances differ from the default span's.
    default = select_hvgs(adata, 100, inplace=False, chunk_size=128)
    assert not np.allclose(table["variances_norm"], default["variances_norm"], rtol=1e-3)
    adata = adata.copy()  # the fixture is shared by the module
    select_hvgs(adata, 100, span=span)
    assert adata.uns["ginseng"]["select_hvgs"]["params"]["span"] == span


@pytest.mark.parametrize("batch_key", [None, "phase"])
def test_seurat_matches_scanpy(pbmc, batch_key):
    table = select_hvgs(pbmc, 200, flavor="seurat", batch_key=batch_key, inplace=False)
    assert _selected(table).equals(_scanpy_seurat(pbmc, 200, batch_key))


def test_seurat_does_not_modify_input(synth):
    adata = synth.copy()
    before = adata.X.copy()
    select_hvgs(adata, 100, flavor="seurat", batch_key="batch", chunk_size=100)
    assert (adata.X != before).nnz == 0
    assert _selected(select_hvgs(adata, 100, flavor="seurat", inplace=False)).equals(
        _scanpy_seurat(synth, 100)
    )


@pytest.mark.parametrize("flavor", ["seurat_v3", "seurat"])
def test_storage_and_chunk_size_do_not_matter(synth, flavor):
    expected = select_hvgs(synth, 150, flavor=flavor, batch_key="batch", inplace=False)
    for X, chunk_size in [
        (synth.X.toarray(), 7),
        (sp.csc_matrix(synth.X), 1000),
        (synth.X, 1),
        (synth.X.astype(np.int32), 4096),
    ]:
        other = ad.AnnData(X, obs=synth.obs, var=synth.var)
        table = select_hvgs(
            other, 150, flavor=flavor, batch_key="batch", inplace=False, chunk_size=chunk_size
        )
        pd.testing.assert_series_equal(table["rank"], expected["rank"])
        np.testing.assert_allclose(table["means"], expected["means"], rtol=1e-12)


def test_backed_x_and_layer_match_in_memory(synth, tmp_path):
    adata = synth.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(adata.shape, dtype=np.float32)
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    ad.AnnData(synth.X, obs=synth.obs, var=synth.var).write_h5ad(tmp_path / "x.h5ad")

    expected = select_hvgs(synth, 200, batch_key="batch", inplace=False)
    backed = ad.read_h5ad(path, backed="r")
    select_hvgs(backed, 200, layer="counts", batch_key="batch", chunk_size=333)
    np.testing.assert_array_equal(backed.var["ginseng_genes"], expected["selected"])
    np.testing.assert_array_equal(backed.var["ginseng_hvg_rank"], expected["rank"])
    assert backed.uns["ginseng"]["select_hvgs"]["params"]["layer"] == "counts"
    backed.file.close()

    backed_x = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    table = select_hvgs(backed_x, 200, batch_key="batch", inplace=False, chunk_size=500)
    pd.testing.assert_frame_equal(table, expected)
    backed_x.file.close()


def test_inplace_false_leaves_adata_untouched(synth):
    adata = synth.copy()
    table = select_hvgs(adata, 100, inplace=False)
    assert list(table.columns) == ["means", "variances", "variances_norm", "rank", "selected"]
    assert table.index.equals(adata.var_names)
    assert table["selected"].sum() == 100
    assert sorted(table["rank"].dropna()) == list(range(100))
    assert list(adata.var.columns) == list(synth.var.columns)
    assert "ginseng" not in adata.uns


def test_written_keys_params_and_round_trip(synth, tmp_path):
    adata = synth.copy()
    assert select_hvgs(adata, 120, batch_key="batch") is None
    select_hvgs(adata, 30, flavor="seurat", key_added="small")
    assert adata.var["ginseng_genes"].dtype == bool
    assert adata.var["ginseng_genes"].sum() == 120
    assert adata.var["ginseng_hvg_rank"].notna().sum() == 120
    assert adata.var["small"].sum() == 30
    assert "small_hvg_rank" in adata.var
    params = adata.uns["ginseng"]["select_hvgs"]["params"]
    assert params == {
        "n_top_genes": 30,
        "flavor": "seurat",
        "span": 0.3,
        "chunk_size": gs.settings.chunk_size,
        "key_added": "small",
    }
    adata.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    pd.testing.assert_frame_equal(back.var, adata.var)
    assert back.uns["ginseng"]["select_hvgs"]["params"] == params


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_top_genes": 0}, "n_top_genes=0"),
        ({"n_top_genes": 1201}, "n_top_genes=1201.*1200"),
        ({"n_top_genes": 2.5}, "n_top_genes"),
        ({"batch_key": "donor"}, "'donor'"),
        ({"layer": "counts"}, "'counts'"),
        ({"flavor": "cell_ranger"}, "'cell_ranger'"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"span": 0}, "span"),
    ],
)
def test_bad_arguments(synth, kwargs, match):
    with pytest.raises(InputError, match=match):
        select_hvgs(synth, **{"n_top_genes": 10, **kwargs})


def test_bad_data(synth):
    with pytest.raises(InputError, match="AnnData"):
        select_hvgs(synth.to_df(), 10)
    with pytest.raises(InputError, match="empty"):
        select_hvgs(synth[:0].copy(), 10)
    negative = synth.copy()
    negative.X.data[5] = -1
    with pytest.raises(InputError, match="1 negative"):
        select_hvgs(negative, 10, chunk_size=100)
    nan = synth.copy()
    nan.X.data[3] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        select_hvgs(nan, 10, flavor="seurat")
    missing = synth.copy()
    missing.obs["batch"] = missing.obs["batch"].cat.add_categories("x")
    missing.obs.loc[missing.obs_names[0], "batch"] = np.nan
    with pytest.raises(InputError, match="1 missing"):
        select_hvgs(missing, 10, batch_key="batch")
    logged = synth.copy()
    sc.pp.log1p(logged)
    with pytest.warns(UserWarning, match="non-integer"):
        select_hvgs(logged, 10, inplace=False)
    tiny = synth[:40].copy()
    tiny.obs["one"] = ["a"] + ["b"] * 39
    with pytest.raises(InputError, match="batch 'a'"):
        select_hvgs(tiny, 10, batch_key="one")


@pytest.mark.parametrize("flavor", ["seurat_v3", "seurat"])
def test_mask_var_is_the_selection_on_those_genes(synth, tmp_path, flavor):
    """mask_var selects as on adata[:, mask], in memory and backed, without the view."""
    synth = synth.copy()
    rng = np.random.default_rng(3)
    mask = rng.random(synth.n_vars) < 0.6
    subset = synth[:, mask].copy()
    expected = select_hvgs(subset, 25, flavor=flavor, inplace=False)
    path = tmp_path / "synth.h5ad"
    synth.write_h5ad(path)
    for adata in (synth, ad.read_h5ad(path, backed="r")):
        table = select_hvgs(adata, 25, flavor=flavor, mask_var=mask, inplace=False, chunk_size=97)
        assert list(table.index) == list(synth.var_names)
        pd.testing.assert_frame_equal(table.loc[subset.var_names], expected, check_exact=False)
        assert not table.loc[~mask, "selected"].any()
        assert table.loc[~mask, "rank"].isna().all()
    synth.var["keep"] = mask
    select_hvgs(synth, 25, flavor=flavor, mask_var="keep")
    assert synth.var["ginseng_genes"].sum() == expected["selected"].sum()
    assert synth.uns["ginseng"]["select_hvgs"]["params"]["mask_var"] == "keep"


def test_mask_var_is_validated(synth):
    synth = synth.copy()
    with pytest.raises(InputError, match="one entry per gene"):
        select_hvgs(synth, 5, mask_var=np.ones(3, bool))
    with pytest.raises(InputError, match="is not a column"):
        select_hvgs(synth, 5, mask_var="nope")
    with pytest.raises(InputError, match=r"number of genes in mask_var \(4\)"):
        select_hvgs(synth, 5, mask_var=np.arange(synth.n_vars) < 4)
