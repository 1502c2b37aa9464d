"""Training refuses label columns that cannot make a classifier, and warns about tiny labels."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import ginseng as gs
from ginseng.data import GinsengDataset
from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings

QUICK = {"hidden_dim": 16, "batch_size": 32, "upper": 10, "min_steps": 20}


def _bad_columns(n: int) -> dict[str, tuple[pd.Series | list, str]]:
    """Label columns that cannot train a classifier, and the message each must give."""
    return {
        "single": (["T cell"] * n, rf"holds a single label \('T cell', {n} cells\)"),
        "nan": (np.full(n, np.nan), f"no labelled cells: {n} of {n} values"),
        "none": ([None] * n, f"no labelled cells: {n} of {n} values"),
        "empty_categorical": (
            pd.Categorical([None] * n, categories=["B", "T"]),
            f"no labelled cells: {n} of {n} values",
        ),
        "no_categories": (pd.Categorical([np.nan] * n), f"no labelled cells: {n} of {n}"),
        "blank": ([""] * n, f"{n} empty label"),
    }


@pytest.fixture
def toy(make_toy):
    adata = make_toy(n_cells=300, n_genes=30, n_types=3)
    for key, (values, _) in _bad_columns(adata.n_obs).items():
        adata.obs[key] = values
    return adata


@pytest.mark.parametrize("key", list(_bad_columns(300)))
def test_tl_train_refuses(toy, key, tmp_path):
    match = _bad_columns(toy.n_obs)[key][1]
    with pytest.raises(gs.InputError, match=match) as info:
        gs.tl.train(toy, key, epochs=1, store=tmp_path / "s.zarr", **QUICK)
    assert repr(key) in str(info.value)
    assert not (tmp_path / "s.zarr").exists()
    assert "train" not in toy.uns.get("ginseng", {})


@pytest.mark.parametrize("key", ["single", "nan", "empty_categorical"])
def test_dataset_create_refuses(toy, key, tmp_path):
    with pytest.raises(gs.InputError, match=_bad_columns(toy.n_obs)[key][1]):
        GinsengDataset.create(tmp_path / "s.zarr", toy, key)
    assert list(tmp_path.iterdir()) == []


def test_partly_missing_labels_are_counted(toy):
    toy.obs["partial"] = toy.obs["cell_type"].astype(object)
    toy.obs.loc[toy.obs_names[:7], "partial"] = None
    with pytest.raises(gs.InputError, match=r"'partial'\] has 7 missing .* out of 300"):
        gs.tl.train(toy, "partial", epochs=1, **QUICK)


def _with_singletons(adata):
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    labels[3], labels[10] = "Platelet", "pDC"
    adata.obs["with_rare"] = pd.Categorical(labels)
    return adata


def _rows_of(dataset: GinsengDataset, label: str) -> np.ndarray:
    code = list(dataset.label_names).index(label)
    return np.flatnonzero(np.asarray(dataset.labels) == code)


def test_single_cell_labels_warn_and_stay_in_training(toy, tmp_path):
    adata = _with_singletons(toy)
    warning = r"2 label\(s\) with a single cell.*'Platelet' \(1 cell\), 'pDC' \(1 cell\)"
    with pytest.warns(UserWarning, match=warning) as record:
        dataset = GinsengDataset.create(tmp_path / "s.zarr", adata, "with_rare")
    assert record[0].filename == __file__  # points at the caller, not at ginseng
    rare = np.concatenate([_rows_of(dataset, "Platelet"), _rows_of(dataset, "pDC")])
    assert rare.size == 2
    for fraction in (0.1, 0.5, 0.6, 0.9):
        dataset.make_split(fraction=fraction, seed=3)
        assert np.isin(rare, dataset.splits["train"]).all(), fraction
        assert not np.isin(rare, dataset.splits["test"]).any(), fraction
        # Every other label still has cells on both sides.
        for side in ("train", "test"):
            seen = set(np.asarray(dataset.labels)[dataset.splits[side]])
            assert seen >= set(range(len(dataset.label_names))) - set(
                np.asarray(dataset.labels)[rare]
            )

    settings = GinsengClassifierTrainerSettings(**QUICK)
    _, state = GinsengClassifierTrainer(dataset, settings).fit(1)
    assert {"Platelet", "pDC"} <= set(state.labels)
    assert len(state.labels) == 5


def test_tl_train_warns_and_keeps_single_cell_labels(toy):
    adata = _with_singletons(toy)
    with pytest.warns(UserWarning, match="'Platelet' \\(1 cell\\)"):
        state = gs.tl.train(adata, "with_rare", epochs=1, **QUICK)
    assert "Platelet" in set(state.labels)
    assert "Platelet" in adata.uns["ginseng"]["train"]["labels"]


def test_cli_train_refuses_with_one_line(toy, tmp_path):
    path = tmp_path / "toy.h5ad"
    toy.obs = toy.obs[["cell_type", "single", "nan", "empty_categorical"]]
    toy.write_h5ad(path)
    for key, expected in [
        ("single", "holds a single label ('T cell', 300 cells)"),
        ("nan", "no labelled cells: 300 of 300 values"),
        ("empty_categorical", "no labelled cells: 300 of 300 values"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "ginseng.cli", "train", str(path), "--labels", key,
             "--out", str(tmp_path / "m.h5"), "--epochs", "1"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == [lines[-1]] or not any("Traceback" in line for line in lines)
        assert lines[-1].startswith(f"ginseng: error: label_key={key!r}"), lines
        assert expected in lines[-1]
        assert not (tmp_path / "m.h5").exists()
