"""Training refuses what classify would refuse: log-normalised or scaled matrices."""

from __future__ import annotations

import pytest
import scanpy as sc

import ginseng as gs
from ginseng import InputError
from ginseng.data import GinsengDataset


@pytest.fixture
def pbmc():
    adata = gs.datasets.pbmc68k_counts()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)  # the usual scanpy layout: X log-normalised, counts in a layer
    return adata


def test_train_refuses_log_normalised_x_and_names_the_counts_layer(pbmc, tmp_path):
    with pytest.raises(InputError, match=r'adata\.X.*layer="counts"') as info:
        gs.tl.train(pbmc, "bulk_labels", epochs=1)
    assert "check_counts=False" in str(info.value)
    with pytest.raises(InputError, match=r"adata\.X"):
        GinsengDataset.create(tmp_path / "log.zarr", pbmc, "bulk_labels")
    assert not (tmp_path / "log.zarr").exists()


def test_counts_layer_and_opting_out_train(pbmc, tmp_path):
    ds = GinsengDataset.create(tmp_path / "counts.zarr", pbmc, "bulk_labels", layer="counts")
    assert ds.counts_dtype.kind == "u"
    forced = GinsengDataset.create(
        tmp_path / "forced.zarr", pbmc, "bulk_labels", check_counts=False
    )
    assert forced.counts_dtype.kind == "f"
