"""classify's output fed to scanpy's own grouping functions, as a user would next.

scanpy expects every category of a grouping column to hold cells: an empty category
makes ``rank_genes_groups``, ``dotplot`` and ``dendrogram`` fail. These tests annotate
queries that hold only some of the model's cell types, so that some labels are never
predicted, and call scanpy on the result.
"""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc

import ginseng as gs

PBMC_TRAIN = {"epochs": 6, "hidden_dim": 64, "batch_size": 64, "seed": 0}
KEY = "ginseng_cell_type"


@pytest.fixture(scope="module")
def pbmc():
    """A model trained on pbmc68k's even cells; its odd cells, annotated once, log-normalised."""
    adata = gs.datasets.pbmc68k_counts()
    reference, query = adata[::2].copy(), adata[1::2].copy()
    state = gs.tl.train(reference, "bulk_labels", layer="counts", **PBMC_TRAIN)
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    return state, query


def _cells_predicted_as(state, query, n_labels, threshold=None) -> ad.AnnData:
    """A fresh copy of the query's cells that ``n_labels`` well-populated labels got.

    Predictions are per cell, so annotating this subset again gives every cell the same
    label: the subset's categories should be exactly these labels, each with >= 5 cells
    (scanpy's tests need two cells per group), while the model knows more labels.
    """
    table = gs.tl.classify(
        query, state, layer="counts", unassigned_threshold=threshold, return_table=True
    )
    counts = table[KEY].value_counts()
    chosen = [str(label) for label in counts.index[counts >= 5][:n_labels]]
    if threshold is not None and counts.get("Unassigned", 0) >= 2:
        chosen.append("Unassigned")
    assert len(chosen) >= 2, counts
    return query[table[KEY].isin(chosen).to_numpy()].copy()


def _check_categories(adata, key: str, state, reserved: str | None = None) -> list[str]:
    """Categories are exactly the labels that occur, in model order, the reserved one last."""
    column = adata.obs[key]
    categories = list(column.cat.categories)
    occurring = set(column.dropna().astype(str))
    expected = [str(label) for label in state.labels if label in occurring]
    if reserved in occurring:
        expected.append(reserved)
    assert categories == expected
    assert len(adata.uns[f"{key}_colors"]) == len(categories)
    return categories


def _check_colours_follow_model(adata, key: str, state, query) -> None:
    """A label keeps the colour it has in another query annotated by the same model."""
    other = query.copy()
    gs.tl.classify(other, state, layer="counts")
    expected = dict(zip(other.obs[KEY].cat.categories, other.uns[f"{KEY}_colors"], strict=True))
    colours = dict(zip(adata.obs[key].cat.categories, adata.uns[f"{key}_colors"], strict=True))
    shared = sorted(set(colours) & set(expected))
    assert shared
    assert [colours[label] for label in shared] == [expected[label] for label in shared]


def _scanpy_grouping_calls(adata, key: str) -> None:
    """The grouping functions the issue names, each on every group (groups="all")."""
    groups = [str(c) for c in adata.obs[key].cat.categories]
    sc.tl.rank_genes_groups(adata, key, method="wilcoxon")
    assert set(adata.uns["rank_genes_groups"]["names"].dtype.names) == set(groups)
    sc.tl.dendrogram(adata, key)
    assert adata.uns[f"dendrogram_{key}"]["categories_ordered"] is not None
    genes = list(adata.var_names[:5])
    sc.pl.dotplot(adata, genes, groupby=key, show=False)
    sc.pl.violin(adata, genes[0], groupby=key, show=False)
    plt.close("all")
    aggregated = sc.get.aggregate(adata, by=key, func="mean")
    assert list(aggregated.obs_names) == groups
    assert np.isfinite(aggregated.layers["mean"]).all()


@pytest.mark.parametrize("threshold", [None, 0.6])
def test_scanpy_grouping_on_a_query_missing_some_types(pbmc, threshold, tmp_path):
    state, query = pbmc
    sub = _cells_predicted_as(state, query, 3, threshold)
    gs.tl.classify(sub, state, layer="counts", unassigned_threshold=threshold)
    categories = _check_categories(sub, KEY, state, reserved="Unassigned")
    assert set(map(str, state.labels)) - set(categories)  # labels nobody received
    _check_colours_follow_model(sub, KEY, state, query)
    _scanpy_grouping_calls(sub, KEY)
    sub.write_h5ad(tmp_path / "annotated.h5ad")
    back = ad.read_h5ad(tmp_path / "annotated.h5ad")
    assert list(back.obs[KEY].cat.categories) == categories


def test_scanpy_grouping_after_majority_vote(pbmc):
    state, query = pbmc
    sub = _cells_predicted_as(state, query, 3)
    # Clusters that mix two predicted labels, so that min_prop makes some Heterogeneous.
    cluster = np.arange(sub.n_obs) % 4
    sub.obs["cluster"] = cluster.astype(str)
    gs.tl.classify(sub, state, layer="counts", majority_vote_key="cluster", min_prop=0.9)
    _check_categories(sub, KEY, state)
    votes = "ginseng_majority_vote"
    _check_categories(sub, votes, state, reserved="Heterogeneous")
    assert "Heterogeneous" in set(sub.obs[votes].astype(str))
    _scanpy_grouping_calls(sub, KEY)


def test_scanpy_grouping_after_concat(pbmc):
    """Two queries annotated apart, then concatenated: categories still all occur."""
    state, query = pbmc
    sub = _cells_predicted_as(state, query, 3)
    predicted = gs.tl.classify(sub, state, layer="counts", return_table=True)[KEY]
    labels = list(predicted.cat.categories)
    first = sub[predicted.isin(labels[:2]).to_numpy()].copy()
    second = sub[predicted.isin(labels[1:]).to_numpy()].copy()
    gs.tl.classify(first, state, layer="counts")
    gs.tl.classify(second, state, layer="counts")
    both = ad.concat([first, second], label="query", index_unique="-")
    assert set(both.obs[KEY].cat.categories) == set(both.obs[KEY].astype(str))
    _scanpy_grouping_calls(both, KEY)
