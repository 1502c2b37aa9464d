"""gs.tl.train options: group_key (with and without group_level) and a boolean genes mask."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import ginseng as gs
from ginseng import InputError
from ginseng.data import GinsengDataset

QUICK = {"hidden_dim": 16, "batch_size": 16, "upper": 5, "lr": 3e-3, "min_steps": 30}


BATCH_SIZES = {"b1": 140, "b2": 70, "b3": 50, "b4": 40}


@pytest.fixture
def toy(make_toy):
    """300 cells, 30 genes, 3 types; batches of 140, 70, 50 and 40 cells in random order."""
    adata = make_toy(n_cells=300, n_genes=30, n_types=3, seed=4)
    batches = np.repeat(list(BATCH_SIZES), list(BATCH_SIZES.values()))
    adata.obs["batch"] = pd.Categorical(np.random.default_rng(4).permutation(batches))
    return adata


def _held_out_batches(adata, store) -> tuple[set, set, GinsengDataset]:
    """Batches of the held-out and training cells, read back through the AnnData's obs."""
    ds = GinsengDataset(store)
    batch = adata.obs["batch"].astype(str).to_numpy()
    test = batch[ds.cell_index[ds.splits["test"]]]
    train = batch[ds.cell_index[ds.splits["train"]]]
    return set(test), set(train), ds


# holdout_fraction=0.3 of 300 cells is 90 cells: "groups" holds out round(0.3 * 4) = 1
# group, "fraction" two (b3 + b4 make exactly 90; no single group comes closer than 20).
@pytest.mark.parametrize(("group_mode", "n_test_groups"), [("groups", 1), ("fraction", 2)])
def test_group_key_with_group_level_holds_out_whole_groups(
    toy, tmp_path, group_mode, n_test_groups
):
    store = tmp_path / "s.zarr"
    state = gs.tl.train(
        toy, "cell_type", group_key="batch", group_level=True, group_mode=group_mode,
        holdout_fraction=0.3, epochs=1, store=store, **QUICK,
    )  # fmt: skip
    test, train, ds = _held_out_batches(toy, store)
    assert not test & train and test | train == {"b1", "b2", "b3", "b4"}
    assert len(test) == n_test_groups
    # Every cell of a held-out batch is held out, and nothing else.
    expected = sum(BATCH_SIZES[b] for b in test)
    assert ds.splits["test"].size == state.provenance["n_holdout"] == expected
    assert state.metrics["n_cells"] == expected
    params = toy.uns["ginseng"]["train"]["params"]
    assert params["group_key"] == "batch" and params["settings"]["group_level"] is True


def test_group_key_without_group_level_holds_out_cells(toy, tmp_path):
    store = tmp_path / "s.zarr"
    gs.tl.train(toy, "cell_type", group_key="batch", epochs=1, store=store, **QUICK)
    test, train, ds = _held_out_batches(toy, store)
    assert ds.has_groups and sorted(ds.group_names) == ["b1", "b2", "b3", "b4"]
    # A cell-level (label-stratified) split: every batch is on both sides.
    assert test == train == {"b1", "b2", "b3", "b4"}
    labels = toy.obs["cell_type"].astype(str).to_numpy()
    held = labels[ds.cell_index[ds.splits["test"]]]
    for label in np.unique(labels):  # each label keeps about its share in the holdout
        share = (held == label).mean()
        assert abs(share - (labels == label).mean()) < 0.05


def test_group_level_needs_a_group_key(toy):
    with pytest.raises(InputError, match="group_key"):
        gs.tl.train(toy, "cell_type", group_level=True, epochs=1, **QUICK)
    with pytest.raises(InputError, match=r"group_key='donor' is not a column of adata\.obs"):
        gs.tl.train(toy, "cell_type", group_key="donor", epochs=1, **QUICK)
    assert "ginseng" not in toy.uns


def test_boolean_genes_mask_trains_on_those_genes_in_var_order(toy):
    rng = np.random.default_rng(1)
    mask = rng.random(toy.n_vars) < 0.5
    by_mask = gs.tl.train(toy, "cell_type", genes=mask, epochs=1, **QUICK)
    names = list(toy.var_names[mask])
    assert list(by_mask.genes) == names and by_mask.n_genes == int(mask.sum())
    # The same genes named in another order train the same model (same seed).
    by_name = gs.tl.train(toy, "cell_type", genes=names[::-1], epochs=1, **QUICK)
    assert list(by_name.genes) == names
    assert by_mask.params.keys() == by_name.params.keys()
    for key in by_mask.params:
        np.testing.assert_array_equal(by_mask.params[key], by_name.params[key])


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (np.ones(29, dtype=bool), r"one entry per gene \(30\), got shape \(29,\)"),
        (np.zeros(30, dtype=bool), "selects 0 genes"),
    ],
)
def test_bad_boolean_genes_mask(toy, mask, match):
    with pytest.raises(InputError, match=match):
        gs.tl.train(toy, "cell_type", genes=mask, epochs=1, **QUICK)
    assert "ginseng" not in toy.uns
