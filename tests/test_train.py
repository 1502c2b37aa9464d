"""GinsengClassifierTrainer and gs.tl.train on small synthetic stores."""

from __future__ import annotations

import dataclasses

import anndata as ad
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import log_softmax

import ginseng as gs
from ginseng import InputError
from ginseng.data import GinsengDataset
from ginseng.model import GinsengModelState
from ginseng.model.network import MIN_GENE_STD
from ginseng.model.uncertainty import fit_uncertainty
from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings

QUICK = {"hidden_dim": 16, "batch_size": 16, "upper": 5, "lr": 3e-3, "min_steps": 100}


@pytest.fixture(scope="module")
def small_adata(make_toy):
    return make_toy(n_cells=300, n_genes=30, n_types=3, seed=5)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, small_adata):
    path = tmp_path_factory.mktemp("small") / "s.zarr"
    return GinsengDataset.create(path, small_adata, "cell_type")


def source_rows(ds, split):
    """Rows of the source AnnData of a split's cells (the store keeps them shuffled)."""
    return ds.cell_index[ds.splits[split]]


def log_normalised(counts, normalize, target_sum=1e4):
    """The documented preprocessing, in float64 numpy: scale to target_sum, then log1p."""
    x = np.asarray(counts, np.float64)
    if normalize:
        x = x / x.sum(axis=1, keepdims=True) * target_sum
    return np.log1p(x)


def holdout_accuracy(state, adata, ds):
    rows = source_rows(ds, "test")
    return (state.predict(adata.X[rows]) == adata.obs["cell_type"].to_numpy()[rows]).mean()


def test_training_learns_separable_types(toy_trained):
    state, ds = toy_trained.state, toy_trained.dataset
    m = state.metrics
    assert m["accuracy"] > 0.95 and m["macro_f1"] > 0.95
    assert set(m["f1_per_label"]) == set(ds.label_names)
    assert np.asarray(m["confusion"]).shape == (4, 4)
    assert np.asarray(m["confusion"]).sum() == ds.splits["test"].size == m["n_cells"]
    assert 1 <= m["best_epoch"] <= len(state.history["epoch"])
    assert m["ece"] >= 0 and m["ece_uncalibrated"] >= 0 and state.temperature > 0
    h = state.history
    assert h["epoch"] == list(range(1, len(h["epoch"]) + 1))
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["holdout_loss"][m["best_epoch"] - 1] == min(h["holdout_loss"])
    assert list(state.genes) == list(ds.gene_names) and list(state.labels) == list(ds.label_names)
    assert state.settings == toy_trained.settings
    prov = state.provenance
    assert prov["seed"] == 0 and len(prov["data_fingerprint"]) == 40
    assert {"python", "jax", "flax", "optax", "numpy", "anndata"} <= set(prov["versions"])
    assert prov["n_train"] + prov["n_holdout"] == ds.n_cells
    # the accuracy floor, recomputed on the held-out cells only (never trained on)
    assert not np.intersect1d(source_rows(ds, "test"), source_rows(ds, "train")).size
    assert holdout_accuracy(state, toy_trained.adata, ds) == pytest.approx(m["accuracy"])


def test_same_seed_gives_identical_params_and_predictions(small_store):
    settings = GinsengClassifierTrainerSettings(**QUICK, lam_max=0.5, seed=7)
    _, a = GinsengClassifierTrainer(small_store, settings).fit(2, progress=False)
    _, b = GinsengClassifierTrainer(small_store, settings).fit(2, progress=False)
    assert a.params.keys() == b.params.keys()
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key])
    assert a.history["train_loss"] == b.history["train_loss"]
    x = np.random.default_rng(0).poisson(20.0, (10, small_store.n_genes))
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))


def test_options_balance_groups_and_small_batches(tmp_path, make_toy):
    adata = make_toy(n_cells=200, n_genes=20, n_types=3, seed=2)
    ds = GinsengDataset.create(tmp_path / "g.zarr", adata, "cell_type", group_key="batch")
    settings = GinsengClassifierTrainerSettings(
        hidden_dim=8, batch_size=1000, upper=None, rate=None, standardize=False,
        balance_train=True, group_level=True, group_mode="groups", holdout_fraction=0.25,
        min_steps=20,
    )  # fmt: skip
    _, state = GinsengClassifierTrainer(ds, settings).fit(2, progress=True)
    test_groups = set(ds.groups[ds.splits["test"]])
    assert len(test_groups) == 1 and not test_groups & set(ds.groups[ds.splits["train"]])
    assert state.provenance["batch_size"] == ds.splits["train"].size
    # One step per pass, so min_steps=20 over 2 epochs means 10 passes per epoch.
    assert state.provenance["passes_per_epoch"] == 10 and state.provenance["steps"] == 20
    assert not state.config["standardize"] and state.config["impute_missing"]
    # fitted all the same: they impute genes a query lacks
    assert (state.params["gene_mean"] > 0).all() and (state.params["gene_scale"] != 1.0).any()


def test_best_epoch_weights_are_the_ones_returned(tmp_path, make_toy):
    """Labels without signal: the network memorises them, so later epochs do worse on holdout."""
    adata = make_toy(n_cells=300, n_genes=30, n_types=3, seed=5)
    rng = np.random.default_rng(0)
    adata.obs["noise"] = pd.Categorical(rng.permutation(adata.obs["cell_type"].to_numpy()))
    ds = GinsengDataset.create(tmp_path / "n.zarr", adata, "noise")
    settings = GinsengClassifierTrainerSettings(
        hidden_dim=64, batch_size=16, rate=None, upper=None, dropout_rate=0.0, lr=1e-2,
        weight_decay=0.0, min_steps=0, balance_train=False, holdout_fraction=0.3,
        standardize=True,  # standardised inputs memorise the noise within 6 epochs
    )  # fmt: skip
    model, state = GinsengClassifierTrainer(ds, settings).fit(6, progress=False)
    losses = state.history["holdout_loss"]
    best = state.metrics["best_epoch"]
    assert losses[best - 1] == min(losses)
    assert best < 6 and losses[-1] > losses[best - 1] + 0.02  # the last epoch is worse
    # The holdout loss of the returned weights, computed here from the source counts.
    rows = source_rows(ds, "test")
    codes = {name: i for i, name in enumerate(ds.label_names)}
    y = np.array([codes[v] for v in adata.obs["noise"].to_numpy()[rows]])
    counts = adata.X[rows].toarray()
    logits = state.predict_logits(counts).astype(np.float64)
    loss = -log_softmax(logits, axis=1)[np.arange(y.size), y].mean()
    assert loss == pytest.approx(losses[best - 1], rel=1e-4)
    assert abs(loss - losses[-1]) > 0.02  # not the last epoch's weights
    assert state.metrics["nll_uncalibrated"] == pytest.approx(loss, rel=1e-4)
    # the returned Flax module holds the same (best) weights as the state
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(counts))), logits, atol=1e-4)
    # The novelty statistics and conformal scores were fitted (in the trainer's padded,
    # fixed-shape evaluation pass) on the best weights' features of every training and
    # holdout cell and no padding row: refit them from the state's own predictions.
    expected = fit_uncertainty(
        _features(state, ds, "train")[::2], _features(state, ds, "test"), 3, state.temperature
    )
    for name, value in expected.arrays().items():
        got = getattr(state.uncertainty, name)
        assert got.shape == value.shape, name
        np.testing.assert_allclose(got, value, rtol=1e-4, atol=1e-5, err_msg=name)


def _features(state, ds, split):
    """Hidden layer, logits and labels of a split's cells, from one unpadded prediction."""
    xs, ys = zip(*ds.stream(100, split, shuffle=False, drop_last=False), strict=True)
    hidden, logits = state.predict_hidden_logits(np.concatenate(xs))
    return hidden, logits, np.concatenate(ys).astype(np.int64)


@pytest.fixture(scope="module")
def grouped_store(tmp_path_factory, make_toy):
    """The toy genes and types in two groups of 1,025 and 1,500 cells; the whole-group
    split holds out the 1,025: a batch of 1,024 rows and one of a single cell (the
    streamed fit's offsets and last batch)."""
    adata = make_toy(n_cells=2525, n_genes=50, n_types=4, seed=11)
    adata.obs["group"] = pd.Categorical(["a"] * 1025 + ["b"] * 1500)
    path = tmp_path_factory.mktemp("grouped") / "g.zarr"
    ds = GinsengDataset.create(path, adata, "cell_type", group_key="group")
    ds.make_split(0.5, stratify_group=True, group_mode="groups", seed=0)
    return ds


def _recording(state):
    """The model's features, keeping every batch the fit asked for and what it got."""
    calls = []

    def features(x):
        hidden, logits = state.predict_hidden_logits(x, batch_size=len(x))
        calls.append((np.asarray(x), hidden, logits))
        return hidden, logits

    return features, calls


def _cells_of(calls, ds, split):
    """Features of a split's cells (store order), cut out of the recorded batches.

    Consumes the calls that hold them: each holds the split's next cells, then zero
    (padding) rows, which are checked and left out.
    """
    xs, ys = zip(*ds.stream(100, split, shuffle=False, drop_last=False), strict=True)
    counts, labels = np.concatenate(xs), np.concatenate(ys).astype(np.int64)
    hidden, logits, done = [], [], 0
    while done < labels.size:
        x, h, z = calls.pop(0)
        m = min(len(x), labels.size - done)
        np.testing.assert_array_equal(x[:m], counts[done : done + m])
        assert not x[m:].any()
        hidden.append(h[:m])
        logits.append(z[:m])
        done += m
    return np.concatenate(hidden), np.concatenate(logits), labels


@pytest.mark.parametrize("holdout", ["split", "none"])
def test_uncertainty_from_the_streamed_holdout_equals_the_whole_array_fit(
    toy_trained, grouped_store, holdout
):
    """The trainer's fit keeps two scores per held-out cell, not its features, yet gives
    exactly (np.array_equal) fit_uncertainty of every cell's features at once."""
    from scipy.special import softmax

    from ginseng.train.uncertainty import fit_reference_uncertainty

    state, ds = toy_trained.state, grouped_store
    features, calls = _recording(state)
    if holdout == "none":  # no held-out cell: quantiles of the training cells' scores
        got = fit_reference_uncertainty(state, ds, features=features, holdout=lambda: iter(()))
    else:
        got = fit_reference_uncertainty(state, ds, features=features)
    assert ds.splits["test"].size == 1025, "the case to cover: a last batch of one cell"
    h_train, _, y_train = _cells_of(calls, ds, "train")
    if holdout == "none":
        width = h_train.shape[1]
        held = (
            np.zeros((0, width), np.float32),
            np.zeros((0, state.n_labels), np.float32),
            np.zeros(0, int),
        )
    else:
        held = _cells_of(calls, ds, "test")
        assert len(held[2]) == ds.splits["test"].size
    assert not calls  # one pass over each split
    expected = fit_uncertainty((h_train, y_train), held, state.n_labels, state.temperature)
    for name, value in expected.arrays().items():
        assert np.array_equal(getattr(got, name), value), name
    # The conformal scores, independently: each label's 1 - p_y sorted in float64.
    _, logits, y = held
    proba = softmax(logits.astype(np.float64) / state.temperature, axis=1)
    nonconformity = 1.0 - proba[np.arange(y.size), y]
    for k in range(4):
        start, stop = got.conformal_offsets[k : k + 2]
        mine = np.sort(nonconformity[y == k]).astype(np.float32)
        assert np.array_equal(got.conformal_scores[start:stop], mine)
    assert got.conformal_scores.size == y.size


@pytest.mark.parametrize("normalize", [True, False])
def test_standardisation_is_fitted_on_the_training_split(tmp_path, make_toy, normalize):
    adata = make_toy(n_cells=300, n_genes=30, n_types=3, seed=4)
    X = adata.X.toarray()
    X[:, 7] = 0  # silent gene: its scale is capped, not infinite
    adata.X = sp.csr_matrix(X)
    ds = GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type")
    settings = GinsengClassifierTrainerSettings(
        **QUICK, normalize=normalize, standardize=True, holdout_fraction=0.3
    )
    model, state = GinsengClassifierTrainer(ds, settings).fit(1, progress=False)
    assert state.config["normalize"] is normalize and state.config["standardize"]
    # independent: the documented preprocessing of the training cells, in numpy
    h = log_normalised(X[source_rows(ds, "train")], normalize)
    mean, std = h.mean(axis=0), h.std(axis=0)
    np.testing.assert_allclose(state.params["gene_mean"], mean, rtol=1e-5, atol=1e-6)
    floor = std < MIN_GENE_STD
    assert floor.tolist() == [j == 7 for j in range(30)]
    np.testing.assert_allclose(
        state.params["gene_scale"], 1 / np.maximum(std, MIN_GENE_STD), rtol=1e-4
    )
    # ... and not on every cell (the holdout differs enough to tell)
    everything = log_normalised(X, normalize).mean(axis=0)
    assert np.abs(everything - state.params["gene_mean"]).max() > 1e-3
    # The model standardises with them: clip((h - mean) * scale, -10, 10).
    test = X[source_rows(ds, "test")]
    expected = np.clip(
        (log_normalised(test, normalize) - mean) / np.maximum(std, MIN_GENE_STD), -10, 10
    )
    np.testing.assert_allclose(model.preprocess(jnp.asarray(test)), expected, atol=1e-4)
    assert holdout_accuracy(state, adata, ds) > 0.9
    # normalize=True scales every cell to target_sum first: 4x deeper, same prediction;
    # normalize=False takes log1p of the raw counts, so depth changes the input
    a, b = state.predict_logits(test), state.predict_logits(4 * test)
    if normalize:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    else:
        assert np.abs(a - b).max() > 0.1


def test_standardize_false_skips_standardisation(small_store, small_adata):
    settings = GinsengClassifierTrainerSettings(**{**QUICK, "min_steps": 0}, standardize=False)
    model, state = GinsengClassifierTrainer(small_store, settings).fit(1, progress=False)
    counts = small_adata.X[:40].toarray()
    # the network's input is log1p of the normalised counts, nothing more
    np.testing.assert_allclose(
        model.preprocess(jnp.asarray(counts)), log_normalised(counts, True), rtol=1e-5
    )
    # so predictions cannot depend on the (unused) statistics; with standardize they do
    shifted = {
        "gene_mean": np.full(30, 2.0, np.float32),
        "gene_scale": np.full(30, 3.0, np.float32),
    }
    ignored = dataclasses.replace(state, params={**state.params, **shifted})
    np.testing.assert_array_equal(ignored.predict_logits(counts), state.predict_logits(counts))
    used = dataclasses.replace(ignored, config={**state.config, "standardize": True})
    assert np.abs(used.predict_logits(counts) - state.predict_logits(counts)).max() > 0.1
    # The statistics are fitted on the training split all the same (numpy, independent).
    h = log_normalised(small_adata.X.toarray()[source_rows(small_store, "train")], True)
    np.testing.assert_allclose(state.params["gene_mean"], h.mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_layers", [1, 3])
def test_n_layers_builds_that_many_hidden_layers(small_store, small_adata, n_layers):
    settings = GinsengClassifierTrainerSettings(**QUICK, n_layers=n_layers)
    _, state = GinsengClassifierTrainer(small_store, settings).fit(3, progress=False)
    assert state.config["n_layers"] == n_layers
    kernels = sorted(k for k in state.params if k.endswith("kernel"))
    assert kernels == [f"blocks/{i}/linear/kernel" for i in range(n_layers)] + ["head/kernel"]
    # the settings docstring's weight count: n_genes*h + (n_layers - 1)*h**2 + h*n_labels
    h = QUICK["hidden_dim"]
    assert sum(state.params[k].size for k in kernels) == 30 * h + (n_layers - 1) * h * h + h * 3
    assert holdout_accuracy(state, small_adata, small_store) > 0.9


def test_balance_train_off_learns_the_label_frequencies(tmp_path, make_toy):
    """Counts carry no signal about these labels: the model can only learn their prior."""
    adata = make_toy(n_cells=400, n_genes=20, n_types=2, seed=3)
    rng = np.random.default_rng(0)
    adata.obs["imbalanced"] = pd.Categorical(np.where(rng.random(400) < 0.8, "major", "minor"))
    ds = GinsengDataset.create(tmp_path / "b.zarr", adata, "imbalanced")
    base = {**QUICK, "hidden_dim": 16, "batch_size": 32, "rate": None, "upper": None}
    mean_proba = {}
    for balance in (False, True):
        settings = GinsengClassifierTrainerSettings(**base, balance_train=balance)
        _, state = GinsengClassifierTrainer(ds, settings).fit(2, progress=False)
        proba = state.predict_proba(adata.X, calibrated=False)
        mean_proba[balance] = proba.mean(axis=0)
    train_freq = np.bincount(ds.labels[ds.splits["train"]], minlength=2) / ds.splits["train"].size
    assert train_freq[0] == pytest.approx(0.8, abs=0.05)
    # cells as they come: the training frequencies; balanced: every label equally likely
    np.testing.assert_allclose(mean_proba[False], train_freq, atol=0.08)
    np.testing.assert_allclose(mean_proba[True], [0.5, 0.5], atol=0.08)


@pytest.mark.parametrize(("mode", "fraction"), [("fraction", 0.4), ("groups", 0.3)])
def test_group_level_holdout_is_whole_groups(tmp_path, make_toy, mode, fraction):
    adata = make_toy(n_cells=300, n_genes=30, n_types=3, seed=6)
    adata.obs["donor"] = pd.Categorical(
        np.repeat([f"d{i}" for i in range(5)], [30, 45, 60, 75, 90])
    )
    ds = GinsengDataset.create(tmp_path / "g.zarr", adata, "cell_type", group_key="donor")
    settings = GinsengClassifierTrainerSettings(
        **QUICK, group_level=True, group_mode=mode, holdout_fraction=fraction
    )
    _, state = GinsengClassifierTrainer(ds, settings).fit(2, progress=False)
    donors = adata.obs["donor"].to_numpy()
    held, trained = set(donors[source_rows(ds, "test")]), set(donors[source_rows(ds, "train")])
    assert held and trained and not held & trained
    n_test = int(np.isin(donors, list(held)).sum())  # every cell of a held-out donor
    assert ds.splits["test"].size == n_test == state.provenance["n_holdout"]
    assert state.metrics["n_cells"] == n_test
    assert state.metrics["holdout_fraction"] == n_test / 300
    if mode == "groups":  # round(fraction * n_groups) donors
        assert len(held) == round(0.3 * 5)
    else:  # the closest achievable: 120 = 30 + 90 = 45 + 75
        assert n_test == 120
    # the reported accuracy is the held-out donors' accuracy
    assert holdout_accuracy(state, adata, ds) == pytest.approx(state.metrics["accuracy"])


@pytest.mark.parametrize(("min_steps", "epochs"), [(0, 2), (45, 2)])
def test_min_steps_sets_passes_per_epoch(small_store, min_steps, epochs):
    settings = GinsengClassifierTrainerSettings(**{**QUICK, "min_steps": min_steps})
    _, state = GinsengClassifierTrainer(small_store, settings).fit(epochs, progress=False)
    per_pass = state.provenance["n_train"] // QUICK["batch_size"]
    passes = max(1, -(-min_steps // (epochs * per_pass)))  # ceil
    assert state.provenance["passes_per_epoch"] == passes
    assert state.provenance["steps"] == epochs * passes * per_pass >= min_steps
    assert state.history["epoch"] == list(range(1, epochs + 1))
    if min_steps == 0:
        assert passes == 1


def test_trainer_rejects_bad_input(small_store):
    with pytest.raises(InputError, match="group_key"):
        GinsengClassifierTrainer(small_store, GinsengClassifierTrainerSettings(group_level=True))
    with pytest.raises(InputError, match="settings"):
        GinsengClassifierTrainer(small_store, {"lr": 1e-3})
    with pytest.raises(InputError, match="GinsengDataset"):
        GinsengClassifierTrainer("store.zarr")
    trainer = GinsengClassifierTrainer(small_store)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="epochs"):
            trainer.fit(bad)


# ----------------------------------------------------------------- gs.tl.train
def _check_uns(adata, tmp_path):
    entry = adata.uns["ginseng"]["train"]
    assert entry["params"]["label_key"] == "cell_type"
    assert entry["labels"] == ["type_0", "type_1", "type_2"]
    assert entry["model"]["accuracy"] > 0.9
    path = tmp_path / "after.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.uns["ginseng"]["train"]["params"]["settings"]["hidden_dim"] == 16
    assert list(back.uns["ginseng"]["train"]["labels"]) == entry["labels"]


def test_tl_train_in_memory_records_params(tmp_path, make_toy):
    adata = make_toy(n_cells=300, n_genes=30, n_types=3, seed=1)
    before = adata.copy()
    state = gs.tl.train(adata, "cell_type", epochs=5, seed=3, **QUICK)
    assert isinstance(state, GinsengModelState)
    assert state.settings.seed == 3 and state.settings.hidden_dim == 16
    assert "layer" not in adata.uns["ginseng"]["train"]["params"]  # None is not stored
    _check_uns(adata, tmp_path)
    assert (adata.X != before.X).nnz == 0 and adata.obs.equals(before.obs)
    assert adata.var.equals(before.var)


def test_tl_train_backed_path_and_store(tmp_path, make_toy):
    adata = make_toy(n_cells=300, n_genes=30, n_types=3, seed=1)
    adata.var["ginseng_genes"] = np.arange(30) < 20
    adata.write_h5ad(tmp_path / "in.h5ad")
    backed = ad.read_h5ad(tmp_path / "in.h5ad", backed="r")
    state = gs.tl.train(backed, "cell_type", epochs=2, store=tmp_path / "kept.zarr", **QUICK)
    assert state.n_genes == 20 and list(state.genes) == [f"gene{j}" for j in range(20)]
    assert GinsengDataset(tmp_path / "kept.zarr").n_cells == 300
    assert backed.uns["ginseng"]["train"]["params"]["genes"] == "ginseng_genes"
    # Again into the same store (replaced), and from the path itself.
    from_path = gs.tl.train(
        str(tmp_path / "in.h5ad"), "cell_type", genes=["gene3", "gene1"], epochs=1,
        store=tmp_path / "kept.zarr", **QUICK,
    )  # fmt: skip
    assert list(from_path.genes) == ["gene1", "gene3"]
    # Without seed=, the seed of the given settings is kept, never silently replaced.
    settings = GinsengClassifierTrainerSettings(seed=123, **QUICK)
    kept = gs.tl.train(backed, "cell_type", epochs=1, settings=settings)
    assert kept.settings.seed == 123


def test_tl_train_after_scanpy_preprocessing_uses_counts_layer(tmp_path, make_toy):
    import scanpy as sc

    cells = make_toy(n_cells=600, n_genes=30, n_types=3, seed=1)
    adata, query = cells[:300].copy(), cells[300:].copy()  # query: cells never trained on
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    state = gs.tl.train(adata, "cell_type", layer="counts", epochs=5, **QUICK)
    assert adata.uns["ginseng"]["train"]["params"]["layer"] == "counts"
    assert "log1p" in adata.uns  # scanpy's entry untouched
    _check_uns(adata, tmp_path)
    pred = state.predict(query.X)
    assert (pred == query.obs["cell_type"].to_numpy()).mean() > 0.9


def test_tl_train_rejects_unknown_settings(make_toy):
    adata = make_toy(n_cells=50, n_genes=10, n_types=2)
    with pytest.raises(InputError, match="hidden_size"):
        gs.tl.train(adata, "cell_type", hidden_size=3)
    with pytest.raises(InputError, match="settings"):
        gs.tl.train(adata, "cell_type", settings={"lr": 1.0})
    assert "ginseng" not in adata.uns
