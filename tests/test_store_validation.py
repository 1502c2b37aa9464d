"""Damaged stores are refused with a StoreError naming the store and the part.

Each test damages a real store the way a disk fault, a bad copy or a hostile file would,
then opens it again as a user would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from ginseng import StoreError
from ginseng.data import GinsengDataset


@pytest.fixture
def store(tmp_path, make_toy) -> Path:
    """A fresh store of 600 toy cells with groups, copied per test."""
    path = tmp_path / "toy.zarr"
    GinsengDataset.create(path, make_toy(), "cell_type", group_key="batch")
    return path


def _chunk_files(path: Path, array: str) -> list[Path]:
    return sorted(p for p in (path / array).rglob("*") if p.is_file() and p.name != "zarr.json")


def test_intact_store_opens_and_streams(store):
    ds = GinsengDataset(store)
    X, y = next(ds.stream(64, split="all", shuffle=False))
    assert X.shape == (64, ds.n_genes) and y.shape == (64,)


def test_decreasing_indptr_is_refused(store):
    indptr = zarr.open_array(store / "X" / "indptr", mode="r+")
    values = indptr[:]
    values[10] = values[12]  # row 10 now overlaps row 11
    indptr[:] = values
    with pytest.raises(StoreError, match=r"X/indptr decreases at row 10") as info:
        GinsengDataset(store)
    assert str(store) in str(info.value)


def test_indptr_not_ending_at_the_value_count_is_refused(store):
    indptr = zarr.open_array(store / "X" / "indptr", mode="r+")
    indptr[-1] = indptr[-1] - 3
    with pytest.raises(StoreError, match=r"X/indptr ends at \d+, but the store holds \d+"):
        GinsengDataset(store)


@pytest.mark.parametrize("name, n_names", [("labels", 4), ("groups", 4)])
def test_codes_beyond_the_names_are_refused(store, name, n_names):
    codes = zarr.open_array(store / name, mode="r+")
    codes[3] = n_names
    with pytest.raises(StoreError, match=rf"{name} holds code {n_names}, but there are"):
        GinsengDataset(store)


def test_chunk_symlinked_to_random_bytes_is_refused(store, tmp_path):
    chunk = _chunk_files(store, "X/data")[0]
    junk = tmp_path / "junk.bin"
    junk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    chunk.unlink()
    chunk.symlink_to(junk)
    with pytest.raises(StoreError, match="symbolic link") as info:
        GinsengDataset(store)
    assert str(store) in str(info.value) and "X/data" in str(info.value)


def test_dangling_chunk_symlink_is_refused(store, tmp_path):
    chunk = _chunk_files(store, "X/indices")[0]
    chunk.unlink()
    chunk.symlink_to(tmp_path / "does-not-exist")
    with pytest.raises(StoreError, match="symbolic link"):
        GinsengDataset(store)


def test_linked_folder_escaping_the_store_is_refused(store, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(store / "X" / "data", outside)
    shutil.rmtree(store / "X" / "data")
    (store / "X" / "data").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="symbolic link"):
        GinsengDataset(store)


def _stream_all(path: Path) -> None:
    ds = GinsengDataset(path)
    for _ in ds.stream(64, split="all", shuffle=False):
        pass


def test_gene_index_beyond_the_gene_count_is_refused_when_streaming(store):
    indices = zarr.open_array(store / "X" / "indices", mode="r+")
    indices[7] = 50  # the toy store has 50 genes: index 50 does not exist
    with pytest.raises(StoreError, match=r"X/indices of rows 0-\d+ hold gene index 50") as info:
        _stream_all(store)
    assert str(store) in str(info.value) and "50 genes" in str(info.value)


def test_training_refuses_a_store_with_bad_gene_indices(store):
    from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings

    indices = zarr.open_array(store / "X" / "indices", mode="r+")
    indices[-1] = 10**6
    ds = GinsengDataset(store)
    settings = GinsengClassifierTrainerSettings(hidden_dim=8, batch_size=32, min_steps=1)
    with pytest.raises(StoreError, match="X/indices"):
        GinsengClassifierTrainer(ds, settings).fit(1)
