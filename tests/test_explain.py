"""gs.tl.explain, gs.tl.marker_genes and gs.pl.markers: attributions checked against an
independent integrated-gradients computation, the model's own probabilities, deletion
on real data and planted markers."""

from __future__ import annotations

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import ginseng as gs
from ginseng import InputError

LAYER = "ginseng_attributions"


@pytest.fixture(scope="module", params=["default", "standardized"])
def toy(request, toy_trained, toy_trained_standardized):
    # Both kinds of model: without standardisation (the default) the zero-count
    # baseline is near-degenerate for the first LayerNorm, with it it is not.
    trained = toy_trained if request.param == "default" else toy_trained_standardized
    assert trained.state.config["standardize"] == (request.param == "standardized")
    return trained.adata, trained.state


@pytest.fixture(scope="module")
def pbmc():
    """A small model trained on real PBMC counts (scanpy's pbmc68k subset)."""
    before = gs.settings.progress_bar
    gs.settings.progress_bar = False
    adata = gs.datasets.pbmc68k_counts()
    state = gs.tl.train(adata, "bulk_labels", epochs=8, seed=0, hidden_dim=64)
    gs.settings.progress_bar = before
    return adata, state


def _log_proba(state, X, codes):
    """Calibrated log-probabilities of ``codes`` from the model's own predict_proba."""
    proba = state.predict_proba(X).astype(np.float64)
    return np.log(proba[np.arange(len(codes)), codes])


def _dense_ig(state, X, codes, steps):
    """Integrated gradients computed independently: dense jax through the full network,
    the same quadrature on the path (Gauss-Legendre nodes in t, each row's path
    a = expm1(t L) / expm1(L) with L = log1p(sd(dz) / sqrt(var(z0) + 1e-6)))."""
    net = state.build_model()
    temperature = state.temperature

    def logp_sum(h, c):
        z = net.blocks[0].linear(h)
        return jax.nn.log_softmax(net.from_first_linear(z) / temperature)[:, c].sum()

    grad = jax.jit(jax.grad(logp_sum))
    x = jnp.asarray(np.asarray(X.todense(), np.float32))
    h1 = np.asarray(net.preprocess(x))
    h0 = np.asarray(net.preprocess(jnp.zeros((1, x.shape[1]))))[0]
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    t, w = (nodes + 1) / 2, weights / 2
    W = np.asarray(net.blocks[0].linear.kernel[...], np.float64)
    z0 = h0 @ W + np.asarray(net.blocks[0].linear.bias[...], np.float64)
    out = np.zeros_like(h1)
    for i in range(h1.shape[0]):
        dz = (h1[i] - h0) @ W
        speed = max(np.log1p(np.std(dz) / np.sqrt(np.var(z0) + 1e-6)), 1e-4)
        alphas = np.expm1(t * speed) / np.expm1(speed)
        da_dt = speed * np.exp(t * speed) / np.expm1(speed)
        path = jnp.asarray((h0 + alphas[:, None] * (h1[i] - h0)).astype(np.float32))
        g = np.asarray(grad(path, int(codes[i])))
        out[i] = (h1[i] - h0) * ((w * da_dt)[:, None] * g).sum(axis=0)
    return out


def test_explain_matches_independent_integrated_gradients(toy):
    adata, state = toy
    query = adata[:12].copy()
    gs.tl.explain(query, state, n_top=None, steps=16)
    codes = query.obs["ginseng_explained_label"].cat.codes.to_numpy()
    reference = _dense_ig(state, query[:, state.genes].X, codes, steps=16)
    got = query.layers[LAYER][:, query.var_names.get_indexer(state.genes)].toarray()
    np.testing.assert_allclose(got, reference, atol=2e-4, rtol=1e-3)
    # Zero counts have exactly zero attribution (the zero-count baseline).
    counts = query[:, state.genes].X.toarray()
    assert np.all(got[counts == 0] == 0)


def test_completeness_against_the_models_probabilities(toy):
    adata, state = toy
    query = adata.copy()
    gs.tl.explain(query, state, n_top=None, steps=1024)
    codes = query.obs["ginseng_explained_label"].cat.codes.to_numpy()
    X = query[:, state.genes].X
    # The explained label is the prediction, and the total is log p(x) - log p(0).
    np.testing.assert_array_equal(codes, state.predict_proba(X).argmax(axis=1))
    zero = np.log(state.predict_proba(sp.csr_matrix((1, state.n_genes))).astype(np.float64))[0]
    expected = _log_proba(state, X, codes) - zero[codes]
    total = query.obs["ginseng_attribution_total"].to_numpy()
    np.testing.assert_allclose(total, expected, atol=1e-4)
    # Completeness: all attributions of a cell add up to that difference.
    sums = np.asarray(query.layers[LAYER].sum(axis=1)).ravel()
    assert np.all(np.abs(sums - expected) <= 1e-3 + 1e-3 * np.abs(expected))
    np.testing.assert_allclose(
        query.uns["ginseng"]["explain"]["baseline_log_proba"], zero, atol=1e-5
    )


def test_top_k_are_the_largest_and_roundtrip(toy, tmp_path):
    adata, state = toy
    full, top = adata.copy(), adata.copy()
    gs.tl.explain(full, state, n_top=None)
    gs.tl.explain(top, state, n_top=3)
    A, T = full.layers[LAYER].toarray(), top.layers[LAYER]
    assert T.getnnz(axis=1).max() == 3
    for i in range(0, adata.n_obs, 37):
        expected = np.sort(A[i][A[i] != 0])[::-1][:3]
        np.testing.assert_allclose(np.sort(T[i].data)[::-1], expected, rtol=1e-6)
    path = tmp_path / "explained.h5ad"
    top.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert (back.layers[LAYER] != T).nnz == 0
    pd.testing.assert_frame_equal(back.obs, top.obs)


def test_chosen_label_and_label_key(toy):
    adata, state = toy
    query = adata[:50].copy()
    label = str(state.labels[2])
    gs.tl.explain(query, state, label=label, n_top=None)
    assert (query.obs["ginseng_explained_label"] == label).all()
    zero = np.log(state.predict_proba(sp.csr_matrix((1, state.n_genes))).astype(np.float64))[0]
    codes = np.full(50, 2)
    expected = _log_proba(state, query[:, state.genes].X, codes) - zero[2]
    np.testing.assert_allclose(query.obs["ginseng_attribution_total"], expected, atol=1e-4)
    gs.tl.explain(query, state, label_key="cell_type", key_added="truth")
    truth = query.obs["cell_type"].astype(str).to_numpy()
    assert (query.obs["truth_explained_label"].astype(str).to_numpy() == truth).all()


def test_deletion_on_real_pbmc(pbmc):
    """Zeroing each cell's top-10 genes lowers its predicted probability far more than
    zeroing 10 random expressed genes."""
    adata, state = pbmc
    query = adata.copy()
    gs.tl.explain(query, state, n_top=10)
    X = query[:, state.genes].X.tocsr()
    att = query.layers[LAYER][:, query.var_names.get_indexer(state.genes)].tocsr()
    rng = np.random.default_rng(0)
    top, rand = X.tolil(), X.tolil()
    for i in range(X.shape[0]):
        top[i, att.indices[att.indptr[i] : att.indptr[i + 1]]] = 0
        expressed = X.indices[X.indptr[i] : X.indptr[i + 1]]
        rand[i, rng.choice(expressed, min(10, expressed.size), replace=False)] = 0
    p = state.predict_proba(X)
    codes = p.argmax(axis=1)
    rows = np.arange(len(codes))
    drop_top = p[rows, codes] - state.predict_proba(top.tocsr())[rows, codes]
    drop_rand = p[rows, codes] - state.predict_proba(rand.tocsr())[rows, codes]
    assert drop_top.mean() > 3 * drop_rand.mean()
    assert drop_top.mean() > 0.1
    # At the default steps, the attributions add up to the explained difference.
    full = adata.copy()
    gs.tl.explain(full, state, n_top=None)
    sums = np.asarray(full.layers[LAYER].sum(axis=1)).ravel()
    total = full.obs["ginseng_attribution_total"].to_numpy()
    assert np.median(np.abs(sums - total)) < 0.01 * np.median(np.abs(total))


def test_backed_equals_in_memory(toy, tmp_path):
    adata, state = toy
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    memory = adata.copy()
    gs.tl.explain(memory, state, n_top=5, batch_size=97)
    backed = ad.read_h5ad(path, backed="r")
    gs.tl.explain(backed, state, n_top=5, batch_size=97)
    assert (backed.layers[LAYER] != memory.layers[LAYER]).nnz == 0
    pd.testing.assert_series_equal(
        backed.obs["ginseng_explained_label"], memory.obs["ginseng_explained_label"]
    )
    from_path = gs.tl.explain(path, state, n_top=5, batch_size=97)
    assert (from_path.layers[LAYER] != memory.layers[LAYER]).nnz == 0
    # Other chunk sizes change only the float rounding of the compiled arithmetic (on
    # the default toy model the path's gradients reach ~1e4 near the baseline, so the
    # float32 sums differ in the fifth digit).
    other = adata.copy()
    gs.tl.explain(other, state, n_top=None, batch_size=64)
    reference = adata.copy()
    gs.tl.explain(reference, state, n_top=None)
    np.testing.assert_allclose(
        other.layers[LAYER].toarray(), reference.layers[LAYER].toarray(), rtol=1e-4, atol=1e-4
    )


def test_missing_genes_get_no_attribution(toy):
    adata, state = toy
    query = adata[:, adata.var_names[5:]].copy()  # the query lacks 5 model genes
    gs.tl.explain(query, state, n_top=None)
    assert query.layers[LAYER].shape == query.shape
    overlap = query.uns["ginseng"]["explain"]["gene_overlap"]
    assert overlap["n_missing"] == 5
    # Completeness holds with the missing genes at their training mean.
    missing = np.isin(state.genes, adata.var_names[:5])
    X = adata[:, state.genes].X.tocsr()
    p = state.predict_proba(X, missing=missing)
    zero = state.predict_proba(sp.csr_matrix((1, state.n_genes)), missing=missing)[0]
    codes = query.obs["ginseng_explained_label"].cat.codes.to_numpy()
    np.testing.assert_array_equal(codes, p.argmax(axis=1))
    expected = np.log(p[np.arange(len(codes)), codes]) - np.log(zero[codes])
    np.testing.assert_allclose(query.obs["ginseng_attribution_total"], expected, atol=1e-4)


def test_bad_input(toy):
    adata, state = toy
    with pytest.raises(InputError, match="'Martian'"):
        gs.tl.explain(adata.copy(), state, label="Martian")
    query = adata[:20].copy()
    query.obs["bad"] = ["type_0"] * 19 + ["Martian"]
    with pytest.raises(InputError, match="'Martian'"):
        gs.tl.explain(query, state, label_key="bad")
    with pytest.raises(InputError, match="'nope'"):
        gs.tl.explain(query, state, label_key="nope")
    with pytest.raises(InputError, match="not both"):
        gs.tl.explain(query, state, label="type_0", label_key="bad")
    with pytest.raises(InputError, match="n_top"):
        gs.tl.explain(query, state, n_top=0)
    logged = query.copy()
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray()) * 0.37)
    with pytest.raises(InputError):
        gs.tl.explain(logged, state)
    with pytest.raises(InputError, match="'Martian'"):
        gs.tl.marker_genes(state, labels=["Martian"])
    assert LAYER not in query.layers


def test_copy_leaves_adata_untouched(toy):
    adata, state = toy
    query = adata[:30].copy()
    out = gs.tl.explain(query, state, copy=True)
    assert LAYER in out.layers and LAYER not in query.layers


def test_marker_genes_find_planted_markers():
    data = gs.datasets.synthetic_counts(3000, 600, n_types=5, seed=1, sorted_by_label=False)
    state = gs.tl.train(data, "cell_type", epochs=6, seed=0, hidden_dim=64)
    markers = gs.tl.marker_genes(state, n_top=3)
    assert markers.columns.tolist() == ["label", "rank", "gene", "score"]
    marker_of = data.var["marker_of"]
    hits = 0
    for label, part in markers.groupby("label", observed=True):
        hits += int((marker_of[part["gene"]].to_numpy() == label).sum())
        assert (np.diff(part["score"].to_numpy()) <= 0).all()
    planted = sum(min(3, int((marker_of == t).sum())) for t in state.labels)
    assert hits >= 0.8 * planted


def test_pl_markers(pbmc, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    adata, state = pbmc
    query = adata.copy()
    with pytest.raises(InputError, match="ginseng_cell_type"):
        gs.pl.markers(query, state, show=False)
    gs.tl.classify(query, state)
    axes = gs.pl.markers(query, state, n_top=2, show=False, save=tmp_path / "m.png")
    assert "mainplot_ax" in axes and (tmp_path / "m.png").is_file()
    shown = [t.get_text() for t in axes["mainplot_ax"].get_xticklabels()]
    table = gs.tl.marker_genes(state, n_top=2)
    present = set(query.obs["ginseng_cell_type"].astype(str))
    assert shown == table[table["label"].isin(present)]["gene"].tolist()
