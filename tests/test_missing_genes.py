"""Model genes the query lacks are unknown (set to their training mean), not zero counts.

After library-size normalisation, log1p and standardisation a zero count becomes
``clip(-mean * scale)``, a strong "not expressed" signal; a gene that was never measured
must instead sit at its training mean, 0 in standardised space. Checked against an
independent numpy computation of the preprocessing, on dense and sparse input, and for
its effect on accuracy.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import ginseng as gs
from ginseng.model.first_layer import first_linear_sparse, present_share
from ginseng.tl import kernel


@pytest.fixture(scope="module")
def query(make_toy):
    """Fresh cells from the toy generator's cell types (same seed: same profiles)."""
    adata = make_toy(n_cells=400, seed=0)
    return adata


def _drop(adata, fraction, seed):
    """The query without ``fraction`` of its genes (chosen at random); the dropped names."""
    rng = np.random.default_rng(seed)
    dropped = rng.choice(adata.n_vars, round(fraction * adata.n_vars), replace=False)
    keep = np.setdiff1d(np.arange(adata.n_vars), dropped)
    return adata[:, keep].copy(), adata.var_names[dropped]


def _expected_share(state, missing):
    """Share of the counts the present genes carry, from the log-normal moments."""
    p = state.params
    mean, std = p["gene_mean"].astype(np.float64), 1.0 / p["gene_scale"].astype(np.float64)
    expected = np.exp(mean + std**2 / 2) - 1
    return expected[~missing].sum() / expected.sum()


def _numpy_first_layer(state, X, missing):
    """First Linear layer's output computed in numpy, missing genes at their training mean.

    The training mean is 0 in standardised space and the stored log-mean otherwise. The
    cell's total covers the present genes only, so the target is scaled by their
    expected share of the counts.
    """
    cfg, p = state.config, state.params
    x = np.asarray(X, np.float64) * ~missing  # whatever a missing column holds is ignored
    target = cfg["target_sum"] * _expected_share(state, missing)
    x = x * target / np.maximum(x.sum(axis=1, keepdims=True), 1.0)
    h = np.log1p(x)
    if cfg["standardize"]:
        h = np.clip((h - p["gene_mean"]) * p["gene_scale"], -10.0, 10.0)
        h[:, missing] = 0.0
    else:
        h[:, missing] = p["gene_mean"][missing]
    return h @ p["blocks/0/linear/kernel"] + p["blocks/0/linear/bias"]


@pytest.fixture(params=["toy_trained", "toy_trained_standardized"])
def trained(request):
    """The toy model with and without per-gene standardisation."""
    return request.getfixturevalue(request.param)


def test_all_genes_present_is_the_old_path_exactly(trained, query):
    state = trained.state
    X = sp.csr_matrix(query.X)
    none = np.zeros(state.n_genes, bool)
    np.testing.assert_array_equal(state.predict_logits(X, missing=none), state.predict_logits(X))
    dense = X.toarray()
    np.testing.assert_array_equal(
        state.predict_logits(dense, missing=none), state.predict_logits(dense)
    )
    alignment = kernel.align_genes(state.genes, query.var)
    assert not alignment.missing.any()
    new = kernel.classify_chunk(X, alignment, state)
    old = kernel.classify_chunk(X, alignment, state, missing_genes="zero")
    np.testing.assert_array_equal(new.probabilities, old.probabilities)
    np.testing.assert_array_equal(new.probabilities, state.predict_proba(X))


@pytest.mark.parametrize("seed", [0, 1])
def test_missing_genes_match_numpy_on_dense_and_sparse(trained, query, seed):
    state = trained.state
    rng = np.random.default_rng(seed)
    missing = np.zeros(state.n_genes, bool)
    missing[rng.choice(state.n_genes, 20, replace=False)] = True
    # Thinned counts, so that the sparse first layer (used below 25% density) runs.
    X = rng.binomial(query[:, state.genes].X.toarray().astype(np.int64), 0.01).astype(np.float32)
    X[:, missing] = 0.0
    assert 0 < np.count_nonzero(X) < 0.25 * X.size
    z = _numpy_first_layer(state, X, missing)
    np.testing.assert_allclose(
        first_linear_sparse(state.config, state.params, sp.csr_matrix(X), missing=missing),
        z,
        rtol=1e-4,
        atol=1e-4,
    )
    model = state.build_model()
    expected = np.asarray(model.from_first_linear(z.astype(np.float32)))
    dense = state.predict_logits(X, missing=missing)
    sparse = state.predict_logits(sp.csr_matrix(X), missing=missing)
    np.testing.assert_allclose(dense, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sparse, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dense, sparse, rtol=1e-5, atol=1e-5)
    # ...and it is a real change: zero counts for those genes give other logits.
    assert np.abs(state.predict_logits(X) - dense).max() > 1e-2
    # A missing gene's column is ignored, whatever it holds.
    noisy = X.copy()
    noisy[:, missing] = rng.poisson(5.0, (X.shape[0], int(missing.sum())))
    np.testing.assert_allclose(state.predict_logits(noisy, missing=missing), dense, atol=1e-5)
    np.testing.assert_allclose(
        state.predict_logits(sp.csr_matrix(noisy), missing=missing), dense, atol=1e-5
    )


def test_expected_share_matches_the_training_counts(trained):
    """The share estimated from the stored statistics is close to the one measured."""
    state, adata = trained.state, trained.adata
    X = adata[:, state.genes].X.toarray().astype(np.float64)
    measured = (X / X.sum(axis=1, keepdims=True)).mean(axis=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        missing = rng.random(state.n_genes) < 0.5
        truth = measured[~missing].sum() / measured.sum()
        assert present_share(state.config, state.params, missing) == pytest.approx(truth, abs=0.05)
        assert present_share(state.config, state.params, missing) == pytest.approx(
            _expected_share(state, missing), rel=1e-6
        )
    assert present_share(state.config, state.params, np.zeros(state.n_genes, bool)) == 1.0


def test_kernel_marks_absent_genes_unknown_and_zero_fill_is_explicit_zeros(trained, query):
    state = trained.state
    partial, dropped = _drop(query, 0.4, seed=3)
    alignment = kernel.align_genes(state.genes, partial.var)
    np.testing.assert_array_equal(alignment.missing, pd.Index(state.genes).isin(dropped))
    for chunk in (sp.csr_matrix(partial.X), partial.X.toarray()):
        mean = kernel.classify_chunk(chunk, alignment, state)
        X = query[:, state.genes].X.toarray()
        X[:, alignment.missing] = 0.0
        np.testing.assert_allclose(
            mean.probabilities,
            state.predict_proba(X, missing=alignment.missing),
            rtol=1e-5,
            atol=1e-6,
        )
        # The old behaviour: the same as a query holding those genes as explicit zeros.
        zero = kernel.classify_chunk(chunk, alignment, state, missing_genes="zero")
        padded = ad.AnnData(
            sp.csr_matrix(X), var=pd.DataFrame(index=state.genes), obs=query.obs[[]]
        )
        full = kernel.align_genes(state.genes, padded.var)
        np.testing.assert_allclose(
            zero.probabilities,
            kernel.classify_chunk(padded.X, full, state).probabilities,
            rtol=1e-5,
            atol=1e-6,
        )
    with pytest.raises(gs.InputError, match="missing_genes"):
        kernel.classify_chunk(partial.X, alignment, state, missing_genes="drop")


def test_classify_records_how_missing_genes_were_read(trained, query):
    state = trained.state
    partial, dropped = _drop(query, 0.3, seed=1)
    gs.tl.classify(partial, state)
    overlap = partial.uns["ginseng"]["classify"]["gene_overlap"]
    assert overlap["missing_genes"] == "mean-imputed"
    assert overlap["n_missing"] == len(dropped) == state.n_genes - overlap["n_found"]


def test_mean_imputation_is_at_least_as_accurate_as_zero_fill(trained, query):
    """Half the model's genes dropped, three draws: imputing the mean does not lose."""
    state = trained.state
    truth = query.obs["cell_type"].astype(str).to_numpy()
    acc = {"mean": [], "zero": []}
    for seed in range(3):
        partial, _ = _drop(query, 0.5, seed)
        alignment = kernel.align_genes(state.genes, partial.var, min_overlap=0.4)
        for how in acc:
            result = kernel.classify_chunk(partial.X, alignment, state, missing_genes=how)
            acc[how].append(float((state.labels[result.codes] == truth).mean()))
    assert np.mean(acc["mean"]) >= np.mean(acc["zero"]), acc


def test_masking_as_unknown_marks_exactly_the_zeroed_genes(toy_trained):
    import jax

    from ginseng.train.augment import Augmentation, mask_genes

    state = toy_trained.state
    x = np.asarray(toy_trained.adata.X[:64].toarray(), np.float32) + 1.0  # no zero count
    key = jax.random.key(3)
    augment = Augmentation(None, None, 5, 20, "unknown")
    out, present = augment.with_mask(key, x)
    out, present = np.asarray(out), np.asarray(present)
    np.testing.assert_array_equal(out == 0, present == 0)
    assert ((present == 0).sum(axis=1) >= 5).all() and ((present == 0).sum(axis=1) <= 20).all()
    # The same draws as zero-masking: only the mask comes on top.
    k_mask = jax.random.split(key)[1]
    np.testing.assert_array_equal(out, np.asarray(mask_genes(k_mask, x, 5, 20)))
    # Per cell, the model's share is present_share of that cell's missing genes.
    shares = np.asarray(state.build_model().present_share(present)).ravel()
    expected = [present_share(state.config, state.params, row == 0) for row in present]
    np.testing.assert_allclose(shares, expected, rtol=1e-5)


def test_training_with_masking_as_unknown(make_toy):
    adata = make_toy(n_cells=300, n_genes=30, n_types=3, seed=6)
    quick = {"hidden_dim": 16, "batch_size": 16, "lr": 3e-3, "min_steps": 60}
    state = gs.tl.train(adata, "cell_type", epochs=2, mask_as="unknown", upper=10, **quick)
    assert state.settings.mask_as == "unknown"
    assert state.metrics["accuracy"] > 0.9
    with pytest.raises(gs.InputError, match="mask_as"):
        gs.tl.train(adata, "cell_type", epochs=1, mask_as="mean", **quick)


def test_models_without_statistics_still_zero_fill(toy_trained, query):
    """Files written before the statistics were fitted for every model read as before.

    Such a model (no standardisation, no ``impute_missing`` in its config) stored zero
    means and unit scales; a missing gene was a zero count and the target unscaled.
    """
    from dataclasses import replace

    from ginseng.model.first_layer import missing_genes_note

    state = toy_trained.state
    assert not state.config["standardize"] and state.config["impute_missing"]
    params = dict(state.params)
    params["gene_mean"] = np.zeros(state.n_genes, np.float32)
    params["gene_scale"] = np.ones(state.n_genes, np.float32)
    config = {k: v for k, v in state.config.items() if k != "impute_missing"}
    old = replace(state, config=config, params=params)
    assert missing_genes_note(old.config) == "zero-filled"
    missing = np.zeros(state.n_genes, bool)
    missing[::3] = True
    X = query[:, state.genes].X.toarray()
    X[:, missing] = 0.0
    np.testing.assert_allclose(
        old.predict_logits(X, missing=missing), old.predict_logits(X), rtol=1e-5, atol=1e-5
    )
    # The new model imputes: the same input gives other logits.
    assert np.abs(state.predict_logits(X, missing=missing) - state.predict_logits(X)).max() > 1e-2
