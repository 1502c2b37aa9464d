"""Files whose matrix declares a shape that obs x var contradict are refused up front."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest

import ginseng as gs
from ginseng import InputError

ABSURD = [(600, 10**12), (10**12, 50), (10**12, 10**12)]


@pytest.fixture
def absurd_file(tmp_path, make_toy):
    """``absurd_file(shape)``: a real toy .h5ad whose X declares ``shape``."""

    def make(shape, layer=None):
        adata = make_toy()
        if layer is not None:
            adata.layers[layer] = adata.X.copy()
        path = tmp_path / "absurd.h5ad"
        adata.write_h5ad(path)
        with h5py.File(path, "r+") as f:
            element = f["X"] if layer is None else f[f"layers/{layer}"]
            element.attrs["shape"] = np.array(shape)
        return path

    return make


def _expect_refusal(info, path, shape):
    message = str(info.value)
    assert str(path) in message
    assert f"declares shape {tuple(shape)}" in message
    assert "600 cells (obs) x 50 genes (var)" in message


@pytest.mark.parametrize("shape", ABSURD)
def test_classify_refuses_an_absurd_declared_shape(absurd_file, toy_trained, shape):
    path = absurd_file(shape)
    with pytest.raises(InputError) as info:
        gs.tl.classify(path, toy_trained.state, return_table=True)
    _expect_refusal(info, path, shape)


@pytest.mark.parametrize("shape", ABSURD)
@pytest.mark.parametrize("layer", [None, "counts"])
def test_train_refuses_an_absurd_declared_shape(absurd_file, shape, layer):
    path = absurd_file(shape, layer=layer)
    with pytest.raises(InputError) as info:
        gs.tl.train(path, "cell_type", layer=layer, epochs=1)
    _expect_refusal(info, path, shape)


@pytest.mark.parametrize("shape", ABSURD)
def test_hvg_on_backed_data_refuses_an_absurd_declared_x(absurd_file, shape):
    """anndata opens such a file backed (X stays on disk); ginseng checks before reading."""
    path = absurd_file(shape)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(InputError) as info:
            gs.pp.select_hvgs(backed, n_top_genes=10)
        _expect_refusal(info, path, shape)
    finally:
        backed.file.close()
