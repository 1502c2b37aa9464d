"""Which genes ``gs.tl.train`` trains on: ``n_top_genes`` and ``query_genes``."""

from __future__ import annotations

import numpy as np
import pytest

import ginseng as gs

QUICK = {"epochs": 1, "hidden_dim": 8, "batch_size": 32, "min_steps": 5, "upper": 5}


@pytest.fixture
def reference(make_toy):
    return make_toy(n_cells=300, n_genes=60, n_types=3, seed=11)


def test_n_top_genes_trains_on_the_hvgs_and_leaves_var_alone(reference):
    before = reference.var.copy()
    state = gs.tl.train(reference, "cell_type", n_top_genes=20, **QUICK)
    table = gs.pp.select_hvgs(reference, n_top_genes=20, inplace=False)
    assert set(state.genes) == set(reference.var_names[table["selected"].to_numpy()])
    assert state.n_genes == 20
    assert reference.var.equals(before)  # the selection is not written into var
    assert reference.uns["ginseng"]["train"]["params"]["n_top_genes"] == 20


def test_n_top_genes_none_or_above_the_gene_count_trains_on_all(reference):
    assert gs.tl.train(reference, "cell_type", n_top_genes=None, **QUICK).n_genes == 60
    assert gs.tl.train(reference, "cell_type", n_top_genes=500, **QUICK).n_genes == 60
    with pytest.raises(gs.InputError, match="n_top_genes"):
        gs.tl.train(reference, "cell_type", n_top_genes=0, **QUICK)


def test_a_ginseng_genes_column_wins_over_n_top_genes(reference):
    gs.pp.select_hvgs(reference, n_top_genes=12)
    state = gs.tl.train(reference, "cell_type", n_top_genes=20, **QUICK)
    assert set(state.genes) == set(reference.var_names[reference.var["ginseng_genes"]])


def test_query_genes_restricts_to_shared_genes(reference):
    query_names = [*reference.var_names[::2], "NOT_IN_REFERENCE"]
    state = gs.tl.train(reference, "cell_type", query_genes=query_names, n_top_genes=None, **QUICK)
    assert list(state.genes) == list(reference.var_names[::2])
    # With n_top_genes: the selection made on the shared genes alone.
    state = gs.tl.train(reference, "cell_type", query_genes=query_names, n_top_genes=10, **QUICK)
    shared = reference[:, reference.var_names.isin(query_names)].copy()
    table = gs.pp.select_hvgs(shared, n_top_genes=10, inplace=False)
    assert set(state.genes) == set(shared.var_names[table["selected"].to_numpy()])
    # An explicit gene list is intersected with the query's genes.
    chosen = list(reference.var_names[:10])
    state = gs.tl.train(reference, "cell_type", genes=chosen, query_genes=query_names, **QUICK)
    assert list(state.genes) == chosen[::2]
    # No model gene is missing when the query is classified.
    query = reference[:, reference.var_names[::2]].copy()
    gs.tl.classify(query, state)
    assert query.uns["ginseng"]["classify"]["gene_overlap"]["n_missing"] == 0


def test_query_genes_without_overlap_is_refused(reference):
    with pytest.raises(gs.InputError, match="None of the reference's 60 genes is in query_genes"):
        gs.tl.train(reference, "cell_type", query_genes=["ENSG00000000003"], **QUICK)
    with pytest.raises(gs.InputError, match=r"pass query\.var_names"):
        gs.tl.train(reference, "cell_type", query_genes=reference, **QUICK)
    with pytest.raises(gs.InputError, match="None of the 3 chosen genes"):
        gs.tl.train(
            reference, "cell_type", genes=list(reference.var_names[1:6:2]),
            query_genes=list(reference.var_names[::2]), **QUICK,
        )  # fmt: skip


def test_query_genes_ignore_ensembl_versions_and_refuse_a_string(reference):
    ids = np.array([f"ENSG{i:011d}.1" for i in range(reference.n_vars)])
    reference.var_names = ids
    query_ids = [f"ENSG{i:011d}.7" for i in range(0, reference.n_vars, 3)]
    state = gs.tl.train(reference, "cell_type", query_genes=query_ids, n_top_genes=None, **QUICK)
    assert list(state.genes) == list(ids[::3])
    with pytest.raises(gs.InputError, match="got a str"):
        gs.tl.train(reference, "cell_type", query_genes="ENSG00000000001", **QUICK)


def test_a_chosen_column_is_recorded_and_cut_to_the_query_with_a_warning(reference, caplog):
    gs.pp.select_hvgs(reference, n_top_genes=12)
    chosen = reference.var_names[reference.var["ginseng_genes"].to_numpy()]
    query_names = list(chosen[:5])
    with caplog.at_level("WARNING", logger="ginseng"):
        state = gs.tl.train(reference, "cell_type", query_genes=query_names, **QUICK)
    assert list(state.genes) == query_names
    assert "training on the 5 of the 12 chosen genes (var['ginseng_genes'])" in caplog.text
    assert reference.uns["ginseng"]["train"]["params"]["genes"] == "ginseng_genes"
