"""GinsengClassifierTrainer.fit's result type and its refusal of a diverged run."""

from __future__ import annotations

import numpy as np
import pytest

from ginseng import InputError
from ginseng.data import GinsengDataset
from ginseng.model import GinsengClassifier, GinsengModelState
from ginseng.train import FitResult, GinsengClassifierTrainer, GinsengClassifierTrainerSettings

TINY = {"hidden_dim": 8, "batch_size": 32, "upper": 5, "min_steps": 20, "seed": 2}


@pytest.fixture(scope="module")
def store(tmp_path_factory, make_toy):
    adata = make_toy(n_cells=200, n_genes=20, n_types=3, seed=4)
    return GinsengDataset.create(tmp_path_factory.mktemp("loop") / "l.zarr", adata, "cell_type")


def test_fit_result_has_names_and_unpacks_as_model_state(store):
    trainer = GinsengClassifierTrainer(store, GinsengClassifierTrainerSettings(**TINY))
    result = trainer.fit(2, progress=False)
    assert isinstance(result, FitResult)
    model, state = result
    assert model is result.model and state is result.state
    assert isinstance(model, GinsengClassifier) and isinstance(state, GinsengModelState)
    # The returned network is the kept epoch's: it predicts what the state predicts.
    x = np.random.default_rng(0).poisson(30.0, (5, store.n_genes)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), state.predict_logits(x), rtol=1e-5, atol=1e-5)
    assert trainer.history["epoch"] == [1, 2] == state.history["epoch"]


def test_diverged_training_is_refused_with_a_message_naming_lr(store):
    # A huge learning rate makes the weights NaN after the first steps: no epoch has a
    # finite holdout loss, so there is no epoch to keep and nothing to calibrate.
    settings = GinsengClassifierTrainerSettings(**TINY, lr=1e30, normalize=False, standardize=False)
    with pytest.raises(InputError, match=r"diverged.*lr=1e\+30"):
        GinsengClassifierTrainer(store, settings).fit(2, progress=False)


def test_history_records_the_seconds_spent_waiting_for_data(store):
    epochs = 3
    state = (
        GinsengClassifierTrainer(store, GinsengClassifierTrainerSettings(**TINY))
        .fit(epochs, progress=False)
        .state
    )
    waits, seconds = state.history["data_wait_seconds"], state.history["seconds"]
    assert len(waits) == len(seconds) == epochs
    # Getting each batch (reading, densifying) takes time, but less than the epoch,
    # which also trains and evaluates the holdout.
    assert all(0 < wait < total for wait, total in zip(waits, seconds, strict=True))
    assert sum(waits) < state.provenance["train_seconds"]
