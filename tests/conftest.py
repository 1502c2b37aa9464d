"""Shared fixtures: small well-separated count data and one trained model per session."""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import ginseng as gs


def make_toy_adata(n_cells=600, n_genes=50, n_types=4, seed=0, sparse=True) -> ad.AnnData:
    """Poisson counts where each type has 5 marker genes at 10x, and 4 batches."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_types, n_cells)
    profile = rng.gamma(2.0, 1.0, (n_types, n_genes))
    for t in range(n_types):
        profile[t, 5 * t : 5 * t + 5] *= 10
    profile /= profile.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(800), 0.3, n_cells)
    X = rng.poisson(profile[labels] * library[:, None]).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type_{t}" for t in labels]),
            "batch": pd.Categorical(rng.choice(["b1", "b2", "b3", "b4"], n_cells)),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    return ad.AnnData(sp.csr_matrix(X) if sparse else X, obs=obs, var=var)


@pytest.fixture(autouse=True)
def _no_progress_bars():
    """Progress bars off in every test (they would only clutter captured output)."""
    before = gs.settings.progress_bar
    gs.settings.progress_bar = False
    yield
    gs.settings.progress_bar = before


# Small and quick, yet enough steps to separate the toy types.
TOY_SETTINGS = {"hidden_dim": 32, "batch_size": 32, "upper": 10, "seed": 0}
TOY_EPOCHS = 8


@dataclass
class Trained:
    adata: ad.AnnData
    dataset: object
    model: object
    state: object
    settings: object


@pytest.fixture(scope="session")
def toy_trained(tmp_path_factory) -> Trained:
    """One model trained on the toy data, shared by the model, train and file tests."""
    from ginseng.data import GinsengDataset
    from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings

    before = gs.settings.progress_bar
    gs.settings.progress_bar = False
    adata = make_toy_adata()
    path = tmp_path_factory.mktemp("toy") / "toy.zarr"
    dataset = GinsengDataset.create(path, adata, "cell_type", group_key="batch")
    settings = GinsengClassifierTrainerSettings(**TOY_SETTINGS)
    model, state = GinsengClassifierTrainer(dataset, settings).fit(TOY_EPOCHS)
    gs.settings.progress_bar = before
    return Trained(adata, dataset, model, state, settings)


@pytest.fixture(scope="session")
def toy_trained_standardized(toy_trained) -> Trained:
    """The toy model again with per-gene standardisation (not the default any more)."""
    from ginseng.train import GinsengClassifierTrainer

    before = gs.settings.progress_bar
    gs.settings.progress_bar = False
    settings = toy_trained.settings.replace(standardize=True)
    model, state = GinsengClassifierTrainer(toy_trained.dataset, settings).fit(TOY_EPOCHS)
    gs.settings.progress_bar = before
    return Trained(toy_trained.adata, toy_trained.dataset, model, state, settings)


@pytest.fixture(scope="session")
def make_toy():
    """The toy data generator, for tests that need their own copy or size."""
    return make_toy_adata
