"""gs.tl.classify(labels=...): calls restricted to some labels, probabilities renormalised."""

from __future__ import annotations

import numpy as np
import pytest

import ginseng as gs
from ginseng import InputError


def test_restricted_probabilities_are_the_full_ones_renormalised(toy_trained):
    adata, state = toy_trained.adata, toy_trained.state
    keep = ["type_0", "type_2"]
    full = gs.tl.classify(adata, state, return_table=True)
    table = gs.tl.classify(adata, state, labels=keep, return_table=True)
    proba = full[list(state.labels)].to_numpy(np.float64)
    expected = proba[:, [list(state.labels).index(k) for k in keep]]
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(table[keep].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    assert not {"type_1", "type_3"} & set(table.columns)
    assert set(table["ginseng_cell_type"].astype(str)) <= set(keep)
    # Cells of a dropped type are unlike every kept label: higher novelty.
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    dropped = ~np.isin(truth, keep)
    novelty = table["ginseng_novelty"].to_numpy()
    assert np.median(novelty[dropped]) > np.median(novelty[~dropped])
    assert np.median(novelty[dropped]) > np.median(full["ginseng_novelty"].to_numpy()[dropped])


def test_restriction_is_recorded_and_keeps_sets_and_the_model(toy_trained):
    adata, state = toy_trained.adata.copy(), toy_trained.state
    gs.tl.classify(adata, state, labels=["type_3", "type_1"], prediction_sets=0.1)
    record = adata.uns["ginseng"]["classify"]
    assert record["labels"] == ["type_1", "type_3"]  # model order
    assert record["params"]["labels"] == ["type_3", "type_1"]
    assert adata.obsm["ginseng_probabilities"].shape == (adata.n_obs, 2)
    sets = adata.obs["ginseng_prediction_set"].astype(str)
    assert set("|".join(sets).split("|")) - {""} <= {"type_1", "type_3"}
    assert state.n_labels == 4  # the model passed in is left as it was


def test_bad_labels_are_refused(toy_trained):
    adata, state = toy_trained.adata, toy_trained.state
    with pytest.raises(InputError, match=r"lacks: \['type_9'\]"):
        gs.tl.classify(adata, state, labels=["type_0", "type_9"], return_table=True)
    with pytest.raises(InputError, match="at least two"):
        gs.tl.classify(adata, state, labels=["type_0"], return_table=True)
    with pytest.raises(InputError, match="list of label names"):
        gs.tl.classify(adata, state, labels="type_0", return_table=True)
