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


def _fit_counting_holdout_reads(store, monkeypatch, epochs):
    """Fit, counting the streams of the holdout ("test") split."""
    reads = []
    stream = GinsengDataset.stream

    def counted(self, *args, **kwargs):
        split = args[1] if len(args) > 1 else kwargs.get("split", "train")
        reads.append(split)
        return stream(self, *args, **kwargs)

    monkeypatch.setattr(GinsengDataset, "stream", counted)
    settings = GinsengClassifierTrainerSettings(**TINY)
    state = GinsengClassifierTrainer(store, settings).fit(epochs, progress=False).state
    monkeypatch.undo()
    return state, reads.count("test")


def test_holdout_kept_in_memory_gives_the_streamed_results(store, monkeypatch):
    import ginseng.train.trainer as trainer_module

    epochs = 3
    kept, kept_reads = _fit_counting_holdout_reads(store, monkeypatch, epochs)
    monkeypatch.setattr(trainer_module, "HOLDOUT_KEEP_BYTES", 0)  # nothing fits: stream
    streamed, streamed_reads = _fit_counting_holdout_reads(store, monkeypatch, epochs)
    # Read once instead of once per epoch and once more for the uncertainty statistics.
    assert (kept_reads, streamed_reads) == (1, epochs + 1)
    for column in ("train_loss", "holdout_loss", "holdout_accuracy", "holdout_macro_f1"):
        assert kept.history[column] == streamed.history[column], column
    assert kept.metrics == streamed.metrics
    for name, value in streamed.params.items():
        np.testing.assert_array_equal(kept.params[name], value, err_msg=name)
    for name, value in streamed.uncertainty.arrays().items():
        np.testing.assert_array_equal(kept.uncertainty.arrays()[name], value, err_msg=name)


def test_the_flat_training_step_takes_the_same_steps_as_the_tree_one():
    # The loop calls train_step_flat (the state's leaves, flattened once per epoch);
    # it must be the very step train_step takes on the pytrees, augmentation included.
    import jax
    from flax import nnx

    from ginseng.model.network import network_config
    from ginseng.train._loop import compile_steps, optimizer, schedule, split_params
    from ginseng.train.augment import Augmentation

    settings = GinsengClassifierTrainerSettings(**TINY)
    tx = optimizer(settings, schedule(settings, 10))
    rng = np.random.default_rng(0)
    xs = rng.poisson(3.0, (3, 16, 20)).astype(np.float32)
    ys = rng.integers(0, 3, (3, 16)).astype(np.int32)
    key = jax.random.key(0)

    def fresh():
        model = GinsengClassifier(network_config(20, 3, hidden_dim=8), rngs=nnx.Rngs(0))
        graphdef, params, rest = split_params(model)
        return compile_steps(graphdef, tx, Augmentation.from_settings(settings)), params, rest

    steps, params, rest = fresh()
    opt_state = tx.init(params)
    tree_losses = []
    for i in range(3):
        params, opt_state, loss = steps.train_step(
            params, opt_state, rest, xs[i], ys[i], key, np.int32(i)
        )
        tree_losses.append(float(loss))

    steps, flat_params, rest = fresh()
    leaves, state_def = jax.tree.flatten((flat_params, tx.init(flat_params)))
    rest_leaves, rest_def = jax.tree.flatten(rest)
    flat_losses = []
    for i in range(3):
        leaves, loss = steps.train_step_flat(
            leaves, rest_leaves, xs[i], ys[i], key, np.int32(i), (state_def, rest_def)
        )
        flat_losses.append(float(loss))
    flat_params, _ = jax.tree.unflatten(state_def, leaves)

    assert flat_losses == tree_losses and len(set(tree_losses)) == 3
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(flat_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
