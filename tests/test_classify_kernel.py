"""The per-chunk kernel (gs.tl.kernel), the key registry and the public faces of classify.

The kernel is the function a dask ``map_blocks`` will call: it must give, block by
block, exactly what ``gs.tl.classify`` gives for the whole matrix, and refuse bad
counts with the same error.
"""

from __future__ import annotations

import inspect

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import ginseng as gs
from ginseng import InputError
from ginseng.tl import kernel


@pytest.fixture
def query(toy_trained):
    adata = toy_trained.adata[:300].copy()
    adata.layers["counts"] = adata.X.copy()
    return adata


def _shuffled_query(query, seed=0):
    """The query with its genes in another order, one model gene dropped, one extra gene."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(query.n_vars)[1:]
    shuffled = query[:, order].copy()
    extra = sp.csr_matrix(rng.poisson(1.0, (shuffled.n_obs, 1)).astype(np.float32))
    X = sp.hstack([sp.csr_matrix(shuffled.X), extra], format="csr")
    var = pd.DataFrame(index=[*shuffled.var_names, "not_a_model_gene"])
    return ad.AnnData(X, obs=shuffled.obs, var=var)


def _by_hand(state, adata) -> np.ndarray:
    """Probabilities from the matrix aligned with pandas (missing genes marked unknown)."""
    dense = pd.DataFrame(np.asarray(adata.X.todense()), columns=adata.var_names)
    aligned = dense.reindex(columns=list(state.genes), fill_value=0.0).to_numpy(np.float32)
    missing = ~pd.Index(state.genes).isin(adata.var_names)
    assert missing.sum() == 1
    return state.predict_proba(aligned, missing=missing)


@pytest.mark.parametrize("block", [1, 37, 300])
def test_kernel_blocks_equal_classify_and_an_independent_alignment(toy_trained, query, block):
    state = toy_trained.state
    adata = _shuffled_query(query)
    alignment = kernel.align_genes(state.genes, adata.var)
    parts = [
        kernel.classify_chunk(chunk, alignment, state)
        for _, chunk in kernel.iter_row_chunks(adata.X, block)
    ]
    proba = np.concatenate([p.probabilities for p in parts])
    expected = _by_hand(state, adata)
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-6)
    codes = np.concatenate([p.codes for p in parts])
    np.testing.assert_array_equal(codes, expected.argmax(axis=1))
    table = gs.tl.classify(adata, state, return_table=True)
    np.testing.assert_array_equal(state.labels[codes], table["ginseng_cell_type"].astype(str))
    np.testing.assert_array_equal(
        np.concatenate([p.confidence for p in parts]), table["ginseng_confidence"]
    )
    serial = kernel.classify_chunks(adata.X, alignment, state, batch_size=block)
    np.testing.assert_array_equal(serial.probabilities, proba)


def test_kernel_takes_dense_and_sparse_and_leaves_the_chunk_alone(toy_trained, query):
    state = toy_trained.state
    alignment = kernel.align_genes(state.genes, query.var)
    chunk = sp.csr_matrix(query.X[:50])
    before = chunk.copy()
    sparse = kernel.classify_chunk(chunk, alignment, state, probabilities=False)
    dense = kernel.classify_chunk(chunk.toarray(), alignment, state)
    assert sparse.probabilities is None
    np.testing.assert_array_equal(sparse.codes, dense.codes)
    np.testing.assert_array_equal(sparse.confidence, dense.probabilities.max(axis=1))
    assert (chunk != before).nnz == 0
    with pytest.raises(InputError, match="does not match"):
        kernel.classify_chunk(chunk[:, :-1], alignment, state)


def test_kernel_refuses_bad_counts_with_classify_s_errors(toy_trained, query):
    state = toy_trained.state
    alignment = kernel.align_genes(state.genes, query.var)
    scaled = query.copy()
    scaled.X = sp.csr_matrix(np.asarray(scaled.X.todense()) - 1.0)
    logged = query.copy()
    logged.X = sp.csr_matrix(np.log1p(query.X.toarray() / query.X.sum(1).A * 1e4))
    for bad in (scaled, logged):
        with pytest.raises(InputError) as from_classify:
            gs.tl.classify(bad, state)
        with pytest.raises(InputError) as from_kernel:
            kernel.classify_chunk(bad.X, alignment, state, layers=bad.layers.keys())
        assert str(from_kernel.value) == str(from_classify.value)
    # The cheap check of later chunks still refuses negative values, and only those.
    with pytest.raises(InputError, match="negative"):
        kernel.classify_chunk(scaled.X[:100], alignment, state, check="sign")
    kernel.classify_chunk(logged.X[:100], alignment, state, check="sign")
    kernel.classify_chunk(scaled.X[:100], alignment, state, check="none")
    with pytest.raises(InputError, match="check must be"):
        kernel.check_chunk(query.X[:2], check="full", where="adata.X")


def test_result_keys_name_what_classify_writes(toy_trained, query):
    from ginseng._keys import ResultKeys

    gs.tl.classify(
        query, toy_trained.state, key_added="run1", majority_vote_key="batch", prediction_sets=0.1
    )
    keys = ResultKeys.from_prefix("run1")
    written = {
        *query.obs.columns[query.obs.columns.str.startswith("run1")],
        *query.obsm.keys(),
        *(k for k in query.uns if k.startswith("run1")),
    }
    assert written == {
        keys.cell_type,
        keys.confidence,
        keys.novelty,
        keys.prediction_set,
        keys.prediction_set_size,
        keys.majority_vote,
        keys.probabilities,
        keys.uns,
        keys.colors(keys.cell_type),
        keys.colors(keys.majority_vote),
    }
    table = gs.tl.results_table(query, key_added="run1")
    assert list(table.columns[:2]) == [keys.cell_type, keys.confidence]
    assert table.columns[-1] == keys.majority_vote
    ax = gs.pl.confidence(query, key_added="run1", show=False)
    assert ax.get_ylabel() == "calibrated confidence"


def test_public_signatures_have_no_private_parameters():
    for func in (gs.tl.classify, gs.classify, gs.tl.train, gs.tl.results_table):
        names = inspect.signature(func).parameters
        assert not [n for n in names if n.startswith("_")], func.__qualname__


def test_seed_classify_refuses_unknown_options(toy_trained, query):
    with pytest.raises(TypeError, match="'no_such_option'"):
        gs.classify(query, toy_trained.state, no_such_option=1)
    with pytest.raises(TypeError, match="'counts_fallback'"):
        gs.classify(query, toy_trained.state, counts_fallback=True)


def test_shared_parameter_docs_are_the_same_text():
    def section(func, name):
        doc = inspect.getdoc(func)
        start = doc.index(f"\n{name}\n")
        end = doc.index("\n", doc.index("\n", start + 1) + 1)
        while doc[end + 1 : end + 5] == "    ":
            end = doc.index("\n", end + 1)
        return doc[start:end]

    for func in (gs.tl.classify, gs.classify, gs.tl.train):
        assert "%(" not in inspect.getdoc(func)
    assert section(gs.tl.classify, "layer") == section(gs.tl.train, "layer")
    assert section(gs.tl.classify, "adata") == section(gs.classify, "adata")
    assert section(gs.tl.classify, "return_table") == section(gs.classify, "return_table")


def test_read_ahead_keeps_order_errors_and_early_stops():
    """The background fetch of classify's chunk loop: same items, same order, errors
    raised where they are consumed, and a stopped consumer leaves no fetch running."""
    import threading

    from ginseng.data import read_ahead

    fetched = []

    def items(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"item {i}")
            fetched.append((i, threading.current_thread().name))
            yield i

    assert list(read_ahead(items(6))) == list(range(6))
    assert {name for _, name in fetched} == {"ginseng-stream_0"}  # read in the background
    with pytest.raises(ValueError, match="item 3"):
        list(read_ahead(items(6, fail_at=3)))
    fetched.clear()
    reader = read_ahead(items(100))
    assert next(reader) == 0
    reader.close()  # waits for the one fetch in flight
    assert len(fetched) <= 2
