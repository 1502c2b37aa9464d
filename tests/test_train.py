"""GinsengClassifierTrainer and gs.tl.train on small synthetic stores."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import ginseng as gs
from ginseng import InputError
from ginseng.data import GinsengDataset
from ginseng.model import GinsengModelState
from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings

QUICK = {"hidden_dim": 16, "batch_size": 16, "upper": 5, "lr": 3e-3, "min_steps": 100}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, make_toy):
    adata = make_toy(n_cells=300, n_genes=30, n_types=3, seed=5)
    return GinsengDataset.create(tmp_path_factory.mktemp("small") / "s.zarr", adata, "cell_type")


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
    assert not state.config["standardize"] and "gene_mean" in state.params


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

    adata = make_toy(n_cells=300, n_genes=30, n_types=3, seed=1)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    state = gs.tl.train(adata, "cell_type", layer="counts", epochs=5, **QUICK)
    assert adata.uns["ginseng"]["train"]["params"]["layer"] == "counts"
    assert "log1p" in adata.uns  # scanpy's entry untouched
    _check_uns(adata, tmp_path)
    pred = state.predict(adata.layers["counts"])
    assert (pred == adata.obs["cell_type"].to_numpy()).mean() > 0.9


def test_tl_train_rejects_unknown_settings(make_toy):
    adata = make_toy(n_cells=50, n_genes=10, n_types=2)
    with pytest.raises(InputError, match="hidden_size"):
        gs.tl.train(adata, "cell_type", hidden_size=3)
    with pytest.raises(InputError, match="settings"):
        gs.tl.train(adata, "cell_type", settings={"lr": 1.0})
    assert "ginseng" not in adata.uns
