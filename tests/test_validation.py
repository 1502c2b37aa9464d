"""Bad arguments of the public functions get one wording: the parameter, what it must be, the value.

Every check below goes through the shared validators (``ginseng._validate``); the test
calls the public functions only.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import ginseng as gs
from ginseng import InputError
from ginseng.data import GinsengDataset
from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings


def _message(name: str, expected: str, value: object) -> str:
    return re.escape(f"{name} must be {expected}, got {value!r}.")


@pytest.fixture(scope="module")
def store(tmp_path_factory, make_toy):
    adata = make_toy(n_cells=120, n_genes=12, n_types=3, seed=1)
    return GinsengDataset.create(tmp_path_factory.mktemp("v") / "v.zarr", adata, "cell_type")


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "8", None])
def test_stream_sizes_must_be_positive_integers(store, value):
    for name in ("batch_size", "block_size", "buffer_size"):
        with pytest.raises(InputError, match=_message(name, "a positive integer", value)):
            store.stream(**{name: value}, split="all")


def test_stream_accepts_numpy_integers(store):
    X, y = next(store.stream(batch_size=np.int64(40), split="all", block_size=np.int32(50)))
    assert X.shape == (40, store.n_genes) and y.shape == (40,)


@pytest.mark.parametrize("value", [0, 10.5, False])
def test_chunk_sizes_must_be_positive_integers(tmp_path, make_toy, value):
    adata = make_toy(n_cells=30, n_genes=5, n_types=2)
    with pytest.raises(InputError, match=_message("chunk_size", "a positive integer", value)):
        GinsengDataset.create(tmp_path / "c.zarr", adata, "cell_type", chunk_size=value)
    assert not (tmp_path / "c.zarr").exists()
    before = gs.settings.chunk_size
    with pytest.raises(InputError, match=_message("chunk_size", "a positive integer", value)):
        gs.settings.chunk_size = value
    assert gs.settings.chunk_size == before


@pytest.mark.parametrize("value", [0, 1.0, True])
def test_epochs_must_be_a_positive_integer(store, value):
    trainer = GinsengClassifierTrainer(store, GinsengClassifierTrainerSettings())
    with pytest.raises(InputError, match=_message("epochs", "a positive integer", value)):
        trainer.fit(value)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("dropout_rate", 1.0, "a number in [0, 1)"),
        ("holdout_fraction", 0.0, "a number in (0, 1)"),
        ("hidden_dim", 0, "a positive integer"),
        ("lam_max", -1.0, "a number >= 0"),
        ("seed", 1.5, "an integer >= 0"),
        ("lr", float("inf"), "a positive number"),
        ("normalize", 1, "True or False"),
        ("group_mode", "donors", "one of ['fraction', 'groups']"),
    ],
)
def test_settings_use_the_same_wording(field, value, expected):
    name = f"GinsengClassifierTrainerSettings.{field}"
    with pytest.raises(InputError, match=_message(name, expected, value)):
        GinsengClassifierTrainerSettings(**{field: value})
