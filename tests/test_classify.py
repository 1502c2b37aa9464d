"""gs.tl.classify / ginseng.classify on real predictions of the session's toy model."""

from __future__ import annotations

import logging
import os
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import ginseng as gs
from ginseng import GeneMismatchError, InputError


@pytest.fixture
def query(toy_trained):
    """300 of the toy cells (a fresh copy), counts in X and in layers["counts"]."""
    adata = toy_trained.adata[:300].copy()
    adata.layers["counts"] = adata.X.copy()
    return adata


def _expected(state, adata) -> np.ndarray:
    """Probabilities from the matrix aligned by hand (the model's gene order)."""
    return state.predict_proba(adata[:, list(state.genes)].X)


def test_classify_writes_documented_keys(toy_trained, query):
    state = toy_trained.state
    assert gs.tl.classify(query, state) is None
    pred = query.obs["ginseng_cell_type"]
    assert isinstance(pred.dtype, pd.CategoricalDtype)
    assert list(pred.cat.categories) == list(state.labels)
    assert (pred.astype(str) == query.obs["cell_type"].astype(str)).mean() > 0.9
    proba = query.obsm["ginseng_probabilities"]
    assert proba.dtype == np.float32 and proba.shape == (query.n_obs, state.n_labels)
    np.testing.assert_allclose(proba, _expected(state, query), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    conf = query.obs["ginseng_confidence"]
    assert conf.dtype == np.float32
    np.testing.assert_array_equal(conf.to_numpy(), proba.max(axis=1))
    entry = query.uns["ginseng"]["classify"]
    assert entry["labels"] == list(state.labels)
    assert entry["gene_overlap"]["n_found"] == state.n_genes
    assert entry["gene_overlap"]["source"] == "var_names"
    assert entry["model"]["n_labels"] == state.n_labels
    assert len(query.uns["ginseng_cell_type_colors"]) == state.n_labels


def test_gene_reorder_missing_and_extra_genes(toy_trained, query):
    state = toy_trained.state
    rng = np.random.default_rng(0)
    order = rng.permutation(query.n_vars)[5:]  # shuffled, 5 model genes missing
    X = query.X[:, order]
    extra = sp.random(query.n_obs, 7, density=0.5, format="csr", random_state=1) * 20
    extra.data = np.round(extra.data)
    shuffled = ad.AnnData(
        sp.hstack([X, extra]).tocsr(),
        obs=query.obs.copy(),
        var=pd.DataFrame(index=list(query.var_names[order]) + [f"extra{i}" for i in range(7)]),
    )
    gs.tl.classify(shuffled, state)

    aligned = query.X.toarray().copy()
    missing = np.setdiff1d(np.arange(query.n_vars), order)
    aligned[:, missing] = 0
    expected = state.predict_proba(aligned)
    np.testing.assert_allclose(shuffled.obsm["ginseng_probabilities"], expected, atol=1e-6)
    overlap = shuffled.uns["ginseng"]["classify"]["gene_overlap"]
    assert overlap["n_found"] == state.n_genes - 5


def test_var_column_fallback_for_ensembl_var_names(toy_trained, query, caplog):
    state = toy_trained.state
    symbols = list(query.var_names)
    query.var["gene_symbols"] = symbols
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    with caplog.at_level(logging.WARNING, logger="ginseng"):
        gs.tl.classify(query, state)
    assert "var['gene_symbols']" in caplog.text
    assert query.uns["ginseng"]["classify"]["gene_overlap"]["source"] == "var['gene_symbols']"
    assert query.uns["ginseng"]["classify"]["gene_overlap"]["query_id_type"] == "symbol"
    query.var_names = symbols
    np.testing.assert_allclose(
        query.obsm["ginseng_probabilities"], _expected(state, query), atol=1e-6
    )


def test_versioned_ensembl_ids_match_unversioned_model(toy_trained, query):
    from dataclasses import replace

    state = toy_trained.state
    ids = np.array([f"ENSG{i:011d}" for i in range(state.n_genes)])
    ens_state = replace(state, genes=ids)
    query.var_names = [f"{g}.{i % 3 + 1}" for i, g in enumerate(ids)]
    gs.tl.classify(query, ens_state)
    overlap = query.uns["ginseng"]["classify"]["gene_overlap"]
    assert overlap["n_found"] == state.n_genes and overlap["model_id_type"] == "ensembl"


def test_overlap_guard_names_the_cause(toy_trained, query):
    state = toy_trained.state
    small = query[:, :15].copy()  # 15 of 50 model genes
    with pytest.raises(GeneMismatchError, match=r"Only 15 of the model's 50 genes \(30\.0%\)"):
        gs.tl.classify(small, state)
    assert "ginseng_cell_type" not in small.obs
    gs.tl.classify(small, state, min_gene_overlap=0.25)
    assert small.uns["ginseng"]["classify"]["gene_overlap"]["fraction"] == pytest.approx(0.3)

    ensembl = query.copy()
    ensembl.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    with pytest.raises(GeneMismatchError, match="gene_key="):
        gs.tl.classify(ensembl, state)
    with pytest.raises(InputError, match="gene_key='nope'"):
        gs.tl.classify(query, state, gene_key="nope")


def test_log_normalised_and_scaled_input_refused(toy_trained, query):
    import scanpy as sc

    state = toy_trained.state
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    before = query.X.copy()
    with pytest.raises(InputError, match='layer="counts"'):
        gs.tl.classify(query, state)
    assert "ginseng_cell_type" not in query.obs
    assert (query.X != before).nnz == 0
    gs.tl.classify(query, state, layer="counts")  # the fix the message names
    gs.tl.classify(query, state, check_counts=False, key_added="forced")
    assert "forced_cell_type" in query.obs

    scaled = query.copy()
    scaled.X = scaled.X.toarray() - 1.0
    with pytest.raises(InputError, match="negative"):
        gs.tl.classify(scaled, state)


def test_non_integer_counts_pass_with_warning(toy_trained, query, caplog):
    soup = query.copy()
    soup.X = soup.X.multiply(0.9).tocsr()  # ambient-corrected counts: fractional, varying totals
    with caplog.at_level(logging.WARNING, logger="ginseng"):
        gs.tl.classify(soup, toy_trained.state)
    assert "non-integer" in caplog.text


@pytest.mark.parametrize("kind", ["dense", "backed_r", "backed_r+", "h5ad_path", "zarr_path"])
def test_inputs_give_identical_results(toy_trained, query, tmp_path, kind):
    state = toy_trained.state
    reference = gs.tl.classify(query, state, return_table=True)
    if kind == "dense":
        other = query.copy()
        other.X = other.X.toarray()
        gs.tl.classify(other, state)
        result = other.obs
    elif kind.startswith("backed"):
        query.write_h5ad(tmp_path / "q.h5ad")
        other = ad.read_h5ad(tmp_path / "q.h5ad", backed=kind.split("_")[1])
        gs.tl.classify(other, state)
        result = other.obs
        other.file.close()
    elif kind == "h5ad_path":
        query.write_h5ad(tmp_path / "q.h5ad")
        result = gs.tl.classify(tmp_path / "q.h5ad", state).obs
    else:
        query.write_zarr(tmp_path / "q.zarr")
        result = gs.tl.classify(tmp_path / "q.zarr", state).obs
    pd.testing.assert_series_equal(result["ginseng_cell_type"], reference["ginseng_cell_type"])
    np.testing.assert_array_equal(result["ginseng_confidence"], reference["ginseng_confidence"])


def test_chunk_size_does_not_change_results(toy_trained, query):
    table = gs.tl.classify(query, toy_trained.state, return_table=True)
    small = gs.tl.classify(query, toy_trained.state, return_table=True, batch_size=7)
    pd.testing.assert_frame_equal(table, small)


def test_unassigned_threshold(toy_trained, query):
    # The toy types are so distinct that every confidence is 1.0 in float32: mix the
    # counts of cells of two types in the first 40 cells so that some are ambiguous.
    types = query.obs["cell_type"].to_numpy()
    partner = [np.flatnonzero(types != t)[0] for t in types[:40]]
    X = query.X.tolil()
    X[:40] = query.X[:40] + query.X[partner]
    query.X = X.tocsr()
    gs.tl.classify(query, toy_trained.state)
    conf = query.obs["ginseng_confidence"].to_numpy()
    # Just above the lowest confidence, so that some cells (not all) fall below it.
    threshold = float(np.sort(np.unique(conf))[1])
    gs.tl.classify(query, toy_trained.state, unassigned_threshold=threshold)
    pred = query.obs["ginseng_cell_type"]
    assert 0 < (conf < threshold).sum() < query.n_obs
    assert pred.cat.categories[-1] == "Unassigned"
    np.testing.assert_array_equal((pred == "Unassigned").to_numpy(), conf < threshold)
    assert query.uns["ginseng_cell_type_colors"][-1] == "#d3d3d3"
    assert query.uns["ginseng"]["classify"]["params"]["unassigned_threshold"] == threshold
    with pytest.raises(InputError, match="unassigned_threshold"):
        gs.tl.classify(query, toy_trained.state, unassigned_threshold=1.5)


def test_majority_vote(toy_trained, query):
    state = toy_trained.state
    # Clusters = true types, a few cells of each (20, 10, 5, 2) moved to a mixed cluster.
    clusters = query.obs["cell_type"].astype(str).to_numpy().copy()
    sizes = zip(np.unique(clusters), (20, 10, 5, 2), strict=True)
    mixed = np.concatenate([np.flatnonzero(clusters == t)[:k] for t, k in sizes])
    clusters[mixed] = "mixed"
    query.obs["leiden"] = pd.Categorical(clusters)
    gs.tl.classify(query, state, majority_vote_key="leiden", min_prop=0.6)
    vote = query.obs["ginseng_majority_vote"].astype(str)
    pure = clusters != "mixed"
    assert (vote[pure] == query.obs["cell_type"].astype(str)[pure]).all()
    assert (vote[~pure] == "Heterogeneous").all()
    assert len(query.uns["ginseng_majority_vote_colors"]) == len(
        query.obs["ginseng_majority_vote"].cat.categories
    )
    # Without min_prop every cluster takes its most frequent prediction.
    gs.tl.classify(query, state, majority_vote_key="leiden")
    pred = query.obs["ginseng_cell_type"].astype(str)
    top_mixed = pred[~pure].value_counts().index[0]
    assert (query.obs["ginseng_majority_vote"].astype(str)[~pure] == top_mixed).all()
    with pytest.raises(InputError, match="'louvain'"):
        gs.tl.classify(query, state, majority_vote_key="louvain")


def test_return_table_leaves_adata_untouched(toy_trained, query, tmp_path):
    query.write_h5ad(tmp_path / "before.h5ad")
    table = gs.tl.classify(query, toy_trained.state, return_table=True)
    query.write_h5ad(tmp_path / "after.h5ad")
    before, after = ad.read_h5ad(tmp_path / "before.h5ad"), ad.read_h5ad(tmp_path / "after.h5ad")
    pd.testing.assert_frame_equal(before.obs, after.obs)
    assert set(after.uns) == set(before.uns) and list(after.obsm) == list(before.obsm)
    labels = list(toy_trained.state.labels)
    assert list(table.columns) == [
        "ginseng_cell_type",
        "ginseng_confidence",
        *labels,
        "ginseng_novelty",
    ]
    assert table.index.equals(query.obs_names)
    np.testing.assert_allclose(
        table[labels].to_numpy(), _expected(toy_trained.state, query), atol=1e-6
    )


def test_copy_and_h5ad_round_trip(toy_trained, query, tmp_path):
    out = gs.tl.classify(query, toy_trained.state, copy=True, majority_vote_key="batch")
    assert "ginseng_cell_type" not in query.obs and "ginseng_cell_type" in out.obs
    out.write_h5ad(tmp_path / "annotated.h5ad")
    back = ad.read_h5ad(tmp_path / "annotated.h5ad")
    pd.testing.assert_frame_equal(back.obs, out.obs)
    np.testing.assert_array_equal(
        back.obsm["ginseng_probabilities"], out.obsm["ginseng_probabilities"]
    )
    assert (
        list(back.uns["ginseng"]["classify"]["labels"]) == out.uns["ginseng"]["classify"]["labels"]
    )
    assert list(back.uns["ginseng_cell_type_colors"]) == list(out.uns["ginseng_cell_type_colors"])


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_write_into_file(toy_trained, query, tmp_path, fmt):
    from ginseng.data.io import save_model

    path = tmp_path / f"q.{fmt}"
    getattr(query, f"write_{fmt}")(path)
    model_path = save_model(toy_trained.state, tmp_path / "model.h5")
    gs.tl.classify(path, model_path, write=True, store_probabilities=True)
    back = ad.read_h5ad(path) if fmt == "h5ad" else ad.read_zarr(path)
    reference = gs.tl.classify(query, toy_trained.state, return_table=True)
    pd.testing.assert_series_equal(back.obs["ginseng_cell_type"], reference["ginseng_cell_type"])
    assert (back.X != query.X).nnz == 0 and list(back.obs["cell_type"]) == list(
        query.obs["cell_type"]
    )
    assert back.obsm["ginseng_probabilities"].shape == (query.n_obs, toy_trained.state.n_labels)
    assert back.uns["ginseng"]["classify"]["params"]["key_added"] == "ginseng"


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_write_from_path_leaves_the_file_as_a_whole_obs_rewrite(toy_trained, query, tmp_path, fmt):
    """A path's obs gets only its columns rewritten, yet ends as a whole rewrite leaves it.

    Two rounds, so that columns of the first round are replaced and the prediction-set
    columns it added are removed by the second; the reference is the same rounds on an
    in-memory copy (what the file must hold) and, for .h5ad, on a backed AnnData, whose
    obs is written whole, names included.
    """
    state = toy_trained.state
    assert state.uncertainty is not None  # the toy model carries reference statistics
    query.obs["note"] = pd.Categorical(["a", "b", "c"] * 100)  # a user column, kept
    rounds = [
        {"prediction_sets": 0.1, "unassigned_threshold": 0.5},
        {"majority_vote_key": "batch"},
    ]
    path = tmp_path / f"q.{fmt}"
    getattr(query, f"write_{fmt}")(path)
    in_memory = query.copy()
    for options in rounds:
        returned = gs.tl.classify(path, state, write=True, **options)
        if fmt == "h5ad":
            returned.file.close()
        gs.tl.classify(in_memory, state, **options)
    back = ad.read_h5ad(path) if fmt == "h5ad" else ad.read_zarr(path)
    assert "ginseng_prediction_set" not in back.obs and "ginseng_majority_vote" in back.obs
    pd.testing.assert_frame_equal(back.obs, in_memory.obs)
    assert back.obs_names.equals(query.obs_names)
    np.testing.assert_array_equal(
        back.obsm["ginseng_probabilities"], in_memory.obsm["ginseng_probabilities"]
    )
    # nothing of the first round lingers in the file, not even unlisted
    if fmt == "h5ad":
        import h5py

        with h5py.File(path, "r") as f:
            stored = set(f["obs"].keys()) - {f["obs"].attrs["_index"]}
    else:
        import zarr

        group = zarr.open_group(path, mode="r")["obs"]
        stored = set(group.keys()) - {group.attrs["_index"]}
    assert stored == set(in_memory.obs.columns)
    if fmt == "h5ad":
        whole = tmp_path / "whole.h5ad"
        query.write_h5ad(whole)
        for options in rounds:
            backed = ad.read_h5ad(whole, backed="r+")
            gs.tl.classify(backed, state, write=True, **options)
            backed.file.close()
        pd.testing.assert_frame_equal(back.obs, ad.read_h5ad(whole).obs)


def test_backed_write_needs_r_plus(toy_trained, query, tmp_path):
    query.write_h5ad(tmp_path / "q.h5ad")
    backed = ad.read_h5ad(tmp_path / "q.h5ad", backed="r")
    with pytest.raises(InputError, match="backed='r\\+'"):
        gs.tl.classify(backed, toy_trained.state, write=True)
    with pytest.raises(InputError, match="copy=True"):
        gs.tl.classify(backed, toy_trained.state, copy=True)
    backed.file.close()
    backed = ad.read_h5ad(tmp_path / "q.h5ad", backed="r+")
    gs.tl.classify(backed, toy_trained.state, write=True)
    backed.file.close()
    assert "ginseng_cell_type" in ad.read_h5ad(tmp_path / "q.h5ad").obs
    with pytest.raises(InputError, match="in-memory"):
        gs.tl.classify(query, toy_trained.state, write=True)


def test_seed_api_classify(toy_trained, query):
    import scanpy as sc

    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    # Seed signature: layer="counts" by default, which this AnnData has.
    ginseng_table = gs.classify(query, toy_trained.state, return_table=True)
    assert "ginseng_cell_type" not in query.obs
    gs.classify(query, toy_trained.state)
    pd.testing.assert_series_equal(
        query.obs["ginseng_cell_type"], ginseng_table["ginseng_cell_type"]
    )
    # Without a counts layer, counts are taken from X (raw here).
    raw = ad.AnnData(query.layers["counts"].copy(), obs=query.obs[[]], var=query.var)
    gs.classify(raw, toy_trained.state)
    pd.testing.assert_series_equal(raw.obs["ginseng_cell_type"], ginseng_table["ginseng_cell_type"])


def test_duplicated_gene_names_use_first_occurrence(toy_trained, query, caplog):
    state = toy_trained.state
    dup = query.copy()
    dup.var_names = [*query.var_names[:-1], query.var_names[0]]  # last gene renamed to the first
    with caplog.at_level(logging.WARNING, logger="ginseng"):
        gs.tl.classify(dup, state)
    assert "1 gene names occur more than once" in caplog.text
    aligned = query.X.toarray().copy()
    aligned[:, -1] = 0  # the model's last gene is now missing
    np.testing.assert_allclose(
        dup.obsm["ginseng_probabilities"], state.predict_proba(aligned), atol=1e-6
    )


def test_empty_query(toy_trained, query):
    empty = query[:0].copy()
    gs.tl.classify(empty, toy_trained.state)
    assert empty.obsm["ginseng_probabilities"].shape == (0, toy_trained.state.n_labels)


def test_predictions_plot_with_scanpy_in_stable_colors(toy_trained, query):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    state = toy_trained.state
    query.obsm["X_umap"] = np.random.default_rng(0).normal(size=(query.n_obs, 2))
    subset = query[query.obs["cell_type"] != "type_0"].copy()  # a query lacking one type
    gs.tl.classify(subset, state)
    colors = list(subset.uns["ginseng_cell_type_colors"])
    categories = list(subset.obs["ginseng_cell_type"].cat.categories)
    assert "type_0" not in categories  # only labels that occur are categories
    gs.tl.classify(query, state)
    pred = query.obs["ginseng_cell_type"]
    full = dict(zip(pred.cat.categories, query.uns["ginseng_cell_type_colors"], strict=True))
    # The same label has the same colour whichever labels a dataset contains.
    assert colors == [full[label] for label in categories]
    ax = sc.pl.umap(subset, color="ginseng_cell_type", show=False)
    assert list(subset.uns["ginseng_cell_type_colors"]) == colors  # scanpy kept ours
    plt.close(ax.figure)


def test_alignment_take_equals_selector_product():
    from ginseng.tl.kernel import align_genes

    rng = np.random.default_rng(3)
    query_genes = np.array([f"g{i}" for i in range(40)])
    model_genes = np.concatenate([rng.permutation(query_genes)[:30], ["absent1", "absent2"]])
    alignment = align_genes(model_genes, pd.DataFrame(index=query_genes), min_overlap=0.5)
    chunk = sp.random(25, 40, density=0.3, format="csr", random_state=4)
    chunk.data = np.round(chunk.data * 50)
    taken = alignment.take(chunk).toarray()
    # Independent truth: a 0/1 selector (query genes x model genes) built from the names.
    selector = np.zeros((40, len(model_genes)))
    for j, gene in enumerate(model_genes):
        if gene in set(query_genes):
            selector[list(query_genes).index(gene), j] = 1
    np.testing.assert_array_equal(taken, chunk.toarray() @ selector)
    np.testing.assert_array_equal(
        taken[:, :30], chunk.toarray()[:, [int(g[1:]) for g in model_genes[:30]]]
    )
    assert not taken[:, 30:].any()


def test_tenx_style_var_with_many_duplicated_values(toy_trained, query):
    """10x var: symbols as var_names, ids in gene_ids, constant feature_types."""
    state = toy_trained.state
    tenx = query.copy()
    tenx.var["gene_ids"] = list(query.var_names)
    tenx.var["feature_types"] = "Gene Expression"
    tenx.var_names = [f"SYM{i}" for i in range(query.n_vars)]
    tenx.var_names = [*tenx.var_names[:-2], "SYM0", "SYM0"]  # duplicated symbols too
    gs.tl.classify(tenx, state)
    assert tenx.uns["ginseng"]["classify"]["gene_overlap"]["source"] == "var['gene_ids']"
    np.testing.assert_allclose(
        tenx.obsm["ginseng_probabilities"], _expected(state, query), atol=1e-6
    )


def test_sparse_input_with_duplicate_entries(toy_trained):
    state = toy_trained.state
    X = sp.random(60, state.n_genes, density=0.1, format="csr", random_state=6)
    X.data = np.round(X.data * 40) + 2
    coo = X.tocoo()
    half = np.floor(coo.data / 2)
    split = sp.csr_matrix(  # every count stored as two entries at the same place
        (np.concatenate([half, coo.data - half]),
         (np.concatenate([coo.row, coo.row]), np.concatenate([coo.col, coo.col]))),
        shape=X.shape,
    )  # fmt: skip
    split.has_canonical_format = False
    assert (split.toarray() == X.toarray()).all()
    np.testing.assert_allclose(
        state.predict_logits(split), state.predict_logits(X.toarray()), atol=1e-4
    )


def test_majority_vote_leaves_cells_without_cluster_missing(toy_trained, query):
    clusters = query.obs["cell_type"].astype(object).to_numpy().copy()
    clusters[:10] = np.nan
    query.obs["leiden"] = pd.Categorical(clusters)
    gs.tl.classify(query, toy_trained.state, majority_vote_key="leiden")
    vote = query.obs["ginseng_majority_vote"]
    assert vote[:10].isna().all() and vote[10:].notna().all()


def test_path_options_fail_before_classifying(toy_trained, query, tmp_path):
    path = tmp_path / "q.h5ad"
    query.write_h5ad(path)
    with pytest.raises(InputError, match="copy=True applies to an AnnData"):
        gs.tl.classify(path, toy_trained.state, copy=True)
    first = gs.tl.classify(path, toy_trained.state, write=True)  # returned backed, file open
    with pytest.raises(InputError, match=r"adata\.file\.close\(\)"):
        gs.tl.classify(path, toy_trained.state, write=True)
    first.file.close()
    gs.tl.classify(path, toy_trained.state, write=True, key_added="again")
    assert "again_cell_type" in ad.read_h5ad(path).obs
    query.uns["taken"] = "not a dict"
    with pytest.raises(InputError, match="uns\\['taken'\\]"):
        gs.tl.classify(query, toy_trained.state, key_added="taken")


def test_results_table_rebuilt_from_adata_equals_return_table(toy_trained, query):
    options = {"unassigned_threshold": 0.6, "majority_vote_key": "batch"}
    table = gs.tl.classify(query, toy_trained.state, return_table=True, **options)
    gs.tl.classify(query, toy_trained.state, **options)
    pd.testing.assert_frame_equal(gs.tl.results_table(query), table)
    with pytest.raises(InputError, match="key_added='other'"):
        gs.tl.results_table(query, key_added="other")


# --- documented options, each against a run that does not use it ------------------------


def _snapshot(adata: ad.AnnData) -> tuple[pd.DataFrame, set, set]:
    return adata.obs.copy(), set(adata.obsm.keys()), set(adata.uns.keys())


def _assert_unchanged(adata: ad.AnnData, snapshot) -> None:
    obs, obsm, uns = snapshot
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert set(adata.obsm.keys()) == obsm and set(adata.uns.keys()) == uns


def test_store_probabilities_false_writes_everything_but_obsm(toy_trained, query):
    state = toy_trained.state
    full = query.copy()
    gs.tl.classify(full, state)
    gs.tl.classify(query, state, store_probabilities=False)
    assert "ginseng_probabilities" not in query.obsm and len(query.obsm) == 0
    pd.testing.assert_frame_equal(query.obs, full.obs)
    assert set(query.uns) == set(full.uns)
    assert list(query.uns["ginseng_cell_type_colors"]) == list(full.uns["ginseng_cell_type_colors"])
    entry, full_entry = query.uns["ginseng"]["classify"], full.uns["ginseng"]["classify"]
    assert entry["params"].pop("store_probabilities") is False
    assert full_entry["params"].pop("store_probabilities") is True
    assert entry == full_entry


def test_store_probabilities_false_writes_no_obsm_into_the_file(toy_trained, query, tmp_path):
    path = tmp_path / "q.h5ad"
    query.write_h5ad(path)
    annotated = gs.tl.classify(path, toy_trained.state, write=True, store_probabilities=False)
    annotated.file.close()
    back = ad.read_h5ad(path)
    assert "ginseng_probabilities" not in back.obsm
    reference = gs.tl.classify(query, toy_trained.state, return_table=True)
    pd.testing.assert_series_equal(back.obs["ginseng_cell_type"], reference["ginseng_cell_type"])


def test_gene_key_column_is_used_instead_of_var_names(toy_trained, query):
    state = toy_trained.state
    reference = gs.tl.classify(query, state, return_table=True)
    renamed = query.copy()
    renamed.var["symbol"] = list(query.var_names)
    # var_names that are model genes too, but the wrong ones: gene_key must win over them.
    renamed.var_names = list(query.var_names[::-1])
    gs.tl.classify(renamed, state, gene_key="symbol")
    overlap = renamed.uns["ginseng"]["classify"]["gene_overlap"]
    assert overlap["source"] == "var['symbol']" and overlap["n_found"] == state.n_genes
    assert renamed.uns["ginseng"]["classify"]["params"]["gene_key"] == "symbol"
    pd.testing.assert_series_equal(
        renamed.obs["ginseng_cell_type"], reference["ginseng_cell_type"], check_index=False
    )
    np.testing.assert_array_equal(
        renamed.obsm["ginseng_probabilities"], reference[list(state.labels)].to_numpy()
    )
    # Without gene_key the (reversed) var_names are used and the predictions change.
    reversed_table = gs.tl.classify(renamed, state, return_table=True)
    assert not np.allclose(reversed_table[list(state.labels)], reference[list(state.labels)])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "100"])
def test_batch_size_must_be_a_positive_integer(toy_trained, query, bad):
    before = _snapshot(query)
    with pytest.raises(
        InputError, match=re.escape(f"batch_size must be a positive integer, got {bad!r}")
    ):
        gs.tl.classify(query, toy_trained.state, batch_size=bad)
    _assert_unchanged(query, before)


TABLE_REFUSAL = r"return_table=True leaves adata untouched; do not combine it with copy= or write="


def test_return_table_refuses_copy_and_write(toy_trained, query, tmp_path):
    state = toy_trained.state
    before = _snapshot(query)
    with pytest.raises(InputError, match=TABLE_REFUSAL):
        gs.tl.classify(query, state, return_table=True, copy=True)
    _assert_unchanged(query, before)
    path = tmp_path / "q.h5ad"
    query.write_h5ad(path)
    stamp = path.read_bytes()
    with pytest.raises(InputError, match=TABLE_REFUSAL):
        gs.tl.classify(path, state, return_table=True, write=True)
    assert path.read_bytes() == stamp
    backed = ad.read_h5ad(path, backed="r+")
    with pytest.raises(InputError, match=TABLE_REFUSAL):
        gs.tl.classify(backed, state, return_table=True, write=True)
    backed.file.close()
    assert path.read_bytes() == stamp


@pytest.mark.parametrize("bad", ["", None, 3])
def test_key_added_must_be_a_non_empty_string(toy_trained, query, bad):
    before = _snapshot(query)
    with pytest.raises(
        InputError, match=re.escape(f"key_added must be a non-empty string, got {bad!r}")
    ):
        gs.tl.classify(query, toy_trained.state, key_added=bad)
    _assert_unchanged(query, before)


def _write_10x_h5(path, adata: ad.AnnData) -> None:
    """Cell Ranger v3 filtered_feature_bc_matrix.h5 of ``adata``'s counts."""
    import h5py

    matrix = sp.csc_matrix(adata.X.T).astype(np.int32)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = matrix.data, matrix.indices, matrix.indptr
        m["shape"] = np.array(matrix.shape, dtype=np.int32)
        m["barcodes"] = np.array(adata.obs_names, dtype="S")
        features = m.create_group("features")
        features["id"] = np.array([f"ENSG{i:011d}" for i in range(adata.n_vars)], dtype="S")
        features["name"] = np.array(adata.var_names, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * adata.n_vars, dtype="S")
        features["genome"] = np.array(["GRCh38"] * adata.n_vars, dtype="S")
        features["_all_tag_keys"] = np.array([b"genome"])


def test_write_refused_for_a_file_neither_h5ad_nor_zarr(toy_trained, query, tmp_path):
    state = toy_trained.state
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    _write_10x_h5(path, query)
    stamp = path.read_bytes()
    with pytest.raises(InputError, match=r"write=True needs an \.h5ad or AnnData \.zarr") as info:
        gs.tl.classify(path, state, write=True)
    assert str(path) in str(info.value)
    assert path.read_bytes() == stamp
    # Without write= the same file is classified in memory, as an AnnData would be.
    annotated = gs.tl.classify(path, state)
    assert not annotated.isbacked and path.read_bytes() == stamp
    reference = gs.tl.classify(query, state, return_table=True)
    pd.testing.assert_series_equal(
        annotated.obs["ginseng_cell_type"], reference["ginseng_cell_type"]
    )


def test_seed_api_refuses_log_normalised_x_without_counts_layer(toy_trained, query):
    import scanpy as sc

    del query.layers["counts"]
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    before = _snapshot(query)
    # layer="counts" (the default) falls back to X, which is checked like any counts.
    with pytest.raises(InputError, match=r"adata\.X does not hold raw counts.*layer="):
        gs.classify(query, toy_trained.state)
    with pytest.raises(InputError, match=r"adata\.X does not hold raw counts"):
        gs.classify(query, toy_trained.state, return_table=True)
    _assert_unchanged(query, before)
    # Another layer holding the counts is named in the message.
    query.layers["raw"] = sp.csr_matrix(np.expm1(query.X.toarray()))
    with pytest.raises(InputError, match=r"layers: 'raw'"):
        gs.classify(query, toy_trained.state)


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")
def test_path_inputs_that_cannot_be_classified(toy_trained, query, tmp_path):
    state = toy_trained.state
    with pytest.raises(InputError, match="adata must be an AnnData or a path to one, got int"):
        gs.tl.classify(42, state)
    missing = tmp_path / "nope.h5ad"
    with pytest.raises(InputError, match=re.escape(f"{missing} does not exist")):
        gs.tl.classify(missing, state)
    path = tmp_path / "q.zarr"
    query.write_zarr(path)  # layers["counts"] is there; "raw" is not
    with pytest.raises(
        InputError, match=re.escape(f"{path} has no 'layers/raw' (layers: 'counts')")
    ):
        gs.tl.classify(path, state, layer="raw")


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")
def test_seed_api_counts_fallback_on_a_zarr_path(toy_trained, query, tmp_path):
    """The seed's layer="counts" default reads X of a store without that layer."""
    state = toy_trained.state
    reference = gs.tl.classify(query, state, return_table=True)
    del query.layers["counts"]
    path = tmp_path / "q.zarr"
    query.write_zarr(path)
    annotated = gs.classify(path, state)
    pd.testing.assert_series_equal(
        annotated.obs["ginseng_cell_type"], reference["ginseng_cell_type"]
    )
    assert "layer" not in annotated.uns["ginseng"]["classify"]["params"]  # X was used
    with pytest.raises(InputError, match=re.escape(f"{path} has no 'layers/counts'")):
        gs.tl.classify(path, state, layer="counts")  # no fallback outside the seed API


def test_write_check_leaves_the_file_alone_and_refuses_a_held_file(toy_trained, tmp_path):
    """write=True checks the .h5ad without opening it for writing (an r+ open rewrites
    its metadata: a kill inside that window changed the file's bytes)."""
    import hashlib

    import h5py

    path = tmp_path / "q.h5ad"
    toy_trained.adata.write_h5ad(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    mtime = path.stat().st_mtime_ns
    from ginseng.data._writeback import check_writable

    check_writable(path, "h5ad")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert path.stat().st_mtime_ns == mtime
    with h5py.File(path, "r"), pytest.raises(InputError, match="close it first"):
        gs.tl.classify(path, toy_trained.state, write=True)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    path.chmod(0o444)
    try:
        if not os.access(path, os.W_OK):  # root may write anyway
            with pytest.raises(InputError, match="no write permission"):
                gs.tl.classify(path, toy_trained.state, write=True)
    finally:
        path.chmod(0o644)
