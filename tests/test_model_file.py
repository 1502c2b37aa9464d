"""save_model / load_model: round trip, layout, atomic writes and refusal of bad files."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import datetime

import h5py
import numpy as np
import pytest

import ginseng
from ginseng import InputError, ModelFormatError
from ginseng._keys import MODEL_FORMAT, MODEL_FORMAT_VERSION
from ginseng.data.io import load_model, save_model
from ginseng.model import GinsengModelState


@pytest.fixture(scope="module")
def saved(toy_trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.h5"
    save_model(toy_trained.state, path)
    return path


def test_round_trip_gives_identical_predictions_and_record(toy_trained, saved):
    state = toy_trained.state
    loaded = load_model(saved)
    assert isinstance(loaded, GinsengModelState)
    assert loaded.params.keys() == state.params.keys()
    for key, value in state.params.items():
        assert loaded.params[key].dtype == np.float32
        np.testing.assert_array_equal(loaded.params[key], value)
    X = toy_trained.adata.X[:200]
    np.testing.assert_array_equal(loaded.predict_logits(X), state.predict_logits(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), state.predict_proba(X))
    assert loaded.temperature == state.temperature
    assert loaded.settings == state.settings
    assert loaded.config == state.config
    assert loaded.metrics == state.metrics and loaded.history == state.history
    assert loaded.provenance == state.provenance
    np.testing.assert_array_equal(loaded.genes, state.genes)
    np.testing.assert_array_equal(loaded.labels, state.labels)
    assert repr(loaded) == repr(state)


def test_file_layout(saved, toy_trained):
    """Every documented part of the file holds the state's values (read with h5py only)."""
    state = toy_trained.state
    with h5py.File(saved, "r") as f:
        assert f.attrs["format"] == MODEL_FORMAT
        assert f.attrs["format_version"] == MODEL_FORMAT_VERSION
        assert f.attrs["ginseng_version"] == ginseng.__version__
        assert datetime.fromisoformat(f.attrs["created"])  # an ISO timestamp
        assert list(f["genes"].asstr()[()]) == list(state.genes)
        assert list(f["labels"].asstr()[()]) == list(state.labels)
        stored = {}
        f["params"].visititems(
            lambda name, obj: (
                stored.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None
            )
        )
        assert stored.keys() == state.params.keys()
        for key, value in state.params.items():
            assert stored[key].dtype == np.float32
            np.testing.assert_array_equal(stored[key], value, err_msg=key)
        assert f["params/blocks/0/linear/kernel"].shape == (50, 32)
        parts = {
            k: json.loads(f[k].asstr()[()])
            for k in ("config", "settings", "metrics", "history", "provenance")
        }
        assert f["calibration/temperature"].dtype == np.float64
        assert f["calibration/temperature"][()] == state.temperature
    # JSON has lists for tuples; otherwise each part is the state's own value
    assert parts["config"] == state.config
    assert parts["settings"] == {**state.settings.to_dict(), "betas": list(state.settings.betas)}
    assert parts["metrics"] == state.metrics
    assert parts["history"] == state.history
    assert parts["provenance"] == state.provenance
    documented = {"architecture", "n_genes", "n_labels", "hidden_dim", "n_layers", "dropout_rate",
                  "activation", "normalize", "target_sum", "log1p", "standardize", "clip",
                  "impute_missing"}  # fmt: skip
    assert set(parts["config"]) == documented
    assert parts["config"]["n_genes"] == 50 and parts["config"]["n_labels"] == 4
    assert parts["metrics"]["temperature"] == state.temperature


def test_unicode_names_round_trip(toy_trained, tmp_path):
    state = toy_trained.state
    genes = np.array([f"β-actin-{i}" for i in range(state.n_genes)])
    labels = np.array(["T细胞", "Zellen 🧬", "naïve B", "CD4+ T"])
    unicode = dataclasses.replace(state, genes=genes, labels=labels)
    save_model(unicode, tmp_path / "ünïcode model.h5")
    loaded = load_model(tmp_path / "ünïcode model.h5")
    assert list(loaded.genes) == list(genes) and list(loaded.labels) == list(labels)
    assert set(loaded.predict(toy_trained.adata.X[:20])) <= set(labels)


def test_save_is_atomic_and_checks_its_input(toy_trained, tmp_path):
    path = tmp_path / "m.h5"
    save_model(toy_trained.state, path)
    save_model(toy_trained.state, path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]
    broken = dataclasses.replace(toy_trained.state, metrics={"bad": object()})
    with pytest.raises(
        InputError, match=r"state\.metrics cannot be written as JSON .*type 'object'"
    ):
        save_model(broken, tmp_path / "broken.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]
    with pytest.raises(InputError, match="directory"):
        save_model(toy_trained.state, tmp_path / "missing" / "m.h5")
    with pytest.raises(InputError, match="GinsengModelState"):
        save_model({"params": {}}, tmp_path / "x.h5")


def _copy(saved, tmp_path, edit):
    path = tmp_path / "edited.h5"
    path.write_bytes(saved.read_bytes())
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def test_bad_files_raise_model_format_error(saved, tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not a model")
    with pytest.raises(ModelFormatError, match="HDF5"):
        load_model(text)
    with pytest.raises(ModelFormatError, match="No model file"):
        load_model(tmp_path / "absent.h5")

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["X"] = np.zeros(3)
    with pytest.raises(ModelFormatError, match="not a ginseng model"):
        load_model(foreign)
    other = _copy(saved, tmp_path, lambda f: f.attrs.__setitem__("format", "other-model"))
    with pytest.raises(ModelFormatError, match="other-model"):
        load_model(other)

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(ModelFormatError):
        load_model(truncated)


def test_newer_version_and_missing_parts(saved, tmp_path):
    newer = _copy(saved, tmp_path, lambda f: f.attrs.__setitem__("format_version", 99))
    with pytest.raises(ModelFormatError, match=r"version 99.*[Uu]pgrade ginseng"):
        load_model(newer)
    for part in ("genes", "calibration", "params/head/bias", "settings"):
        damaged = _copy(saved, tmp_path, lambda f, part=part: f.__delitem__(part))
        with pytest.raises(ModelFormatError, match="damaged or incomplete"):
            load_model(damaged)


def test_load_model_does_not_import_jax(saved):
    code = (
        "import sys; from ginseng.data.io import load_model; "
        f"s = load_model({str(saved)!r}); assert s.n_genes == 50; "
        "assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
