"""Inference paths of GinsengModelState: sparse first layer vs the dense network."""

from __future__ import annotations

import json
from dataclasses import replace

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import softmax


def _sparse_counts(n_cells, n_genes, density, seed):
    X = sp.random(n_cells, n_genes, density=density, format="csr", random_state=seed)
    X.data = np.round(X.data * 200) + 1  # up to ~200 counts, large enough to reach the clip
    X = X.tolil()
    X[3] = 0  # an empty cell
    return X.tocsr()


@pytest.mark.parametrize(
    ("normalize", "standardize"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_sparse_first_layer_equals_dense_network(toy_trained, normalize, standardize):
    state = toy_trained.state
    state = replace(
        state, config={**state.config, "normalize": normalize, "standardize": standardize}
    )
    X = _sparse_counts(700, state.n_genes, 0.1, seed=1)  # below SPARSE_MAX_DENSITY
    sparse = state.predict_logits(X, batch_size=256)
    dense = state.predict_logits(X.toarray(), batch_size=256)
    np.testing.assert_allclose(sparse, dense, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(sparse.argmax(axis=1), dense.argmax(axis=1))


def test_dense_sparse_input_takes_the_dense_path(toy_trained):
    state = toy_trained.state
    X = sp.csr_matrix(toy_trained.adata.X[:50])  # toy counts are nearly dense
    np.testing.assert_array_equal(state.predict_logits(X), state.predict_logits(X.toarray()))


# ------------------------------------------------- the documented model, in numpy
def read_model_file(path):
    """Everything the forward pass needs, read with h5py only (no ginseng)."""
    with h5py.File(path, "r") as f:
        params = {}
        f["params"].visititems(
            lambda name, obj: (
                params.update({name: obj[()].astype(np.float64)})
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
        config = json.loads(f["config"].asstr()[()])
        genes = f["genes"].asstr()[()]
        labels = f["labels"].asstr()[()]
        temperature = float(f["calibration/temperature"][()])
    return params, config, genes, labels, temperature


def numpy_logits(params, config, counts):
    """docs/formats.md's network in float64 numpy: raw counts -> logits.

    Scale each cell to ``target_sum`` counts, ``log1p``, standardise each gene with the
    stored mean and scale (``(h - mean) * scale``, clipped to ``[-clip, clip]``), then
    ``n_layers`` blocks of Linear, LayerNorm (flax's epsilon 1e-6) and GELU (tanh form,
    flax's default), and a linear head.
    """
    h = np.asarray(counts, np.float64)
    if config["normalize"]:
        h = h / h.sum(axis=1, keepdims=True) * config["target_sum"]
    if config["log1p"]:
        h = np.log1p(h)
    if config["standardize"]:
        h = np.clip(
            (h - params["gene_mean"]) * params["gene_scale"], -config["clip"], config["clip"]
        )
    for i in range(config["n_layers"]):
        z = h @ params[f"blocks/{i}/linear/kernel"] + params[f"blocks/{i}/linear/bias"]
        z = (z - z.mean(axis=1, keepdims=True)) / np.sqrt(z.var(axis=1, keepdims=True) + 1e-6)
        z = z * params[f"blocks/{i}/norm/scale"] + params[f"blocks/{i}/norm/bias"]
        h = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
    return h @ params["head/kernel"] + params["head/bias"]


def _holdout_and_mixed_cells(trained):
    """The toy model's holdout cells, plus sums of two cells of different types (uncertain)."""
    ds, adata = trained.dataset, trained.adata
    rows = np.sort(ds.cell_index[ds.splits["test"]])
    query = adata[rows].copy()
    X = query.X.toarray()
    first, second = (
        np.flatnonzero(query.obs["cell_type"] == "type_0")[:10],
        np.flatnonzero(query.obs["cell_type"] == "type_1")[:10],
    )
    n = min(first.size, second.size)
    mixed = X[first[:n]] + np.round(X[second[:n]] * np.linspace(0.3, 1.5, n)[:, None])
    X = np.vstack([X, mixed]).astype(np.float32)
    obs = pd.DataFrame(index=[f"q{i}" for i in range(X.shape[0])])
    return ad.AnnData(sp.csr_matrix(X), obs=obs, var=adata.var.copy())


@pytest.mark.parametrize("temperature", [None, 3.0])
def test_classify_probabilities_are_softmax_of_logits_over_t_from_the_file(
    toy_trained, tmp_path, temperature
):
    import ginseng
    import ginseng as gs
    from ginseng.data.io import save_model

    state = toy_trained.state
    if temperature is not None:  # a clearly non-trivial T as well as the fitted one
        state = replace(state, temperature=temperature)
    path = save_model(state, tmp_path / "model.h5")
    params, config, genes, labels, T = read_model_file(path)
    query = _holdout_and_mixed_cells(toy_trained)
    query = query[:, ::-1].copy()  # genes in another order: classify aligns by name
    counts = query[:, list(genes)].X.toarray()
    logits = numpy_logits(params, config, counts)
    expected = softmax(logits / T, axis=1)
    # The check means something only if T changes the probabilities here.
    assert np.abs(expected - softmax(logits, axis=1)).max() > 0.05

    np.testing.assert_allclose(state.predict_logits(counts), logits, rtol=1e-4, atol=1e-4)
    gs.tl.classify(query, path)
    np.testing.assert_allclose(query.obsm["ginseng_probabilities"], expected, atol=2e-4)
    confidence = expected.max(axis=1)
    np.testing.assert_allclose(query.obs["ginseng_confidence"], confidence, atol=2e-4)
    sure = np.sort(expected, axis=1)[:, -2] < confidence - 1e-3  # no near-ties
    np.testing.assert_array_equal(
        query.obs["ginseng_cell_type"].to_numpy()[sure], labels[expected.argmax(axis=1)][sure]
    )
    # ginseng.classify (the seed API) gives the same probabilities from the counts layer
    again = query.copy()
    again.layers["counts"] = again.X.copy()
    again.X = again.X * 0.5  # something else in X: the counts layer must be used
    ginseng.classify(again, path)
    np.testing.assert_allclose(again.obsm["ginseng_probabilities"], expected, atol=2e-4)


@pytest.mark.parametrize(
    ("n_layers", "normalize", "standardize"), [(1, False, True), (3, True, False), (3, False, True)]
)
def test_other_architectures_follow_the_documented_network(
    tmp_path, n_layers, normalize, standardize
):
    """Random weights and statistics in other configurations, through a saved file."""
    from flax import nnx

    import ginseng as gs
    from ginseng.data.io import save_model
    from ginseng.model import GinsengClassifier, GinsengModelState
    from ginseng.model.network import flat_params, network_config

    rng = np.random.default_rng(n_layers)
    n_genes, n_labels = 40, 5
    config = network_config(
        n_genes, n_labels, hidden_dim=24, n_layers=n_layers, normalize=normalize,
        target_sum=1e3, standardize=standardize,
    )  # fmt: skip
    params = flat_params(GinsengClassifier(config, rngs=nnx.Rngs(n_layers)))
    params["gene_mean"] = rng.uniform(0, 3, n_genes).astype(np.float32)
    params["gene_scale"] = rng.uniform(0.5, 4, n_genes).astype(np.float32)
    for key in params:  # LayerNorm scales and biases away from their 1 and 0
        if "norm" in key:
            params[key] = params[key] + rng.normal(0, 0.3, params[key].shape).astype(np.float32)
    genes = np.array([f"g{j}" for j in range(n_genes)])
    state = GinsengModelState(
        params, config, genes, [f"t{k}" for k in range(n_labels)], temperature=2.5
    )
    path = save_model(state, tmp_path / "model.h5")
    counts = rng.poisson(rng.gamma(1.0, 3.0, (1, n_genes)), (120, n_genes)).astype(np.float32)
    counts[:, 0] += 1  # no empty cell
    query = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=genes))
    params, config, _, _, T = read_model_file(path)
    expected = softmax(numpy_logits(params, config, counts) / T, axis=1)
    gs.tl.classify(query, path)
    np.testing.assert_allclose(query.obsm["ginseng_probabilities"], expected, atol=1e-4)
