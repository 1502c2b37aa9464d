"""GinsengClassifierTrainerSettings: validation, immutability and JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from ginseng import InputError
from ginseng.train import GinsengClassifierTrainerSettings as Settings

SEED_EXAMPLE = {
    "rate": 0.1,
    "lam_max": None,
    "lower": 0,
    "upper": 200,
    "hidden_dim": 64,
    "dropout_rate": 0.2,
    "batch_size": 128,
    "lr": 0.001,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.01,
    "normalize": True,
    "target_sum": 1e4,
    "holdout_fraction": 0.05,
    "balance_train": True,
    "group_level": False,
    "group_mode": "fraction",
    "seed": 123,
}


def test_defaults_and_seed_example_are_valid():
    Settings()
    s = Settings(**SEED_EXAMPLE)
    for key, value in SEED_EXAMPLE.items():
        assert getattr(s, key) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rate", -0.1),
        ("rate", 1.0),
        ("rate", 1.5),
        ("rate", float("nan")),
        ("rate", "0.1"),
        ("lam_max", -1.0),
        ("lower", -1),
        ("upper", -5),
        ("lower", 1.5),
        ("hidden_dim", 0),
        ("hidden_dim", 32.0),
        ("n_layers", 0),
        ("dropout_rate", 1.0),
        ("dropout_rate", -0.2),
        ("batch_size", 0),
        ("batch_size", -1),
        ("min_steps", -1),
        ("min_steps", 2.5),
        ("min_steps", True),
        ("min_steps", None),
        ("lr", 0),
        ("lr", -1e-3),
        ("eps", 0.0),
        ("weight_decay", -0.1),
        ("betas", (0.9, 1.0)),
        ("betas", (-0.1, 0.9)),
        ("betas", (0.9,)),
        ("betas", 0.9),
        ("target_sum", 0),
        ("target_sum", -1e4),
        ("holdout_fraction", 0.0),
        ("holdout_fraction", 1.0),
        ("group_mode", "donors"),
        ("normalize", "yes"),
        ("standardize", "no"),
        ("standardize", 1),
        ("standardize", None),
        ("balance_train", 1),
        ("group_level", None),
        ("seed", -1),
        ("seed", 1.5),
    ],
)
def test_invalid_values_raise_input_error_naming_the_field(field, value):
    with pytest.raises(InputError, match=field):
        Settings(**{field: value})


def test_lower_above_upper_is_rejected():
    with pytest.raises(InputError, match="lower"):
        Settings(lower=10, upper=5)
    assert Settings(lower=5, upper=5).masking
    assert not Settings(upper=None).masking
    assert not Settings(lower=None, upper=0).masking


def test_switches_off_with_none():
    s = Settings(rate=None, lam_max=None, lower=None, upper=None)
    assert s.rate is None and not s.masking


def test_frozen_and_replace_validates():
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lr = 0.1
    assert s.replace(lr=0.1).lr == 0.1
    with pytest.raises(InputError, match="lr"):
        s.replace(lr=-1.0)
    with pytest.raises(InputError, match="learning_rate"):
        s.replace(learning_rate=0.1)
    with pytest.raises(InputError, match="rate"):
        dataclasses.replace(s, rate=2.0)


def test_numpy_scalars_are_accepted_and_become_python_values():
    s = Settings(lr=np.float32(1e-3), hidden_dim=np.int64(16), betas=[np.float64(0.8), 0.99])
    assert type(s.hidden_dim) is int and type(s.lr) is float
    assert s.betas == (0.8, 0.99)
    parsed = json.loads(s.to_json())
    lr = float(np.float32(1e-3))  # the float32 value, exactly
    assert parsed == {**Settings().to_dict(), "lr": lr, "hidden_dim": 16, "betas": [0.8, 0.99]}
    assert type(parsed["hidden_dim"]) is int


def test_json_and_dict_round_trip_keep_tuples():
    s = Settings(**SEED_EXAMPLE)
    again = Settings.from_json(s.to_json())
    assert again == s
    assert isinstance(again.betas, tuple)
    assert Settings.from_dict(s.to_dict()) == s
    parsed = json.loads(s.to_json())
    expected = {**Settings().to_dict(), **SEED_EXAMPLE, "betas": [0.9, 0.999]}
    assert parsed == expected and parsed["lam_max"] is None


def test_from_dict_and_json_reject_unknown_or_malformed():
    with pytest.raises(InputError, match="hidden"):
        Settings.from_dict({"hidden": 3})
    with pytest.raises(InputError, match="JSON"):
        Settings.from_json("{not json")
    with pytest.raises(InputError, match="object"):
        Settings.from_json("[1, 2]")


def test_settings_import_does_not_import_jax():
    code = (
        "import sys; from ginseng.train import GinsengClassifierTrainerSettings; "
        "import ginseng.data.io, ginseng.model; "
        "from ginseng.model import GinsengModelState, load_model; "
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
