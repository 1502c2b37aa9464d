"""Label hierarchies: the tree's checks, the top-down path against a brute-force walk,
back-off, and gs.tl.train / gs.tl.classify / model files with a hierarchy."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

import ginseng as gs
from ginseng import InputError
from ginseng.data.io import load_model, save_model
from ginseng.model.hierarchy import Hierarchy, back_off

LABELS = ["CD4 T", "CD8 T", "NK", "B", "Mono"]
PARENTS = {"CD4 T": "T", "CD8 T": "T", "T": "Lymphoid", "NK": "Lymphoid", "B": "Lymphoid"}
# toy labels type_0..type_3 under two coarse groups, under one root
TOY_COARSE = {"type_0": "AB", "type_1": "AB", "type_2": "CD", "type_3": "CD"}


def _obs(rows):
    return pd.DataFrame(rows, columns=["lineage", "major", "label"])


def test_from_mapping_aligns_branches_at_the_root():
    h = Hierarchy.from_mapping(PARENTS, LABELS, "label")
    assert h.levels == ("level_0", "level_1", "label")
    paths = {row[-1]: list(row) for row in h.paths}
    assert paths["CD4 T"] == ["Lymphoid", "T", "CD4 T"]
    assert paths["NK"] == ["Lymphoid", "NK", "NK"]  # a short branch repeats its label
    assert paths["Mono"] == ["Mono", "Mono", "Mono"]  # no parent: its own root
    assert list(h.names[: len(LABELS)]) == LABELS  # labels first, in model order
    assert set(h.names) == {*LABELS, "T", "Lymphoid"}


def test_from_columns_and_its_refusals():
    obs = _obs(
        [
            ["Lymphoid", "T", "CD4 T"],
            ["Lymphoid", "T", "CD8 T"],
            ["Lymphoid", "T", "CD4 T"],
            ["Myeloid", "Mono", "Mono"],
        ]
    )
    h = Hierarchy.from_columns(obs, ["lineage", "major"], "label", ["CD4 T", "CD8 T", "Mono"])
    assert h.levels == ("lineage", "major", "label")
    # The same with label_key given last.
    again = Hierarchy.from_columns(obs, ["lineage", "major", "label"], "label", ["Mono", "CD4 T"])
    assert [list(r) for r in again.paths] == [
        ["Myeloid", "Mono", "Mono"],
        ["Lymphoid", "T", "CD4 T"],
    ]

    two_parents = obs.copy()
    two_parents.loc[2, "major"] = "NK"
    with pytest.raises(InputError, match=r"'CD4 T' have 2 values in obs\['major'\]"):
        Hierarchy.from_columns(two_parents, ["lineage", "major"], "label", ["CD4 T", "Mono"])
    missing = obs.copy()
    missing.loc[3, "lineage"] = None
    with pytest.raises(InputError, match="missing for cells labelled 'Mono'"):
        Hierarchy.from_columns(missing, ["lineage"], "label", ["CD4 T", "Mono"])
    with pytest.raises(InputError, match="'tissue'"):
        Hierarchy.from_columns(obs, ["tissue"], "label", ["CD4 T"])
    with pytest.raises(InputError, match="no level coarser"):
        Hierarchy.from_columns(obs, ["label"], "label", ["CD4 T"])


def test_inconsistent_trees_are_refused():
    # "T" under two lineages: a node with two parents.
    with pytest.raises(InputError, match="'T' at level 'major' has two parents"):
        Hierarchy(
            ("lineage", "major", "label"),
            np.array([["Lymphoid", "T", "CD4 T"], ["Myeloid", "T", "CD8 T"]], dtype=object),
        )
    # A name used at two levels for different branches.
    with pytest.raises(InputError, match="'B' is a node at level 'lineage'"):
        Hierarchy(("lineage", "label"), np.array([["B", "x"], ["A", "B"]], dtype=object))
    with pytest.raises(InputError, match="cycle"):
        Hierarchy.from_mapping({"CD4 T": "T", "T": "CD4 T"}, ["CD4 T"], "label")
    with pytest.raises(InputError, match="none of the model's labels a parent"):
        Hierarchy.from_mapping({"x": "y"}, LABELS, "label")
    with pytest.raises(InputError, match="list of obs columns"):
        Hierarchy.build("lineage", obs=pd.DataFrame(), label_key="label", labels=LABELS)


def _brute_force(h: Hierarchy, p: np.ndarray):
    """Walk the tree cell by cell with python sets: the independent truth."""
    names, conf = [], []
    for row in p:
        under = set(range(len(h.paths)))  # labels in the chosen branch
        chosen, probs = [], []
        for k in range(h.n_levels):
            totals: dict[str, float] = {}
            for i in sorted(under):
                totals[h.paths[i, k]] = totals.get(h.paths[i, k], 0.0) + float(row[i])
            best = max(totals, key=lambda n: totals[n])
            chosen.append(best)
            probs.append(totals[best])
            under = {i for i in under if h.paths[i, k] == best}
        names.append(chosen)
        conf.append(probs)
    return np.array(names, dtype=object), np.array(conf)


def test_level_calls_follow_the_tree_and_sum_the_probabilities():
    h = Hierarchy.from_mapping(PARENTS, LABELS, "label")
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(len(LABELS), 0.5), size=300).astype(np.float32)
    codes, conf = h.level_calls(p)
    names = np.asarray(h.names, dtype=object)[codes]
    truth_names, truth_conf = _brute_force(h, p)
    np.testing.assert_array_equal(names, truth_names)
    np.testing.assert_allclose(conf, truth_conf, rtol=1e-5, atol=1e-6)
    # Consistent: every node is on its finest label's path; probabilities only decrease.
    paths = {tuple(r) for r in h.paths}
    assert {tuple(r) for r in names} <= paths
    assert np.all(np.diff(conf, axis=1) <= 1e-6)
    # The top-down path can end elsewhere than the flat arg-max: the T branch wins on
    # the sum while NK is the single most probable label.
    p1 = np.array([[0.3, 0.3, 0.35, 0.05, 0.0]], np.float32)
    c1, _ = h.level_calls(p1)
    assert [h.names[c] for c in c1[0]] == ["Lymphoid", "T", "CD4 T"]


def test_back_off_keeps_the_deepest_passing_level():
    codes = np.array([[10, 11, 0], [10, 11, 1], [12, 12, 4]], np.int32)
    conf = np.array([[0.99, 0.95, 0.9], [0.99, 0.8, 0.6], [0.5, 0.5, 0.5]], np.float32)
    call, call_conf, depth = back_off(codes, conf, 0.9)
    np.testing.assert_array_equal(call, [0, 10, -1])
    np.testing.assert_array_equal(depth, [2, 0, -1])
    np.testing.assert_allclose(call_conf, [0.9, 0.99, 0.5])
    call, _, depth = back_off(codes, conf, None)
    np.testing.assert_array_equal(call, [0, 1, 4])


def _nested_counts(n_cells=800, n_genes=60, seed=5):
    """Poisson counts where groups AB and CD differ strongly (10 markers at 8x) and the
    types within a group weakly (5 markers at 1.6x): fine calls are uncertain for some
    cells, coarse ones are not."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    types = rng.integers(0, 4, n_cells)
    profile = np.tile(rng.gamma(2.0, 1.0, n_genes), (4, 1))
    profile[:2, :10] *= 8
    profile[2:, 10:20] *= 8
    for t in range(4):
        profile[t, 20 + 5 * t : 25 + 5 * t] *= 1.6
    profile /= profile.sum(axis=1, keepdims=True)
    X = rng.poisson(profile[types] * rng.lognormal(np.log(600), 0.3, n_cells)[:, None])
    labels = np.array([f"type_{t}" for t in types])
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(labels),
            "group": pd.Categorical([TOY_COARSE[x] for x in labels]),
            "root": "all",
            "batch": pd.Categorical(rng.choice(["b1", "b2", "b3"], n_cells)),
        },
        index=[f"c{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    return ad.AnnData(sp.csr_matrix(X.astype(np.float32)), obs=obs, var=var)


@pytest.fixture(scope="module")
def toy_tree():
    """A model trained with the hierarchy given as obs columns."""
    adata = _nested_counts()
    state = gs.tl.train(
        adata,
        "cell_type",
        hierarchy=["root", "group"],
        epochs=4,
        seed=0,
        n_top_genes=None,
        hidden_dim=16,
        batch_size=32,
        upper=10,
    )
    return adata, state


def test_train_stores_the_hierarchy_and_the_file_keeps_it(toy_tree, tmp_path):
    adata, state = toy_tree
    assert state.hierarchy.levels == ("root", "group", "cell_type")
    assert [r[-1] for r in state.hierarchy.paths] == list(state.labels)
    assert adata.uns["ginseng"]["train"]["params"]["hierarchy"] == ["root", "group", "cell_type"]
    assert "hierarchy: root (1) > group (2) > cell_type (4)" in repr(state)
    loaded = load_model(save_model(state, tmp_path / "m.h5"))
    assert loaded.hierarchy == state.hierarchy
    # A damaged hierarchy is a ModelFormatError naming the part.
    import h5py

    with h5py.File(tmp_path / "m.h5", "r+") as f:
        del f["hierarchy"]
        f["hierarchy"] = '{"levels": ["a", "b"], "paths": [["x", "nope"]]}'
    with pytest.raises(gs.ModelFormatError, match="hierarchy"):
        load_model(tmp_path / "m.h5")


def test_train_refuses_an_inconsistent_hierarchy_before_training(make_toy):
    adata = make_toy(n_cells=200, seed=1)
    adata.obs["group"] = np.where(np.arange(adata.n_obs) % 2, "x", "y")  # type_0 in both
    with pytest.raises(InputError, match=r"values in obs\['group'\]"):
        gs.tl.train(adata, "cell_type", hierarchy=["group"], epochs=1)
    with pytest.raises(InputError, match="'lineage'"):
        gs.tl.train(adata, "cell_type", hierarchy=["lineage"], epochs=1)


def _check_consistent(table, state, threshold):
    """Each row's level columns follow one path of the tree down to the call."""
    h = state.hierarchy
    level_cols = [f"ginseng_cell_type_{name}" for name in h.levels]
    conf_cols = [f"ginseng_confidence_{name}" for name in h.levels]
    paths = [list(map(str, r)) for r in h.paths]
    values = table[level_cols].astype(str).to_numpy()
    conf = table[conf_cols].to_numpy()
    for row, probs, call, call_conf in zip(
        values,
        conf,
        table["ginseng_cell_type"].astype(str),
        table["ginseng_confidence"],
        strict=True,
    ):
        assigned = [v for v in row if v != "Unassigned"]
        # Assigned levels are a prefix, and a prefix of some label's path.
        assert list(row[: len(assigned)]) == assigned
        assert any(p[: len(assigned)] == assigned for p in paths)
        if threshold is not None:
            assert np.all(probs[: len(assigned)] >= threshold)
            assert np.all(probs[len(assigned) :] < threshold)
        if assigned:
            assert call == assigned[-1] and call_conf == pytest.approx(probs[len(assigned) - 1])
        else:
            assert call == "Unassigned"
    # Each level's probability is the sum of the label probabilities under its node.
    labels = list(state.labels)
    proba = table[labels].to_numpy()
    for k in range(h.n_levels):
        members = np.array([[p[k] == v for p in paths] for v in table[level_cols[k]].astype(str)])
        under = np.where(values[:, k] != "Unassigned")[0]
        np.testing.assert_allclose(
            conf[under, k], (proba[under] * members[under]).sum(axis=1), rtol=1e-5, atol=1e-6
        )


def test_classify_writes_consistent_levels_and_backs_off(toy_tree):
    adata, state = toy_tree
    query = adata.copy()
    flat = gs.tl.classify(query, state, return_table=True)
    fine = flat["ginseng_confidence_cell_type"].to_numpy()
    # A threshold between the fine confidences, so that some cells back off.
    threshold = float(np.quantile(fine, 0.3))
    gs.tl.classify(query, state, unassigned_threshold=threshold)
    table = gs.tl.results_table(query)
    _check_consistent(table, state, threshold)
    backed_off = table["ginseng_cell_type"].isin(["AB", "CD", "all"]).sum()
    assert backed_off > 0
    # Fewer cells without any label than a flat threshold on the fine labels leaves.
    unassigned = (table["ginseng_cell_type"] == "Unassigned").sum()
    flat_unassigned = (table[list(state.labels)].max(axis=1) < threshold).sum()
    assert unassigned < flat_unassigned
    # Without a threshold every level is filled and the call is the finest node.
    _check_consistent(flat, state, None)
    assert set(flat["ginseng_cell_type"].astype(str)) <= set(state.labels)
    # Colours for every category, coarse names included.
    colors = query.uns["ginseng_cell_type_group_colors"]
    assert len(colors) == len(query.obs["ginseng_cell_type_group"].cat.categories)


def test_a_flat_model_removes_the_level_columns_of_an_earlier_run(toy_tree, toy_trained):
    adata, state = toy_tree
    query = adata.copy()
    gs.tl.classify(query, state)
    assert "ginseng_cell_type_group" in query.obs
    gs.tl.classify(query, toy_trained.state)
    assert not any(c.startswith("ginseng_cell_type_") for c in query.obs.columns)
    assert "ginseng_cell_type_group_colors" not in query.uns


def test_write_true_removes_an_earlier_runs_level_keys_from_the_file(
    toy_tree, toy_trained, tmp_path
):
    """The file ends up as the returned AnnData: no level columns or colours left over."""
    import anndata as ad

    adata, state = toy_tree
    for suffix, writer in ((".h5ad", ad.AnnData.write_h5ad), (".zarr", ad.AnnData.write_zarr)):
        path = tmp_path / f"query{suffix}"
        writer(adata, path)
        gs.tl.classify(path, state, write=True)
        first = ad.read_h5ad(path) if suffix == ".h5ad" else ad.read_zarr(path)
        assert "ginseng_cell_type_group_colors" in first.uns
        returned = gs.tl.classify(path, toy_trained.state, write=True)
        written = ad.read_h5ad(path) if suffix == ".h5ad" else ad.read_zarr(path)
        assert sorted(written.uns) == sorted(returned.uns), suffix
        levels = {f"ginseng_cell_type_{name}_colors" for name in state.hierarchy.levels}
        assert not levels & set(written.uns), suffix
        assert list(written.obs.columns) == list(returned.obs.columns), suffix


def test_a_hierarchy_attached_after_training_and_majority_vote(toy_trained):
    """A hierarchy is metadata over the labels: attach one to a trained model."""
    state = copy.copy(toy_trained.state)
    state.hierarchy = Hierarchy.from_mapping(TOY_COARSE, state.labels, "cell_type")
    query = toy_trained.adata.copy()
    gs.tl.classify(query, state, unassigned_threshold=0.99, majority_vote_key="batch")
    votes = query.obs["ginseng_majority_vote"].astype(str)
    assert set(votes) <= set(state.hierarchy.names) | {"Unassigned"}
    # Votes are over the backed-off calls: per batch, the most frequent call.
    counts = pd.crosstab(query.obs["batch"], query.obs["ginseng_cell_type"].astype(str))
    for batch, winner in zip(counts.index, counts.idxmax(axis=1), strict=True):
        assert (votes[query.obs["batch"] == batch] == winner).all()
