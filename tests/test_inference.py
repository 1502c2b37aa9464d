"""Inference paths of GinsengModelState: sparse first layer vs the dense network."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp


def _sparse_counts(n_cells, n_genes, density, seed):
    X = sp.random(n_cells, n_genes, density=density, format="csr", random_state=seed)
    X.data = np.round(X.data * 200) + 1  # up to ~200 counts, large enough to reach the clip
    X = X.tolil()
    X[3] = 0  # an empty cell
    return X.tocsr()


@pytest.mark.parametrize(
    ("normalize", "standardize"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_sparse_first_layer_equals_dense_network(toy_trained, normalize, standardize):
    state = toy_trained.state
    state = replace(
        state, config={**state.config, "normalize": normalize, "standardize": standardize}
    )
    X = _sparse_counts(700, state.n_genes, 0.1, seed=1)  # below SPARSE_MAX_DENSITY
    sparse = state.predict_logits(X, batch_size=256)
    dense = state.predict_logits(X.toarray(), batch_size=256)
    np.testing.assert_allclose(sparse, dense, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(sparse.argmax(axis=1), dense.argmax(axis=1))


def test_dense_sparse_input_takes_the_dense_path(toy_trained):
    state = toy_trained.state
    X = sp.csr_matrix(toy_trained.adata.X[:50])  # toy counts are nearly dense
    np.testing.assert_array_equal(state.predict_logits(X), state.predict_logits(X.toarray()))
