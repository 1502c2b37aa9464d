"""GinsengClassifierTrainer: the jax training loop over a GinsengDataset store."""

from __future__ import annotations

import math
import time
from collections import deque
from datetime import UTC, datetime
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .._errors import InputError
from .._logging import logger
from .._logging import progress as progress_bar
from .._validate import positive_int
from ..model.network import GinsengClassifier, flat_params, gene_statistics, network_config
from ..model.state import GinsengModelState, data_fingerprint, package_versions
from .augment import Augmentation
from .calibration import calibration_report, classification_metrics
from .settings import GinsengClassifierTrainerSettings

# Cells read to fit the per-gene standardisation: the store is shuffled, so the first
# batches are a random sample and the estimate is stable long before a full pass.
STATS_CELLS = 50_000
# Rows per evaluation call (padded), so the holdout pass compiles once.
EVAL_BATCH = 1024
# Learning-rate warmup: this fraction of all steps, at most WARMUP_MAX steps.
WARMUP_FRACTION = 0.05
WARMUP_MAX = 500
# Rows per contiguous read and per shuffle buffer of the store stream. The store's rows
# are already shuffled, so small buffers mix as well; the default 16k-row buffer (with
# its prefetched successor and copies) held ~300 MB at 3k genes, these ~90 MB.
STREAM_BUFFERS = {"block_size": 2048, "buffer_size": 4096}
# Training steps dispatched ahead of the one the loop waits for.
MAX_IN_FLIGHT = 2


class GinsengClassifierTrainer:
    """Train a :class:`~ginseng.model.GinsengClassifier` on a :class:`~ginseng.data.GinsengDataset`.

    Parameters
    ----------
    dataset
        The store to train from. :meth:`fit` (re)writes its ``"train"``/``"test"`` split
        with ``make_split(settings.holdout_fraction, stratify_group=settings.group_level,
        group_mode=settings.group_mode, seed=settings.seed)``.
    settings
        Hyperparameters; defaults to ``GinsengClassifierTrainerSettings()``.

    Examples
    --------
    Step by step: a store of ``reference`` (raw counts, labels in ``obs["bulk_labels"]``),
    a trainer with its settings, and a fit:

    >>> from ginseng.data import GinsengDataset
    >>> from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings
    >>> dataset = GinsengDataset.create(tmp / "reference.zarr", reference, "bulk_labels")
    >>> settings = GinsengClassifierTrainerSettings(hidden_dim=32, min_steps=50, seed=1)
    >>> trainer = GinsengClassifierTrainer(dataset, settings)
    >>> model, state = trainer.fit(epochs=2)
    >>> state.labels.tolist() == dataset.label_names.tolist()
    True
    >>> state.history["epoch"]
    [1, 2]
    >>> sorted(dataset.splits)  # the holdout split fit() made
    ['test', 'train']
    """

    def __init__(self, dataset, settings: GinsengClassifierTrainerSettings | None = None) -> None:
        settings = GinsengClassifierTrainerSettings() if settings is None else settings
        if not isinstance(settings, GinsengClassifierTrainerSettings):
            raise InputError(
                f"settings must be a GinsengClassifierTrainerSettings, got {type(settings).__name__}."
            )
        for attr in ("make_split", "stream", "labels", "label_names", "gene_names"):
            if not hasattr(dataset, attr):
                raise InputError(
                    f"dataset must be a GinsengDataset (missing {attr!r}), got {type(dataset).__name__}."
                )
        if settings.group_level and dataset.group_names is None:
            raise InputError(
                "settings.group_level=True holds out whole groups, but the store at "
                f"{str(getattr(dataset, 'path', '?'))!r} has no groups; create it with "
                "group_key=... (e.g. the donor or batch column) or set group_level=False."
            )
        self.dataset = dataset
        self.settings = settings
        self.history: dict[str, list] = {}

    # ------------------------------------------------------------------ pieces
    def _split(self) -> tuple[np.ndarray, np.ndarray, float]:
        s, ds = self.settings, self.dataset
        realised = ds.make_split(
            s.holdout_fraction, stratify_group=s.group_level, group_mode=s.group_mode, seed=s.seed
        )
        splits = ds.splits
        train, test = splits["train"], splits["test"]
        if train.size == 0:
            raise InputError(
                f"The training split is empty ({ds.n_cells} cells, holdout_fraction="
                f"{s.holdout_fraction}); lower holdout_fraction or add cells."
            )
        return train, test, float(realised)

    def _schedule(self, total_steps: int) -> optax.Schedule:
        s = self.settings
        warmup = max(1, min(WARMUP_MAX, int(WARMUP_FRACTION * total_steps)))
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=s.lr,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=s.lr / 100,
        )

    def _optimizer(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        s = self.settings
        # Decay weight matrices only: decaying LayerNorm scales and biases only hurts.
        return optax.adamw(
            schedule,
            b1=s.betas[0],
            b2=s.betas[1],
            eps=s.eps,
            weight_decay=s.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
        )

    def _fit_standardization(self, model: GinsengClassifier, batch: int, seed: int) -> None:
        def sample():
            seen = 0
            for x, _ in self.dataset.stream(
                batch, "train", shuffle=True, seed=seed, drop_last=False, **STREAM_BUFFERS
            ):
                yield x
                seen += len(x)
                if seen >= STATS_CELLS:
                    return

        mean, scale = gene_statistics(sample(), model.config)
        model.gene_mean[...] = jnp.asarray(mean)
        model.gene_scale[...] = jnp.asarray(scale)

    def _evaluate(self, evaluate, params, rest, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
        logits, labels = [], []
        for x, y in self.dataset.stream(
            EVAL_BATCH, "test", shuffle=False, drop_last=False, **STREAM_BUFFERS
        ):
            m = len(y)
            if m < EVAL_BATCH:
                x = np.concatenate([x, np.zeros((EVAL_BATCH - m, x.shape[1]), x.dtype)])
            logits.append(np.asarray(evaluate(params, rest, x))[:m])
            labels.append(y)
        if not logits:
            return np.zeros((0, n_labels), np.float32), np.zeros(0, np.int32)
        return np.concatenate(logits), np.concatenate(labels)

    # --------------------------------------------------------------------- fit
    def fit(
        self, epochs: int = 10, *, progress: bool = True
    ) -> tuple[GinsengClassifier, GinsengModelState]:
        """Train for ``epochs`` passes over the training split.

        A small training split is passed over several times per epoch so that the run
        has at least ``settings.min_steps`` optimiser steps.

        Each epoch logs the training loss and the holdout loss, accuracy and macro-F1
        (evaluation mode, no dropout or augmentation). The weights of the epoch with the
        lowest holdout loss are kept. Afterwards a temperature is fitted on the holdout
        logits (calibration) and the holdout metrics are recorded before and after it.

        Parameters
        ----------
        epochs
            Passes over the training split.
        progress
            Show a progress bar (also subject to ``ginseng.settings.progress_bar``).

        Returns
        -------
        model
            The trained :class:`~ginseng.model.GinsengClassifier` (Flax NNX module).
        state
            The :class:`~ginseng.model.GinsengModelState` to save, inspect or classify with.
        """
        epochs = positive_int("epochs", epochs)
        s, ds = self.settings, self.dataset
        started = time.perf_counter()
        train_rows, test_rows, realised = self._split()
        batch = min(s.batch_size, train_rows.size)
        if batch < s.batch_size:
            logger.info("batch_size reduced to %d, the number of training cells", batch)
        # Small training sets get several passes per epoch, so that training takes at
        # least min_steps optimiser steps whatever the number of cells.
        passes = max(1, math.ceil(s.min_steps / (epochs * (train_rows.size // batch))))
        if passes > 1:
            logger.info(
                "%d passes over the training cells per epoch (min_steps=%d)", passes, s.min_steps
            )
        steps_per_epoch = passes * (train_rows.size // batch)
        label_names = np.asarray(ds.label_names, dtype=str)
        gene_names = np.asarray(ds.gene_names, dtype=str)
        n_labels, n_genes = len(label_names), len(gene_names)
        if s.masking and s.upper >= n_genes:
            logger.warning(
                "upper=%d masks up to every one of the %d genes; lower it for small gene panels",
                s.upper,
                n_genes,
            )

        rng = np.random.default_rng(s.seed)
        stream_seeds = rng.integers(0, 2**63, size=(epochs, passes))
        stats_seed = int(rng.integers(0, 2**63))
        config = network_config(
            n_genes,
            n_labels,
            hidden_dim=s.hidden_dim,
            n_layers=s.n_layers,
            dropout_rate=s.dropout_rate,
            normalize=s.normalize,
            target_sum=s.target_sum,
            standardize=s.standardize,
        )
        model = GinsengClassifier(config, rngs=nnx.Rngs(s.seed))
        if s.standardize:
            self._fit_standardization(model, batch, stats_seed)

        schedule = self._schedule(epochs * steps_per_epoch)
        tx = self._optimizer(schedule)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        opt_state = tx.init(params)
        train_step, evaluate = _compile(graphdef, tx, Augmentation.from_settings(s))
        base_key = jax.random.key(s.seed)

        history: dict[str, list] = {
            k: []
            for k in (
                "epoch",
                "train_loss",
                "holdout_loss",
                "holdout_accuracy",
                "holdout_macro_f1",
                "lr",
                "seconds",
            )
        }
        best = (np.inf, 0, jax.tree.map(jnp.copy, params), None, None)
        step = 0
        epoch_iter = range(1, epochs + 1)
        bar = progress_bar(epoch_iter, desc="training", unit="epoch") if progress else epoch_iter
        for epoch in bar:
            t0 = time.perf_counter()
            in_flight: deque = deque()
            loss_sum, n_losses = 0.0, 0
            for seed in stream_seeds[epoch - 1]:
                for x, y in ds.stream(
                    batch, "train", shuffle=True, balance_labels=s.balance_train,
                    seed=int(seed), drop_last=True, **STREAM_BUFFERS,
                ):  # fmt: skip
                    params, opt_state, loss = train_step(
                        params, opt_state, rest, x, y, base_key, np.int32(step)
                    )
                    step += 1
                    # jax dispatches asynchronously: unchecked, the loop would read the
                    # whole epoch ahead and hold every batch in memory (~1 GB at 100k
                    # cells x 3k genes). Waiting for the step MAX_IN_FLIGHT back keeps
                    # reading and computing overlapped with bounded memory.
                    in_flight.append(loss)
                    if len(in_flight) > MAX_IN_FLIGHT:
                        loss_sum += float(in_flight.popleft())
                        n_losses += 1
            n_losses += len(in_flight)
            loss_sum += sum(float(v) for v in in_flight)
            train_loss = loss_sum / n_losses if n_losses else float("nan")
            logits, labels = self._evaluate(evaluate, params, rest, n_labels)
            m = classification_metrics(logits, labels, label_names) if len(labels) else {}
            hold_loss = m.get("nll", float("nan"))
            if len(labels) == 0 or hold_loss < best[0]:
                # A copy: the training step reuses (donates) the buffers of params.
                kept = jax.tree.map(jnp.copy, params)
                best = (hold_loss if len(labels) else np.inf, epoch, kept, logits, labels)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "holdout_loss": hold_loss,
                "holdout_accuracy": m.get("accuracy", float("nan")),
                "holdout_macro_f1": m.get("macro_f1", float("nan")),
                "lr": float(schedule(max(step - 1, 0))),
                "seconds": time.perf_counter() - t0,
            }
            for k, v in row.items():
                history[k].append(v)
            logger.info(
                "epoch %d/%d: train loss %.4f, holdout loss %.4f, accuracy %.4f, macro-F1 %.4f",
                epoch, epochs, train_loss, hold_loss, row["holdout_accuracy"], row["holdout_macro_f1"],
            )  # fmt: skip
            if bar is not epoch_iter:
                bar.set_postfix(
                    loss=f"{train_loss:.3f}", holdout_acc=f"{row['holdout_accuracy']:.3f}"
                )
        self.history = history

        _, best_epoch, params, logits, labels = best
        model = nnx.merge(graphdef, params, rest)
        metrics = calibration_report(logits, labels, label_names)
        metrics["best_epoch"] = int(best_epoch)
        metrics["holdout_fraction"] = realised
        state = GinsengModelState(
            params=flat_params(model),
            config=config,
            genes=gene_names,
            labels=label_names,
            temperature=metrics["temperature"],
            metrics=metrics,
            history=history,
            settings=s,
            provenance=self._provenance(train_rows, test_rows, batch, step, passes, started),
        )
        return model, state

    def _provenance(
        self, train_rows, test_rows, batch: int, steps: int, passes: int, started: float
    ) -> dict[str, Any]:
        ds = self.dataset
        label_names = np.asarray(ds.label_names, dtype=str)
        counts = np.bincount(np.asarray(ds.labels), minlength=len(label_names))
        return {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "seed": self.settings.seed,
            "data_fingerprint": data_fingerprint(ds.gene_names, label_names, counts),
            "store": str(getattr(ds, "path", "")),
            "n_cells": int(counts.sum()),
            "n_train": int(train_rows.size),
            "n_holdout": int(test_rows.size),
            "label_counts": {str(k): int(v) for k, v in zip(label_names, counts, strict=True)},
            "batch_size": int(batch),
            "steps": int(steps),
            "passes_per_epoch": int(passes),
            "train_seconds": round(time.perf_counter() - started, 2),
            "device": str(jax.devices()[0].platform),
        }


def _compile(graphdef, tx: optax.GradientTransformation, augment: Augmentation):
    """Return jitted ``train_step`` and ``evaluate`` over split model state.

    Jitting pure functions of ``(params, opt_state, rest, x, y, key, step)`` with the
    graph definition closed over avoids ``nnx.jit``'s per-call graph traversal; batch
    shapes are fixed, so each compiles once. The step's key is derived inside (one
    dispatch per step, not two), and the parameter and optimiser buffers are donated,
    so they are updated in place rather than reallocated every step.
    """

    @partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, rest, x, y, base_key, step):
        k_aug, k_drop = jax.random.split(jax.random.fold_in(base_key, step))
        if augment.active:
            x = augment(k_aug, x)

        def loss_fn(params):
            logits = nnx.merge(graphdef, params, rest)(x, key=k_drop)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def evaluate(params, rest, x):
        return nnx.merge(graphdef, params, rest)(x)

    return train_step, evaluate
