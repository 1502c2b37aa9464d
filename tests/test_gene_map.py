"""gene_map=: query genes translated before matching (orthologs, other identifiers),
and the ortholog table's reader."""

from __future__ import annotations

import hashlib
import zipfile

import pandas as pd
import pytest

import ginseng as gs
from ginseng import DownloadError, GeneMismatchError, InputError
from ginseng.datasets._real import ORTHOLOGS_MEMBER, read_orthologs


@pytest.fixture
def mouse_query(toy_trained):
    """The toy cells with their genes under other (mouse-style) names, shuffled."""
    adata = toy_trained.adata[:, ::-1].copy()
    adata.var_names = [f"{g.capitalize()}_m" for g in adata.var_names]
    table = pd.DataFrame({"mouse": adata.var_names, "human": toy_trained.adata.var_names[::-1]})
    return adata, table


def test_gene_map_reads_the_query_like_the_original(toy_trained, mouse_query):
    adata, table = mouse_query
    state = toy_trained.state
    with pytest.raises(GeneMismatchError):
        gs.tl.classify(adata, state, return_table=True)
    expected = gs.tl.classify(toy_trained.adata, state, return_table=True)
    for gene_map in (table, dict(zip(table["mouse"], table["human"], strict=True))):
        got = gs.tl.classify(adata, state, gene_map=gene_map, return_table=True)
        pd.testing.assert_frame_equal(got, expected)
    annotated = adata.copy()
    gs.tl.classify(annotated, state, gene_map=table)
    overlap = annotated.uns["ginseng"]["classify"]["gene_overlap"]
    assert overlap["source"] == "var_names via gene_map" and overlap["fraction"] == 1.0
    assert annotated.uns["ginseng"]["classify"]["params"]["gene_map"] == f"{len(table)} pairs"
    # Genes without an entry are left out: the model reads them as missing.
    half = gs.tl.classify(
        annotated, state, gene_map=table[::2], min_gene_overlap=0, return_table=True
    )
    assert half.shape == expected.shape


def test_explain_with_a_gene_map_attributes_to_the_querys_own_columns(toy_trained, mouse_query):
    adata, table = mouse_query
    state = toy_trained.state
    with pytest.raises(GeneMismatchError):
        gs.tl.explain(adata, state, copy=True)
    expected = gs.tl.explain(toy_trained.adata, state, n_top=5, copy=True)
    got = gs.tl.explain(adata, state, n_top=5, gene_map=table, copy=True)
    # The query's columns are the original's reversed: the same attributions, mirrored.
    mirrored = expected.layers["ginseng_attributions"][:, ::-1]
    assert (got.layers["ginseng_attributions"] != mirrored).nnz == 0
    pd.testing.assert_frame_equal(got.obs, expected.obs)
    record = got.uns["ginseng"]["explain"]
    assert record["gene_overlap"]["source"] == "var_names via gene_map"
    assert record["params"]["gene_map"] == f"{len(table)} pairs"


def test_gene_map_refusals(toy_trained, mouse_query):
    adata, table = mouse_query
    many = table.copy()
    many.loc[1, "human"] = many.loc[0, "human"]
    with pytest.raises(InputError, match="several genes of var_names"):
        gs.tl.classify(adata, toy_trained.state, gene_map=many, return_table=True)
    with pytest.raises(InputError, match="two columns"):
        gs.tl.classify(adata, toy_trained.state, gene_map=table[["mouse"]], return_table=True)
    with pytest.raises(InputError, match="mapping or a two-column table"):
        gs.tl.classify(adata, toy_trained.state, gene_map=["a", "b"], return_table=True)


def test_read_orthologs_keeps_one_to_one_pairs(tmp_path):
    header = '"gene.name","human.gene.name","human.homology.type","x","y","z"\n'
    rows = [
        '"Cd4","CD4","ortholog_one2one",1,1,1',
        '"Cd8a","CD8A","ortholog_one2one",1,1,1',
        '"H2-K1","HLA-A","ortholog_one2many",1,1,1',
    ]
    data = (header + "\n".join(rows) + "\n").encode()
    archive = tmp_path / "sample_data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(ORTHOLOGS_MEMBER, data)
    table = read_orthologs(archive, sha256=hashlib.sha256(data).hexdigest())
    assert table.to_dict("list") == {"mouse": ["Cd4", "Cd8a"], "human": ["CD4", "CD8A"]}
    assert "came==0.1.13" in table.attrs["source"]
    with pytest.raises(DownloadError, match="sha256"):
        read_orthologs(archive)  # not the pinned release's table
