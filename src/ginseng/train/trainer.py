"""GinsengClassifierTrainer: the jax training loop over a GinsengDataset store."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

import jax
import numpy as np
import optax
from flax import nnx

from .._errors import InputError
from .._logging import logger
from .._logging import progress as progress_bar
from .._trainer_settings import GinsengClassifierTrainerSettings
from .._validate import positive_int
from ..model.network import GinsengClassifier, flat_params, gene_statistics, network_config
from ..model.state import GinsengModelState
from ._devices import DataParallel
from ._loop import (
    EVAL_BATCH,
    HISTORY_COLUMNS,
    Best,
    KeptBatches,
    Steps,
    TrainState,
    Waited,
    calibrate,
    compile_steps,
    evaluate,
    history_row,
    host_copy,
    keep_best,
    log_epoch,
    optimizer,
    schedule,
    split_params,
    train_epoch,
)
from ._provenance import training_provenance
from .augment import Augmentation
from .calibration import holdout_split
from .uncertainty import fit_reference_uncertainty

if TYPE_CHECKING:
    from ..data.dataset import GinsengDataset

# Cells read to fit the per-gene standardisation: the store is shuffled, so the first
# batches are a random sample and the estimate is stable long before a full pass.
STATS_CELLS = 50_000
# The holdout batches are kept in memory (sparse) between evaluations while they take
# at most this many bytes. The holdout's cells lie in every block of the store, so
# streaming them decodes the whole store: at 100k cells x 2k genes 0.45 s an epoch,
# a tenth of the epoch's training, for 10k cells that take ~50 MB kept.
HOLDOUT_KEEP_BYTES = 128 * 2**20


class _StreamBuffers(TypedDict):
    block_size: int
    buffer_size: int


# Rows per contiguous read and per shuffle buffer of the store stream. The store's rows
# are already shuffled, so small buffers mix as well; the default 16k-row buffer (with
# its prefetched successor and copies) held ~300 MB at 3k genes, these ~90 MB.
STREAM_BUFFERS = _StreamBuffers(block_size=2048, buffer_size=4096)


class FitResult(NamedTuple):
    """What :meth:`GinsengClassifierTrainer.fit` returns; unpacks as ``model, state``."""

    model: GinsengClassifier
    state: GinsengModelState


@dataclass(frozen=True)
class _Plan:
    """The split and the step counts of one run."""

    train_rows: np.ndarray
    test_rows: np.ndarray
    realised_fraction: float
    batch_size: int  # cells per step, over all devices
    passes: int  # over the training cells per epoch
    devices: DataParallel
    stream_rows: np.ndarray  # the training rows this process streams
    steps_per_pass: int

    @property
    def steps_per_epoch(self) -> int:
        return self.passes * self.steps_per_pass


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

    Attributes
    ----------
    stream_rows
        After :meth:`fit`: the store rows of the training split this process streamed;
        all of them in a single process, its share of the store's blocks in a
        multi-host run (:func:`~ginseng.train.init_distributed`).

    Notes
    -----
    Training uses every device JAX sees (``jax.devices()``): with several (GPUs, or CPU
    devices forced with ``JAX_NUM_CPU_DEVICES``), the parameters are replicated and each
    batch is split between the devices along its cells; ``batch_size`` is then rounded
    down to a multiple of the device count. The result is that of one device up to
    float rounding. The devices are recorded in ``state.provenance["devices"]``.

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

    def __init__(
        self, dataset: GinsengDataset, settings: GinsengClassifierTrainerSettings | None = None
    ) -> None:
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
        self.stream_rows = np.zeros(0, np.int64)

    # --------------------------------------------------------------------- fit
    def fit(self, epochs: int = 10, *, progress: bool = True) -> FitResult:
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
        A :class:`~ginseng.train.FitResult`, which unpacks as ``model, state``:

        model
            The trained :class:`~ginseng.model.GinsengClassifier` (Flax NNX module).
        state
            The :class:`~ginseng.model.GinsengModelState` to save, inspect or classify with.

        Raises
        ------
        InputError
            ``epochs`` is not a positive integer, the training split is empty, or the
            holdout loss was NaN in every epoch (training diverged: lower ``lr``).
        """
        epochs = positive_int("epochs", epochs)
        started = time.perf_counter()
        plan = self._plan(epochs)
        self.stream_rows = plan.stream_rows
        holdout = KeptBatches(self._holdout_batches, HOLDOUT_KEEP_BYTES)
        rng = np.random.default_rng(self.settings.seed)
        stream_seeds = rng.integers(0, 2**63, size=(epochs, plan.passes))
        model = self._init_model(plan.batch_size, stats_seed=int(rng.integers(0, 2**63)))
        lr = schedule(self.settings, epochs * plan.steps_per_epoch)
        tx = optimizer(self.settings, lr)
        graphdef, params, rest = split_params(model)
        steps = compile_steps(graphdef, tx, Augmentation.from_settings(self.settings))
        eval_step = steps.eval_step
        steps = steps._replace(train_step_flat=plan.devices.step(steps.train_step_flat))
        # One compiled init, not one eager zeros kernel per parameter shape.
        opt_state = jax.jit(tx.init)(params)
        state = TrainState(*plan.devices.replicate((params, opt_state, rest)))
        state, best = self._train(steps, state, lr, plan, stream_seeds, holdout, progress)
        best_params = jax.device_put(best.params)

        def features(x: np.ndarray) -> tuple[jax.Array, jax.Array]:
            return eval_step(best_params, rest, x)

        model = nnx.merge(graphdef, best_params, rest)
        return self._result(model, best, plan, state, started, features, holdout)

    def _train(
        self,
        steps: Steps,
        state: TrainState,
        schedule: optax.Schedule,
        plan: _Plan,
        stream_seeds: np.ndarray,
        holdout_batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
        progress: bool,
    ) -> tuple[TrainState, Best]:
        """The epochs: train, evaluate on the holdout, keep the best, record the history."""
        label_names = np.asarray(self.dataset.label_names, dtype=str)
        dp = plan.devices
        key = dp.replicate(jax.random.key(self.settings.seed))
        self.history = {column: [] for column in HISTORY_COLUMNS}
        best = Best(np.inf, 0, host_copy(dp.local(state.params)), None)
        # Jitted: evaluated eagerly, the schedule compiles ~12 small kernels (~0.4 s).
        lr_at = jax.jit(schedule)
        epochs = range(1, len(stream_seeds) + 1)
        bar = progress_bar(epochs, desc="training", unit="epoch") if progress else None
        for epoch in epochs if bar is None else bar:
            t0 = time.perf_counter()
            batches = Waited(dp.shard(self._train_batches(plan, stream_seeds[epoch - 1])))
            state, train_loss = train_epoch(steps.train_step_flat, state, batches, key)
            # Each process evaluates the whole holdout on its own copy of the parameters.
            local = state._replace(params=dp.local(state.params), rest=dp.local(state.rest))
            holdout = evaluate(steps.eval_step, local, holdout_batches(), label_names)
            best = keep_best(best, epoch, local.params, holdout)
            row = history_row(epoch, train_loss, holdout, float(lr_at(max(state.step - 1, 0))))
            row["seconds"] = time.perf_counter() - t0
            row["data_wait_seconds"] = batches.seconds
            for column, value in row.items():
                self.history[column].append(value)
            log_epoch(row, len(epochs), bar)
        return state, best

    def _result(
        self,
        model: GinsengClassifier,
        best: Best,
        plan: _Plan,
        state: TrainState,
        started: float,
        features: Callable[[np.ndarray], tuple[Any, Any]],
        holdout_batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
    ) -> FitResult:
        """Calibrate on the kept epoch's holdout logits; the model and its state.

        ``features`` maps :data:`EVAL_BATCH` rows of counts to the kept model's last
        hidden layer and logits (the training's compiled ``eval_step``), for the
        uncertainty statistics; ``holdout_batches`` yields the holdout cells in store
        order, in batches of :data:`EVAL_BATCH`.
        """
        if best.holdout is None:
            raise InputError(
                f"Training diverged: the holdout loss was NaN in every one of the "
                f"{len(self.history['epoch'])} epoch(s) (settings.lr={self.settings.lr}); "
                "lower lr."
            )
        label_names = np.asarray(self.dataset.label_names, dtype=str)
        metrics = calibrate(best.holdout, label_names)
        metrics["best_epoch"] = int(best.epoch)
        metrics["holdout_fraction"] = plan.realised_fraction
        metrics.update(
            holdout_split(self.dataset, plan.test_rows, self.settings.group_level, metrics["ece"])
        )
        model_state = GinsengModelState(
            params=flat_params(model),
            config=model.config,
            genes=np.asarray(self.dataset.gene_names, dtype=str),
            labels=label_names,
            temperature=metrics["temperature"],
            metrics=metrics,
            history=self.history,
            settings=self.settings,
            provenance=training_provenance(self.dataset, self.settings, plan, state.step, started),
        )
        # Hook (issue 15): novelty statistics and conformal scores, on the same holdout.
        model_state.uncertainty = fit_reference_uncertainty(
            model_state, self.dataset, features=features, holdout=holdout_batches
        )
        return FitResult(model, model_state)

    # ------------------------------------------------------------------ pieces
    def _plan(self, epochs: int) -> _Plan:
        """Make the holdout split; choose the batch size and the passes per epoch."""
        s, ds, dp = self.settings, self.dataset, DataParallel.detect()
        dp.first_process(  # with several processes, one writes the split
            ds.make_split, s.holdout_fraction, stratify_group=s.group_level,
            group_mode=s.group_mode, seed=s.seed,
        )  # fmt: skip
        if dp.processes > 1:
            ds.reload_splits()  # process 0 wrote them
        train, test = ds.splits["train"], ds.splits["test"]
        if train.size == 0:
            raise InputError(
                f"The training split is empty ({ds.n_cells} cells, holdout_fraction="
                f"{s.holdout_fraction}); lower holdout_fraction or add cells."
            )
        batch = dp.batch_size(min(s.batch_size, train.size), train.size)
        if batch < s.batch_size:
            why = (
                "the training cells" if batch == train.size else f"a multiple of {dp.count} devices"
            )
            logger.info("batch_size reduced to %d, %s", batch, why)
        rows, per_pass = dp.stream_share(train, batch, STREAM_BUFFERS["block_size"])
        # Small training sets get several passes per epoch, so that training takes at
        # least min_steps optimiser steps whatever the number of cells.
        passes = max(1, math.ceil(s.min_steps / (epochs * per_pass)))
        if passes > 1:
            logger.info(
                "%d passes over the training cells per epoch (min_steps=%d)", passes, s.min_steps
            )
        return _Plan(train, test, test.size / ds.n_cells, batch, passes, dp, rows, per_pass)

    def _init_model(self, batch: int, *, stats_seed: int) -> GinsengClassifier:
        """The network with initial weights and the gene statistics of the training split."""
        s = self.settings
        n_genes, n_labels = len(self.dataset.gene_names), len(self.dataset.label_names)
        if s.upper is not None and s.masking and s.upper >= n_genes:
            logger.warning(
                "upper=%d masks up to every one of the %d genes; lower it for small gene panels",
                s.upper,
                n_genes,
            )
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
        # Fitted with or without standardisation: they impute a query's missing genes.
        mean, scale = gene_statistics(self._statistics_sample(batch, stats_seed), config)
        # device_put: ``jnp.asarray`` would compile a kernel for the shape.
        model.gene_mean.set_value(jax.device_put(np.asarray(mean, np.float32)))
        model.gene_scale.set_value(jax.device_put(np.asarray(scale, np.float32)))
        return model

    def _statistics_sample(self, batch: int, seed: int) -> Iterator[np.ndarray]:
        """Training batches of about STATS_CELLS cells, for the per-gene statistics."""
        seen = 0
        for x, _ in self.dataset.stream(
            batch, "train", shuffle=True, seed=seed, drop_last=False, **STREAM_BUFFERS
        ):
            yield x
            seen += len(x)
            if seen >= STATS_CELLS:
                return

    def _train_batches(
        self, plan: _Plan, seeds: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of training batches: a pass over the training split per seed."""
        for seed in seeds:
            yield from plan.devices.train_stream(
                self.dataset, plan.batch_size, plan.steps_per_pass,
                seed=int(seed), balance_labels=self.settings.balance_train, **STREAM_BUFFERS,
            )  # fmt: skip

    def _holdout_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.dataset.stream(
            EVAL_BATCH, "test", shuffle=False, drop_last=False, **STREAM_BUFFERS
        )
