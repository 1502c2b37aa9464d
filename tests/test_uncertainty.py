"""Novelty scores and conformal prediction sets of gs.tl.classify (issue 15, parts 1-2).

Truths are computed independently here: AUROC with scikit-learn, Mahalanobis distances
with scipy, class means and covariances with numpy from the hidden layer of the store's
training cells, coverage tolerances from the binomial/Beta law of split conformal.
"""

from __future__ import annotations

import math

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import mahalanobis
from sklearn.metrics import roc_auc_score

import ginseng as gs
from ginseng import InputError, ModelFormatError
from ginseng.data import GinsengDataset
from ginseng.data.io import load_model, save_model
from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings

SETTINGS = {"hidden_dim": 32, "batch_size": 32, "upper": 10, "seed": 0}


def make_counts(n_cells, n_types, *, fold, seed, library=800.0, profile_seed=0):
    """Poisson counts of ``library`` mean total; each type has 5 marker genes at ``fold`` x."""
    prof_rng = np.random.default_rng(profile_seed)
    n_genes = 60
    profile = prof_rng.gamma(2.0, 1.0, (n_types, n_genes))
    for t in range(n_types):
        profile[t, 5 * t : 5 * t + 5] *= fold
    profile /= profile.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_types, n_cells)
    library = rng.lognormal(np.log(library), 0.3, n_cells)
    X = rng.poisson(profile[labels] * library[:, None]).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type_{t}" for t in labels])},
        index=[f"s{seed}_c{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    return ad.AnnData(sp.csr_matrix(X), obs=obs, var=var)


def _fit(tmp_path, adata, epochs, **settings):
    dataset = GinsengDataset.create(tmp_path, adata, "cell_type")
    trainer_settings = GinsengClassifierTrainerSettings(**{**SETTINGS, **settings})
    _, state = GinsengClassifierTrainer(dataset, trainer_settings).fit(epochs)
    return dataset, state


@pytest.fixture(scope="module")
def novel_setup(tmp_path_factory):
    """A model trained on types 0-3; the query also holds type 4, which it never saw."""
    full = make_counts(2000, 5, fold=10.0, seed=1)
    reference = full[full.obs["cell_type"] != "type_4"].copy()
    reference.obs["cell_type"] = reference.obs["cell_type"].cat.remove_unused_categories()
    dataset, state = _fit(tmp_path_factory.mktemp("novel") / "ref.zarr", reference, 6)
    query = make_counts(1500, 5, fold=10.0, seed=2)
    return dataset, state, query


@pytest.fixture(scope="module")
def overlap_setup(tmp_path_factory):
    """Overlapping types (weak markers) and a large holdout, for coverage."""
    reference = make_counts(4000, 4, fold=3.0, library=8.0, seed=3)
    dataset, state = _fit(
        tmp_path_factory.mktemp("overlap") / "ref.zarr", reference, 4, holdout_fraction=0.5
    )
    query = make_counts(6000, 4, fold=3.0, library=8.0, seed=4)
    return dataset, state, query


def test_novelty_ranks_an_unseen_type_above_known_types(novel_setup):
    _, state, query = novel_setup
    gs.tl.classify(query, state)
    novelty = query.obs["ginseng_novelty"]
    assert novelty.dtype == np.float32
    novel = (query.obs["cell_type"] == "type_4").to_numpy()
    auroc = roc_auc_score(novel, novelty.to_numpy())
    auroc_conf = roc_auc_score(novel, 1 - query.obs["ginseng_confidence"].to_numpy())
    assert auroc >= 0.95
    assert auroc > auroc_conf
    # Not a function of the confidence: the rankings differ.
    rho = pd.Series(novelty.to_numpy()).corr(
        pd.Series(1 - query.obs["ginseng_confidence"].to_numpy()), method="spearman"
    )
    assert rho < 0.95


def test_novelty_threshold_is_a_reference_quantile(novel_setup):
    dataset, state, query = novel_setup
    q = 0.95
    table = gs.tl.classify(query, state, novelty_threshold=q, return_table=True)
    labels = table["ginseng_cell_type"].astype(str).to_numpy()
    novel = (query.obs["cell_type"] == "type_4").to_numpy()
    assert (labels[novel] == "Novel").mean() >= 0.9
    # Known query cells come from the reference's law: about 1 - q of them exceed the
    # holdout's q-quantile. The quantile's exceedance is Beta-distributed over the
    # holdout draw (sd ~ sqrt(q(1-q)/n_holdout)), the share of query cells binomial.
    n_hold = dataset.splits["test"].size
    known = ~novel
    sd = math.sqrt(q * (1 - q) / n_hold) + math.sqrt(q * (1 - q) / known.sum())
    flagged = (labels[known] == "Novel").mean()
    assert abs(flagged - (1 - q)) <= 4 * sd
    cutoff = state.uncertainty.novelty_cutoff(q)
    np.testing.assert_array_equal(labels == "Novel", table["ginseng_novelty"].to_numpy() > cutoff)


@pytest.mark.parametrize("fit_rows", [7, 100_000])
def test_novelty_fit_in_blocks_equals_the_whole_computation(monkeypatch, fit_rows):
    """Blocks of FIT_ROWS rows (the last one short) give numpy's means and pooled covariance."""
    from ginseng.model import novelty

    monkeypatch.setattr(novelty, "FIT_ROWS", fit_rows)
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 50)  # label 3 has no cells: its mean stays NaN
    hidden = (rng.normal(size=(50, 4)) + 2.0 * y[:, None]).astype(np.float32)
    means_w, whiten = novelty.fit_novelty(hidden, y, 4)
    h = hidden.astype(np.float64)
    means = np.stack([h[y == k].mean(axis=0) for k in range(3)])
    centred = h - means[y]
    cov = centred.T @ centred / (len(h) - 1)
    cov += 1e-3 * np.trace(cov) / 4 * np.eye(4)
    w = whiten.astype(np.float64)
    np.testing.assert_allclose(w @ w.T, np.linalg.inv(cov), rtol=1e-5)
    np.testing.assert_allclose(means_w[:3] @ np.linalg.inv(w), means, rtol=1e-5, atol=1e-5)
    assert np.isnan(means_w[3]).all()


def test_novelty_is_the_mahalanobis_distance_fitted_on_training_cells(novel_setup):
    dataset, state, query = novel_setup
    unc = state.uncertainty
    # Independent fit: hidden layer of the store's training cells, numpy means and
    # pooled covariance (with the documented ridge).
    xs, ys = zip(*dataset.stream(256, "train", shuffle=False, drop_last=False), strict=True)
    hidden, _ = state.predict_hidden_logits(np.concatenate(xs))
    y = np.concatenate(ys)
    means = np.stack([hidden[y == k].mean(axis=0) for k in range(state.n_labels)])
    centred = hidden - means[y]
    cov = centred.T @ centred / (len(hidden) - 1)
    cov += 1e-3 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    precision = np.linalg.inv(cov)
    whiten = unc.novelty_whiten.astype(np.float64)
    np.testing.assert_allclose(whiten @ whiten.T, precision, rtol=2e-3, atol=2e-3 * precision.max())
    np.testing.assert_allclose(
        unc.novelty_means @ np.linalg.inv(whiten), means, atol=2e-4 * np.abs(means).max() + 1e-5
    )
    gs.tl.classify(query, state)
    h_query, _ = state.predict_hidden_logits(query.X)
    expected = [
        min(mahalanobis(h, m, precision) for m in means) for h in h_query[:200].astype(np.float64)
    ]
    np.testing.assert_allclose(query.obs["ginseng_novelty"].to_numpy()[:200], expected, rtol=2e-3)


def test_conformal_scores_are_the_holdout_nonconformity(overlap_setup):
    dataset, state, _ = overlap_setup
    xs, ys = zip(*dataset.stream(512, "test", shuffle=False, drop_last=False), strict=True)
    proba = state.predict_proba(np.concatenate(xs))
    y = np.concatenate(ys)
    unc = state.uncertainty
    for k in range(state.n_labels):
        expected = np.sort(1 - proba[y == k, k])
        stored = unc.conformal_scores[unc.conformal_offsets[k] : unc.conformal_offsets[k + 1]]
        np.testing.assert_allclose(stored, expected, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_prediction_sets_cover_every_label(overlap_setup, alpha):
    _, state, query = overlap_setup
    gs.tl.classify(query, state, prediction_sets=alpha)
    sets = query.obs["ginseng_prediction_set"].astype(str).to_numpy()
    sizes = query.obs["ginseng_prediction_set_size"].to_numpy()
    truth = query.obs["cell_type"].astype(str).to_numpy()
    predicted = query.obs["ginseng_cell_type"].astype(str).to_numpy()
    members = [s.split("|") if s else [] for s in sets]
    assert query.obs["ginseng_prediction_set_size"].dtype == np.int32
    np.testing.assert_array_equal(sizes, [len(m) for m in members])
    assert (sizes > 1).mean() > 0.05  # overlapping types: the sets are not trivial
    assert np.mean([p in m for p, m in zip(predicted, members, strict=True)]) > 0.9
    covered = np.array([t in m for t, m in zip(truth, members, strict=True)])
    var = alpha * (1 - alpha)
    n_cal = state.uncertainty.n_calibration
    for k, label in enumerate(state.labels):
        mine = truth == label
        # Coverage given the calibration draw is Beta((n+1)(1-alpha), ...): its sd and
        # the query's binomial sd make the tolerance.
        tol = 3.5 * math.sqrt(var / mine.sum() + var / (n_cal[k] + 2))
        assert covered[mine].mean() >= 1 - alpha - tol, label
        assert covered[mine].mean() <= 1 - alpha + 1 / (n_cal[k] + 1) + tol, label
    # The thresholds are the ceil((n + 1)(1 - alpha))-th smallest holdout score of
    # each label (checked against the holdout in the test above).
    record = query.uns["ginseng"]["classify"]["uncertainty"]["prediction_sets"]
    unc = state.uncertainty
    for k in range(state.n_labels):
        scores = np.sort(
            unc.conformal_scores[unc.conformal_offsets[k] : unc.conformal_offsets[k + 1]]
        )
        rank = math.ceil((scores.size + 1) * (1 - alpha))
        expected = scores[rank - 1] if rank <= scores.size else 1.0
        assert record["thresholds"][k] == pytest.approx(float(expected))
    # The sets follow from the probabilities and the recorded thresholds.
    proba = query.obsm["ginseng_probabilities"]
    inside = (1 - proba.astype(np.float64)) <= np.asarray(record["thresholds"])[None, :]
    rebuilt = ["|".join(state.labels[row]) for row in inside]
    np.testing.assert_array_equal(sets, rebuilt)


def test_sets_hold_the_predicted_label_when_its_threshold_allows(overlap_setup, tmp_path):
    _, state, query = overlap_setup
    adata = query.copy()
    # alpha = 0.5: about half the cells of each label are covered, so many sets are empty.
    gs.tl.classify(adata, state, prediction_sets=0.5)
    obs = adata.obs
    sets = obs["ginseng_prediction_set"].astype(str).to_numpy()
    predicted = obs["ginseng_cell_type"].astype(str).to_numpy()
    thresholds = np.asarray(
        adata.uns["ginseng"]["classify"]["uncertainty"]["prediction_sets"]["thresholds"]
    )
    codes = np.searchsorted(state.labels, predicted)  # labels are sorted here
    allowed = 1 - obs["ginseng_confidence"].to_numpy(np.float64) <= thresholds[codes]
    inside = np.array([p in s.split("|") for p, s in zip(predicted, sets, strict=True)])
    np.testing.assert_array_equal(inside, allowed)
    empty = obs["ginseng_prediction_set_size"].to_numpy() == 0
    assert 0.05 < empty.mean() < 0.95
    assert (sets[empty] == "").all()
    adata.write_h5ad(tmp_path / "sets.h5ad")
    back = ad.read_h5ad(tmp_path / "sets.h5ad")
    np.testing.assert_array_equal(back.obs["ginseng_prediction_set"].astype(str), sets)
    # One threshold shared by all labels (every label pooled): a non-empty set always
    # holds the most probable label.
    n = state.uncertainty.n_calibration
    table = gs.tl.classify(query, state, prediction_sets=0.9 / (n.max() + 1), return_table=True)
    shared = table["ginseng_prediction_set"].astype(str)
    top = table["ginseng_cell_type"].astype(str)
    assert all(t in s.split("|") for t, s in zip(top, shared, strict=True) if s)


def test_labels_with_too_few_calibration_cells_use_the_pooled_threshold(overlap_setup, caplog):
    _, state, query = overlap_setup
    unc = state.uncertainty
    n = unc.n_calibration
    # Below 1 / (n_k + 1) for every label, above 1 / (N + 1) for all cells pooled.
    alpha = 0.9 / (n.max() + 1)
    with caplog.at_level("WARNING", logger="ginseng"):
        gs.tl.classify(query[:50].copy(), state, prediction_sets=alpha)
    assert "pooled over all labels" in caplog.text
    pooled = np.sort(unc.conformal_scores)
    expected = pooled[math.ceil((pooled.size + 1) * (1 - alpha)) - 1]
    np.testing.assert_allclose(unc.thresholds(alpha), expected)
    # Below 1 / (N + 1) even the pooled threshold is infinite: every label in every set.
    tiny = 0.5 / (n.sum() + 1)
    with caplog.at_level("WARNING", logger="ginseng"):
        table = gs.tl.classify(query[:50], state, prediction_sets=tiny, return_table=True)
    assert (table["ginseng_prediction_set_size"] == state.n_labels).all()
    assert "enter every set" in caplog.text


def test_outputs_round_trip_h5ad_and_results_table(novel_setup, tmp_path):
    _, state, query = novel_setup
    adata = query.copy()
    gs.tl.classify(adata, state, novelty_threshold=0.99, prediction_sets=0.1)
    table = gs.tl.results_table(adata)
    for column in ("ginseng_novelty", "ginseng_prediction_set", "ginseng_prediction_set_size"):
        assert column in table
    pd.testing.assert_frame_equal(
        table,
        gs.tl.classify(
            query, state, novelty_threshold=0.99, prediction_sets=0.1, return_table=True
        ),
    )
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    # A later run without sets drops the stale set columns.
    gs.tl.classify(adata, state)
    assert "ginseng_prediction_set" not in adata.obs
    assert "ginseng_novelty" in adata.obs


def test_model_file_round_trips_the_uncertainty(novel_setup, tmp_path):
    _, state, query = novel_setup
    loaded = load_model(save_model(state, tmp_path / "m.h5"))
    for name, value in state.uncertainty.arrays().items():
        np.testing.assert_array_equal(getattr(loaded.uncertainty, name), value)
    a = gs.tl.classify(query, state, prediction_sets=0.1, return_table=True)
    b = gs.tl.classify(query, loaded, prediction_sets=0.1, return_table=True)
    pd.testing.assert_frame_equal(a, b)


def test_old_model_files_without_uncertainty_still_classify(novel_setup, tmp_path):
    _, state, query = novel_setup
    path = save_model(state, tmp_path / "old.h5")
    with h5py.File(path, "r+") as f:
        del f["uncertainty"]
    old = load_model(path)
    assert old.uncertainty is None
    table = gs.tl.classify(query, old, return_table=True)
    assert "ginseng_novelty" not in table
    new = gs.tl.classify(query, state, return_table=True)
    pd.testing.assert_series_equal(table["ginseng_cell_type"], new["ginseng_cell_type"])
    for option in ({"novelty_threshold": 0.99}, {"prediction_sets": 0.1}):
        with pytest.raises(InputError, match=next(iter(option))):
            gs.tl.classify(query, old, **option)


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("conformal_offsets", lambda v: v[::-1]),
        ("novelty_quantiles", lambda v: v[::-1] + 1),
        ("novelty_means", lambda v: v[:, :-1]),
        ("conformal_scores", lambda v: v + 2),
    ],
)
def test_damaged_uncertainty_is_refused(novel_setup, tmp_path, name, corrupt):
    _, state, _ = novel_setup
    path = save_model(state, tmp_path / "bad.h5")
    with h5py.File(path, "r+") as f:
        value = f[f"uncertainty/{name}"][()]
        del f[f"uncertainty/{name}"]
        f[f"uncertainty/{name}"] = corrupt(value)
    with pytest.raises(ModelFormatError, match="uncertainty"):
        load_model(path)


@pytest.mark.parametrize(
    "option", [{"novelty_threshold": 1.0}, {"novelty_threshold": -0.1}, {"prediction_sets": 0}]
)
def test_out_of_range_options_are_refused(novel_setup, option):
    _, state, query = novel_setup
    with pytest.raises(InputError, match=next(iter(option))):
        gs.tl.classify(query[:10], state, **option)


def test_dask_path_gives_the_same_novelty_and_sets(novel_setup):
    da = pytest.importorskip("dask.array")
    _, state, query = novel_setup
    options = {"novelty_threshold": 0.95, "prediction_sets": 0.1, "majority_vote_key": "cell_type"}
    # The same dense blocks of 400 rows in both paths, so the same compiled shapes.
    dense = ad.AnnData(X=query.X.toarray(), obs=query.obs.copy(), var=query.var)
    serial = gs.tl.classify(dense, state, return_table=True, batch_size=400, **options)
    lazy = ad.AnnData(X=da.from_array(dense.X, chunks=(400, -1)), obs=dense.obs, var=dense.var)
    dask_table = gs.tl.classify(lazy, state, return_table=True, **options)
    pd.testing.assert_frame_equal(serial, dask_table, check_exact=False, rtol=1e-5)


def test_a_cells_novelty_does_not_depend_on_its_block(novel_setup):
    """Scored alone, in short blocks or with every cell, a cell gets the same score.

    Fails when short blocks are not padded: BLAS rounds a product of one or a few rows
    differently (in the last bit of the float32 score).
    """
    from ginseng.model.novelty import novelty_scores

    _, state, _ = novel_setup
    rng = np.random.default_rng(5)
    hidden = rng.normal(size=(300, state.config["hidden_dim"])).astype(np.float32)
    whole = novelty_scores(hidden, state.uncertainty)
    for block in (1, 2, 7, 127, 128, 150):  # 150: two unpadded blocks against one call
        parts = [
            novelty_scores(hidden[i : i + block], state.uncertainty) for i in range(0, 300, block)
        ]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert novelty_scores(hidden[:0], state.uncertainty).shape == (0,)
