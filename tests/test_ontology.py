"""Cell Ontology ids: checked at training against the bundled ontology, stored in the
model file, written by classify; the common ancestors of hierarchy nodes against the
package's own lowest-common-ancestor search."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

import ginseng as gs
from ginseng import InputError
from ginseng.data.io import load_model, save_model

pytest.importorskip("cellxgene_ontology_guide")

from cellxgene_ontology_guide.ontology_parser import OntologyParser

from ginseng.model.hierarchy import Hierarchy
from ginseng.model.ontology import label_ids, subtype_of

# CD4 / CD8 alpha-beta T cell, B cell, classical monocyte
TOY_IDS = {
    "type_0": "CL:0000624",
    "type_1": "CL:0000625",
    "type_2": "CL:0000236",
    "type_3": "CL:0000860",
}


def _obs(mapping, n=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(list(mapping), n)
    return pd.DataFrame({"label": labels, "cl": [mapping[x] for x in labels]})


def test_label_ids_and_their_refusals():
    obs = _obs(TOY_IDS)
    ids = label_ids(obs, "cl", "label", list(TOY_IDS))
    assert dict(ids.ids) == TOY_IDS and ids.key == "cl" and ids.source.startswith("CL v")
    two = obs.copy()
    rows = np.flatnonzero(two["label"] == "type_0")
    two.loc[rows[0], "cl"] = "CL:0000625"
    with pytest.raises(InputError, match="'type_0' have 2 ids"):
        label_ids(two, "cl", "label", list(TOY_IDS))
    bad = _obs({**TOY_IDS, "type_3": "CL:9999999"})
    with pytest.raises(InputError, match="'type_3' the id 'CL:9999999'"):
        label_ids(bad, "cl", "label", list(TOY_IDS))
    obsolete = _obs({**TOY_IDS, "type_3": "CL:0000003"})  # "obsolete native cell"
    with pytest.raises(InputError, match="obsolete term 'CL:0000003'; use 'CL:0000000'"):
        label_ids(obsolete, "cl", "label", list(TOY_IDS))
    missing = obs.copy()
    missing.loc[0, "cl"] = None
    with pytest.raises(InputError, match="missing for cells labelled"):
        label_ids(missing, "cl", "label", list(TOY_IDS))
    with pytest.raises(InputError, match="'cell_type_ontology_term_id'"):
        label_ids(obs, "cell_type_ontology_term_id", "label", list(TOY_IDS))
    # "unknown" is CELLxGENE's value for a type without a term.
    assert (
        label_ids(_obs({**TOY_IDS, "type_3": "unknown"}), "cl", "label", list(TOY_IDS)).ids[
            "type_3"
        ]
        == "unknown"
    )


def test_hierarchy_nodes_get_the_lowest_common_ancestor():
    obs = _obs(TOY_IDS)
    tree = Hierarchy.from_mapping(
        {"type_0": "T", "type_1": "T", "T": "lymph", "type_2": "lymph", "type_3": "myeloid"},
        list(TOY_IDS),
        "label",
    )
    ids = label_ids(obs, "cl", "label", list(TOY_IDS), hierarchy=tree).ids
    parser = OntologyParser()
    assert [ids["T"]] == parser.get_lowest_common_ancestors("CL:0000624", "CL:0000625")
    lymph = set(parser.get_term_ancestors("CL:0000236", include_self=True)) & set(
        parser.get_term_ancestors(ids["T"], include_self=True)
    )
    assert ids["lymph"] in lymph
    # Deepest: no child of the chosen term is a common ancestor too.
    assert not set(parser.get_term_children(ids["lymph"])) & lymph
    assert ids["myeloid"] == "CL:0000860"  # a node over one label is that label's term


def test_subtype_of():
    assert subtype_of(
        ["CL:0000624", "CL:0000084", "unknown"], ["CL:0000084", "CL:0000624", "CL:0000084"]
    ).tolist() == [True, False, False]


def test_train_classify_and_the_model_file(make_toy, tmp_path):
    adata = make_toy(n_cells=400, seed=2)
    adata.obs["cl"] = adata.obs["cell_type"].astype(str).map(TOY_IDS)
    state = gs.tl.train(adata, "cell_type", ontology_key="cl", epochs=2, n_top_genes=None,
                        hidden_dim=16, batch_size=32, upper=10)  # fmt: skip
    assert "ontology: 4 of 4 labels with Cell Ontology ids (obs['cl']" in repr(state)
    loaded = load_model(save_model(state, tmp_path / "m.h5"))
    assert dict(loaded.ontology.ids) == TOY_IDS
    query = adata.copy()
    gs.tl.classify(query, loaded, novelty_threshold=0.5)  # about half the cells "Novel"
    called = query.obs["ginseng_cell_type"].astype(str)
    ids = query.obs["ginseng_cell_type_ontology_term_id"].astype(str)
    expected = called.map({**TOY_IDS, "Novel": "unknown"})
    assert (ids == expected).all() and (called == "Novel").any()
    table = gs.tl.results_table(query)
    assert (table["ginseng_cell_type_ontology_term_id"].astype(str) == ids).all()
    # A model without ids drops the column of an earlier run.
    plain = gs.tl.train(adata, "cell_type", epochs=1, n_top_genes=None, hidden_dim=16)
    gs.tl.classify(query, plain)
    assert "ginseng_cell_type_ontology_term_id" not in query.obs


def test_train_refuses_bad_ids_before_training(make_toy):
    adata = make_toy(n_cells=200, seed=1)
    adata.obs["cl"] = adata.obs["cell_type"].astype(str).map({**TOY_IDS, "type_2": "B cell"})
    with pytest.raises(InputError, match="'type_2' the id 'B cell'"):
        gs.tl.train(adata, "cell_type", ontology_key="cl", epochs=1)


def test_hierarchy_from_the_ontology(make_toy):
    adata = make_toy(n_cells=300, seed=2)
    adata.obs["cl"] = adata.obs["cell_type"].astype(str).map(TOY_IDS)
    state = gs.tl.train(adata, "cell_type", ontology_key="cl", hierarchy="ontology", epochs=1,
                        n_top_genes=None, hidden_dim=16)  # fmt: skip
    tree, ids = state.hierarchy, state.ontology.ids
    parser = OntologyParser()
    for row in tree.paths:
        terms = [ids[str(node)] for node in row]
        # Each node is an ancestor (or the same term) of the node below it: a chain of
        # the ontology, from the label's own term up.
        for up, down in itertools.pairwise(terms):
            assert up in parser.get_term_ancestors(down, include_self=True)
        assert ids[str(row[-1])] == TOY_IDS[str(row[-1])]
    # CD4 and CD8 alpha-beta T cells meet at a common node below the root.
    rows = {str(r[-1]): list(map(str, r)) for r in tree.paths}
    assert rows["type_0"][:-1] == rows["type_1"][:-1] != rows["type_3"][:-1]
    assert parser.get_term_label(ids[rows["type_0"][-2]]) == rows["type_0"][-2]
    with pytest.raises(InputError, match="give ontology_key"):
        gs.tl.train(adata, "cell_type", hierarchy="ontology", epochs=1)
