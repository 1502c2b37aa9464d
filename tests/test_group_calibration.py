"""Calibration on whole held-out groups: what it records, checked against a recomputation.

With ``group_level=True`` the holdout is made of whole groups (batches, donors), so the
temperature is fitted on groups the network never saw and the model card reports the
ECE on them (``metrics["ece_heldout_groups"]``). Here the temperature and that ECE are
recomputed independently (scipy's optimiser and a numpy ECE) from the model's
predictions on the held-out cells, read back through the store's split.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

import ginseng as gs
from ginseng.data import GinsengDataset

QUICK = {"hidden_dim": 16, "batch_size": 16, "upper": 5, "lr": 3e-3, "min_steps": 30}


@pytest.fixture
def toy(make_toy):
    """300 cells, 30 genes, 3 types, 6 batches of 50 cells."""
    adata = make_toy(n_cells=300, n_genes=30, n_types=3, seed=5)
    batches = np.repeat([f"b{i}" for i in range(6)], 50)
    adata.obs["batch"] = pd.Categorical(np.random.default_rng(5).permutation(batches))
    return adata


def _ece(proba, labels, n_bins=15):
    """Equal-width confidence bins, |accuracy - confidence| weighted by bin size."""
    conf, pred = proba.max(axis=1), proba.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(
                (pred[inside] == labels[inside]).mean() - conf[inside].mean()
            )
    return total


def test_group_level_calibrates_and_reports_on_held_out_groups(toy, tmp_path):
    store = tmp_path / "s.zarr"
    state = gs.tl.train(
        toy, "cell_type", group_key="batch", group_level=True, group_mode="groups",
        holdout_fraction=0.34, epochs=2, store=store, **QUICK,
    )  # fmt: skip
    m = state.metrics
    ds = GinsengDataset(store)
    rows = ds.cell_index[ds.splits["test"]]
    batch = toy.obs["batch"].astype(str).to_numpy()
    held = sorted(set(batch[rows]))
    assert m["holdout_split"] == "groups"
    assert m["heldout_groups"] == held and m["n_heldout_groups"] == len(held) == 2
    assert not set(held) & set(batch[ds.cell_index[ds.splits["train"]]])

    # Recompute: logits of the held-out cells, the NLL-optimal temperature, the ECE.
    logits = state.predict_logits(toy[rows, state.genes].X).astype(np.float64)
    truth = pd.Index(state.labels).get_indexer(toy.obs["cell_type"].astype(str).to_numpy()[rows])

    def nll(log_t):
        return -log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(truth)), truth].mean()

    t = float(np.exp(minimize_scalar(nll, bounds=(-4.6, 4.6), method="bounded").x))
    assert state.temperature == pytest.approx(t, rel=1e-2)
    ece = _ece(softmax(logits / state.temperature, axis=1), truth)
    assert m["ece_heldout_groups"] == pytest.approx(ece, abs=2e-3)
    assert m["ece_heldout_groups"] == m["ece"]
    assert "2 held-out group(s)" in repr(state)

    # The record survives the model file.
    path = tmp_path / "model.h5"
    from ginseng.model import load_model, save_model

    save_model(state, path)
    loaded = load_model(path)
    assert loaded.metrics["ece_heldout_groups"] == m["ece_heldout_groups"]
    assert loaded.metrics["heldout_groups"] == held


def test_random_cell_holdout_says_so_and_reports_no_group_ece(toy):
    state = gs.tl.train(toy, "cell_type", group_key="batch", epochs=1, **QUICK)
    assert state.metrics["holdout_split"] == "cells"
    assert "ece_heldout_groups" not in state.metrics
    assert "held-out group" not in repr(state)
