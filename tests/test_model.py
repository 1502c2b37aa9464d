"""Network, augmentation, calibration metrics and GinsengModelState inference."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from flax import nnx
from scipy.special import softmax
from scipy.stats import binom

from ginseng import InputError
from ginseng.model import GinsengClassifier
from ginseng.model.network import (
    build_model,
    count_params,
    flat_params,
    network_config,
    random_uniform,
)
from ginseng.model.state import param_shapes
from ginseng.train import augment
from ginseng.train.augment import Augmentation
from ginseng.train.calibration import (
    calibration_report,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
)

KEY = jax.random.key(0)
# Compiled as in the training step (eager dispatch of the unrolled loops is slow).
thin = jax.jit(augment.thin, static_argnums=2)
add_poisson_noise = jax.jit(augment.add_poisson_noise, static_argnums=2)
mask_genes = jax.jit(augment.mask_genes, static_argnums=(2, 3))


# ----------------------------------------------------------------------- network
def test_parameter_count_grows_linearly_with_genes():
    counts = []
    for n_genes in (100, 200, 400, 800):
        model = GinsengClassifier(network_config(n_genes, 7, hidden_dim=16), rngs=nnx.Rngs(0))
        counts.append(count_params(model))
    steps = np.diff(counts) / np.diff([100, 200, 400, 800])
    assert np.all(steps == 16)  # one first-layer weight per gene and hidden unit


def test_forward_eval_is_deterministic_and_dropout_uses_the_key():
    model = GinsengClassifier(
        network_config(30, 3, hidden_dim=8, dropout_rate=0.5), rngs=nnx.Rngs(0)
    )
    x = jnp.asarray(np.random.default_rng(0).poisson(3.0, (5, 30)), jnp.float32)
    assert model(x).shape == (5, 3)
    np.testing.assert_array_equal(model(x), model(x))
    a, b = model(x, key=jax.random.key(1)), model(x, key=jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, model(x, key=jax.random.key(1)))


def test_weights_are_lecun_scaled_and_fixed_by_the_seed():
    cfg = network_config(400, 5, hidden_dim=64)
    a, b = (flat_params(GinsengClassifier(cfg, rngs=nnx.Rngs(4))) for _ in range(2))
    c = flat_params(GinsengClassifier(cfg, rngs=nnx.Rngs(5)))
    kernel = a["blocks/0/linear/kernel"]
    np.testing.assert_array_equal(kernel, b["blocks/0/linear/kernel"])
    assert not np.array_equal(kernel, c["blocks/0/linear/kernel"])
    assert kernel.var() == pytest.approx(1 / 400, rel=0.05)
    assert a["head/kernel"].var() == pytest.approx(1 / 64, rel=0.2)
    # dropout keeps each unit with probability 1 - rate and rescales the kept ones
    model = GinsengClassifier(
        network_config(30, 3, hidden_dim=512, dropout_rate=0.25), rngs=nnx.Rngs(0)
    )
    h = jnp.ones((64, 512))
    out = np.asarray(model.blocks[1](h, jax.random.key(3)))
    full = np.asarray(model.blocks[1](h, None))
    kept = out != 0
    assert kept.mean() == pytest.approx(0.75, abs=0.01)
    np.testing.assert_allclose(out[kept], (full / 0.75)[kept], rtol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_preprocessing_normalises_then_log1p(normalize):
    cfg = network_config(4, 2, normalize=normalize, target_sum=100.0, standardize=False)
    model = GinsengClassifier(cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray([[1.0, 3.0, 0.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    h = np.asarray(model.preprocess(x))
    expected = np.log1p(np.asarray(x) * (10.0 if normalize else 1.0))
    np.testing.assert_allclose(h, expected, rtol=1e-6)


def test_flat_params_round_trip_through_build_model():
    cfg = network_config(20, 3, hidden_dim=8, n_layers=3)
    model = GinsengClassifier(cfg, rngs=nnx.Rngs(3))
    params = flat_params(model)
    assert "blocks/2/linear/kernel" in params and "gene_mean" in params
    rebuilt = build_model(cfg, params)
    x = jnp.ones((2, 20))
    np.testing.assert_array_equal(model(x), rebuilt(x))
    with pytest.raises(KeyError):
        build_model(cfg, {k: v for k, v in params.items() if k != "head/bias"})
    # The jax-free shape table that load_model checks files against matches the network.
    assert param_shapes(cfg) == {k: v.shape for k, v in params.items()}


# ------------------------------------------------------------------ augmentation
def test_thinning_keeps_each_count_with_probability_one_minus_rate():
    for value, rate in [(5.0, 0.1), (40.0, 0.1), (7.0, 0.8)]:
        x = jnp.full((400, 100), value)
        out = np.asarray(thin(KEY, x, rate))
        assert np.all((out >= 0) & (out <= value)) and np.all(out == np.round(out))
        n = out.size
        mean_sd = np.sqrt(value * rate * (1 - rate) / n)
        assert abs(out.mean() - (1 - rate) * value) < 5 * mean_sd + 1e-3
        assert out.var() == pytest.approx(value * rate * (1 - rate), rel=0.1)
    zeros = np.asarray(thin(KEY, jnp.zeros((400, 100)), 0.1))
    assert not zeros.any()


def test_hash_uniforms_are_uniform_and_independent_across_rows_and_keys():
    u = np.asarray(jax.jit(random_uniform, static_argnums=1)(KEY, (512, 1000)))
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    assert u.mean() == pytest.approx(0.5, abs=2e-3) and u.var() == pytest.approx(1 / 12, rel=1e-2)
    # deciles equally full, neighbours (same row, same column) uncorrelated
    assert np.allclose(np.histogram(u, bins=10, range=(0, 1))[0] / u.size, 0.1, atol=2e-3)
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]) < 0.01
    other = np.asarray(random_uniform(jax.random.key(1), (512, 1000)))
    assert abs(np.corrcoef(u.ravel(), other.ravel())[0, 1]) < 0.01


def test_gene_order_for_masking_is_a_permutation():
    for n in (1, 7, 3000):
        ranks = np.asarray(jax.jit(augment._random_ranks, static_argnums=1)(KEY, n))
        assert np.array_equal(np.sort(ranks), np.arange(n))
    a = np.asarray(augment._random_ranks(jax.random.key(1), 3000))
    b = np.asarray(augment._random_ranks(jax.random.key(2), 3000))
    assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(3000))


def test_thinning_of_counts_above_the_exact_range_keeps_mean_and_variance():
    # 12 of each count are thinned exactly, the rest by a normal approximation.
    for value in (13.0, 20.0, 150.0):
        out = np.asarray(thin(KEY, jnp.full((500, 200), value), 0.3))
        assert out.mean() == pytest.approx(0.7 * value, rel=0.01)
        assert out.var() == pytest.approx(value * 0.21, rel=0.1)
        assert out.min() >= 0 and out.max() <= value


def test_poisson_noise_has_per_cell_rate_up_to_lam_max():
    for lam_max in (4.0, 30.0):
        out = np.asarray(add_poisson_noise(KEY, jnp.zeros((2000, 200)), lam_max))
        assert np.all(out >= 0) and np.all(out == np.round(out))
        assert out.mean() == pytest.approx(lam_max / 2, rel=0.05)
        cell_means = out.mean(axis=1)
        assert cell_means.max() > 0.8 * lam_max and cell_means.min() < 0.2 * lam_max


def test_masking_zeroes_between_lower_and_upper_whole_genes():
    x = jnp.ones((3000, 60))
    out = np.asarray(mask_genes(KEY, x, 5, 20))
    n_masked = (out == 0).sum(axis=1)
    assert n_masked.min() == 5 and n_masked.max() == 20
    assert n_masked.mean() == pytest.approx(12.5, abs=0.3)
    per_gene = (out == 0).mean(axis=0)  # every gene equally likely
    assert per_gene.min() > 0.15 and per_gene.max() < 0.27
    exact = np.asarray(mask_genes(KEY, x, 7, 7))
    assert np.all((exact == 0).sum(axis=1) == 7)
    everything = np.asarray(mask_genes(KEY, x[:50], 100, 200))
    assert not everything.any()


def test_augmentation_none_disables_and_order_leaves_masked_genes_zero():
    x = jnp.asarray(np.random.default_rng(0).poisson(5.0, (64, 40)), jnp.float32)
    off = Augmentation(None, None, None, None)
    assert not off.active
    np.testing.assert_array_equal(jax.jit(off)(KEY, x), x)
    assert not Augmentation(0.0, 0.0, 0, 0).active
    on = Augmentation(0.2, 1.0, 3, 3)
    out = np.asarray(jax.jit(on)(KEY, x))
    assert np.all((out == 0).sum(axis=1) >= 3)
    assert out.shape == x.shape


def test_wide_batches_are_augmented_block_by_block_with_the_same_statistics():
    x = jnp.full((64, 10_000), 4.0)  # above the block size: resampled in row blocks
    out = np.asarray(jax.jit(Augmentation(0.25, None, 100, 100))(KEY, x))
    assert np.all((out == 0).sum(axis=1) >= 100)
    kept = out[out > 0]
    assert out.mean() == pytest.approx(0.75 * 4.0 * (1 - 100 / 10_000), rel=0.01)
    assert kept.max() <= 4.0
    # Blocks must not repeat each other's draws. Thinning alone (masking would make the
    # blocks differ whatever their keys): with one key for both blocks they would be
    # identical; with independent keys two cells agree as often as two independent
    # Binomial(4, 0.75) draws do.
    thinned = np.asarray(jax.jit(Augmentation(0.25, None, None, None))(KEY, x))
    first, second = thinned.reshape(2, 32, -1)  # 32 rows per block at 10,000 genes
    p = binom.pmf(np.arange(5), 4, 0.75)
    assert (first == second).mean() == pytest.approx(np.sum(p**2), abs=0.005)
    assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.01
    assert (first[0] == first[1]).mean() == pytest.approx(np.sum(p**2), abs=0.03)  # rows too


# ------------------------------------------------------------------- calibration
def _calibrated_logits(n=4000, k=5, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, k))
    labels = np.array([rng.choice(k, p=p) for p in softmax(logits, axis=1)])
    return logits, labels


def test_temperature_scaling_fixes_an_over_confident_model():
    logits, labels = _calibrated_logits()
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)
    overconfident = 10 * logits
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(10.0, rel=0.1)
    report = calibration_report(overconfident, labels, np.array(list("abcde")))
    assert report["ece"] < report["ece_uncalibrated"] / 3
    assert report["nll"] < report["nll_uncalibrated"]
    assert report["temperature"] == pytest.approx(t)


def test_metrics_on_a_known_confusion():
    labels = np.array([0, 0, 1, 1, 2, 2])
    logits = np.eye(3)[[0, 0, 1, 2, 2, 2]] * 5
    m = classification_metrics(logits, labels, np.array(["a", "b", "c"]))
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["confusion"] == [[2, 0, 0], [0, 1, 1], [0, 0, 2]]
    assert m["f1_per_label"] == pytest.approx({"a": 1.0, "b": 2 / 3, "c": 0.8})
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0.8) / 3)
    perfect = np.eye(3)[labels]
    assert expected_calibration_error(perfect, labels) == 0.0


# ------------------------------------------------------------------ model state
def test_state_predictions_dense_sparse_and_batches_agree(toy_trained):
    state, adata = toy_trained.state, toy_trained.adata
    X = adata.X[:300]
    logits = state.predict_logits(X)
    assert logits.shape == (300, state.n_labels) and logits.dtype == np.float32
    np.testing.assert_allclose(
        state.predict_logits(X.toarray(), batch_size=64), logits, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(state.predict_logits(X[:7]), logits[:7], rtol=1e-5, atol=1e-5)
    model_logits = np.asarray(toy_trained.model(jnp.asarray(X.toarray())))
    np.testing.assert_allclose(logits, model_logits, rtol=1e-4, atol=1e-4)
    proba = state.predict_proba(X)
    raw = state.predict_proba(X, calibrated=False)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(1), raw.argmax(1))
    assert state.predict(X).dtype.kind == "U"
    # accuracy on the cells held out from training (the store keeps their source rows)
    ds = toy_trained.dataset
    held_out = ds.cell_index[ds.splits["test"]]
    truth = adata.obs["cell_type"].to_numpy()[held_out]
    assert (state.predict(adata.X[held_out]) == truth).mean() > 0.95
    assert state.predict_logits(sp.csr_matrix((0, state.n_genes))).shape == (0, state.n_labels)


def test_state_rejects_wrong_gene_count(toy_trained):
    with pytest.raises(InputError, match=str(toy_trained.state.n_genes)):
        toy_trained.state.predict_proba(np.zeros((3, 7)))


def test_state_rebuilds_model_and_prints_a_model_card(toy_trained):
    state = toy_trained.state
    x = toy_trained.adata.X[:5].toarray()
    np.testing.assert_allclose(
        state.build_model()(jnp.asarray(x)), state.predict_logits(x), atol=1e-5
    )
    card = repr(state)
    for text in ("type_0", "type_3", "50", "accuracy", "macro-F1", "T =", "ECE", "jax", "flax"):
        assert text in card
    other = dataclasses.replace(state, metrics={}, history={}, provenance={})
    assert "GinsengModelState" in repr(other)
