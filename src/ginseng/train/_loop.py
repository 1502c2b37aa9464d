"""The pieces of the training loop, shaped as in flax's examples.

- :func:`schedule` and :func:`optimizer`: the learning-rate schedule and AdamW, from
  the settings alone;
- :func:`compile_steps`: the jitted ``train_step`` (one optimiser step on one batch)
  and ``eval_step`` (last hidden layer and logits of one batch), over the split model
  state;
- :func:`train_epoch`: one pass of ``train_step`` over a stream of batches;
- :func:`evaluate`: the holdout logits and labels;
- :func:`keep_best`: the epoch with the lowest holdout loss so far;
- :func:`calibrate`: the temperature and the holdout metrics of the kept epoch.

The model is split once (``nnx.split(model, nnx.Param, ...)``) into its graph, its
trained parameters and the rest (the fixed per-gene preprocessing); the steps are pure
functions of those, so jax traces each once.

On a small reference the XLA compilations, not the steps, are most of a default run's
cost (~0.03-0.3 s each on CPU), so nothing here runs an eager ``jnp`` operation
(each compiles a kernel per shape): the kept weights are copied to the host, and the
holdout pass and the reference pass of the uncertainty share one compiled
``eval_step`` shape (:data:`EVAL_BATCH` rows).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
import scipy.sparse as sp
from flax import nnx

from .._logging import logger
from .._trainer_settings import GinsengClassifierTrainerSettings
from .augment import Augmentation
from .calibration import calibration_report, classification_metrics

# Training steps dispatched ahead of the one the loop waits for.
MAX_IN_FLIGHT = 2
# Rows per evaluation call (padded), so the holdout pass compiles once.
EVAL_BATCH = 1024

Batches = Iterable[tuple[np.ndarray, np.ndarray]]
# The per-epoch record (GinsengModelState.history), one list per column.
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "holdout_loss",
    "holdout_accuracy",
    "holdout_macro_f1",
    "lr",
    "seconds",
    "data_wait_seconds",
)


class Waited:
    """Iterate over ``items``, adding up in :attr:`seconds` the time spent getting each.

    Wrapped around the training batches, it measures how long the loop waited for data
    (reading ahead, densifying, the reader thread) rather than dispatching steps: the
    ``data_wait_seconds`` of the history.
    """

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = iter(items)
        self.seconds = 0.0

    def __iter__(self) -> Waited:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self._items)
        finally:
            self.seconds += time.perf_counter() - start


class KeptBatches:
    """Batches of a stream, kept in memory (sparse) after the first pass if they fit.

    Calling it yields the batches: the first time from ``stream()``, keeping a CSR copy
    of each; afterwards from that copy, densified one batch at a time (the same float32
    values). When the copy would exceed ``budget`` bytes, nothing is kept and every call
    streams again. A pass stopped early keeps nothing either.
    """

    def __init__(self, stream: Callable[[], Batches], budget: int) -> None:
        self._stream, self._budget = stream, budget
        self._kept: list[tuple[sp.csr_matrix, np.ndarray]] | None = None
        self._fits = True

    @property
    def kept(self) -> bool:
        """Whether the batches are in memory."""
        return self._kept is not None

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._kept is not None:
            for x, y in self._kept:
                yield x.toarray(), y
            return
        kept: list[tuple[sp.csr_matrix, np.ndarray]] = []
        size = 0
        for x, y in self._stream():
            if self._fits:
                sparse = sp.csr_matrix(x)
                size += sum(a.nbytes for a in (sparse.data, sparse.indices, sparse.indptr, y))
                self._fits = size <= self._budget
                if self._fits:
                    kept.append((sparse, y))
                else:
                    kept.clear()
            yield x, y
        if self._fits:
            self._kept = kept


# Learning-rate warmup: this fraction of all steps, at most WARMUP_MAX steps.
WARMUP_FRACTION = 0.05
WARMUP_MAX = 500


def schedule(settings: GinsengClassifierTrainerSettings, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``settings.lr``, then cosine decay to a hundredth of it."""
    warmup = max(1, min(WARMUP_MAX, int(WARMUP_FRACTION * total_steps)))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=settings.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=settings.lr / 100,
    )


def optimizer(
    settings: GinsengClassifierTrainerSettings, lr: optax.Schedule
) -> optax.GradientTransformation:
    """AdamW with the settings' betas, eps and weight decay, following ``lr``."""
    # Decay weight matrices only: decaying LayerNorm scales and biases only hurts.
    return optax.adamw(
        lr,
        b1=settings.betas[0],
        b2=settings.betas[1],
        eps=settings.eps,
        weight_decay=settings.weight_decay,
        mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
    )


class TrainState(NamedTuple):
    """What changes from step to step: parameters, optimiser state and step count."""

    params: Any  # nnx.State of the trained parameters
    opt_state: optax.OptState
    rest: Any  # nnx.State of everything else (the fixed preprocessing)
    step: int = 0


class Steps(NamedTuple):
    """The jitted step functions of one model graph and optimiser.

    ``train_step`` takes and returns the parameters and optimiser state as pytrees;
    ``train_step_flat`` is the same step over their flat leaves (see
    :func:`compile_steps`), which the training loop calls.
    """

    train_step: Callable[..., tuple[Any, optax.OptState, jax.Array]]
    eval_step: Callable[[Any, Any, np.ndarray], tuple[jax.Array, jax.Array]]
    train_step_flat: Callable[..., tuple[list[Any], jax.Array]]


class Holdout(NamedTuple):
    """Holdout logits (cells x labels) and label codes, and their metrics."""

    logits: np.ndarray
    labels: np.ndarray
    metrics: dict[str, Any]

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood (NaN without holdout cells)."""
        return self.metrics.get("nll", math.nan)


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """The model's graph, its trained parameters and the rest (the fixed preprocessing)."""
    graphdef, params, *rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest[0]


def compile_steps(graphdef: Any, tx: optax.GradientTransformation, augment: Augmentation) -> Steps:
    """Return the jitted ``train_step`` and ``eval_step`` over split model state.

    ``train_step(params, opt_state, rest, x, y, base_key, step)`` augments the batch,
    applies dropout and takes one optimiser step, returning ``(params, opt_state,
    loss)``; ``eval_step(params, rest, x)`` returns the last hidden layer's output and
    the logits in evaluation mode (the hidden layer feeds the novelty statistics).

    Jitting pure functions with the graph definition closed over avoids ``nnx.jit``'s
    per-call graph traversal; batch shapes are fixed, so each compiles once. The
    step's key is derived inside (one dispatch per step, not two), and the parameter
    and optimiser buffers are donated, so they are updated in place rather than
    reallocated every step.

    ``train_step_flat(leaves, rest_leaves, x, y, base_key, step, treedefs)`` is the
    same step over ``jax.tree.flatten((params, opt_state))``'s leaves and ``rest``'s,
    returning the new leaves and the loss; ``treedefs`` (static) rebuilds the trees
    inside. jax flattens ``nnx.State`` in Python on every call; a flat list is
    flattened in C++, which saves ~0.3 ms of main-thread CPU per step on CPU (0.88
    -> 0.57 ms for 256 cells x 2,000 genes).
    """

    def step_fn(
        params: Any,
        opt_state: optax.OptState,
        rest: Any,
        x: jax.Array,
        y: jax.Array,
        base_key: jax.Array,
        step: jax.Array,
    ) -> tuple[Any, optax.OptState, jax.Array]:
        k_aug, k_drop = jax.random.split(jax.random.fold_in(base_key, step))
        present = None
        if augment.active:
            x, present = augment.with_mask(k_aug, x)
            if augment.mask_as != "unknown":
                present = None

        def loss_fn(params: Any) -> jax.Array:
            model = nnx.merge(graphdef, params, rest)
            if present is None:
                logits = model(x, key=k_drop)
            else:  # masked genes are unknown, as a query's missing genes are
                share = model.present_share(present)
                logits = model(x, key=k_drop, present=present, share=share)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    train_step = partial(jax.jit, donate_argnums=(0, 1))(step_fn)

    @partial(jax.jit, donate_argnums=(0,), static_argnums=(6,))
    def train_step_flat(
        leaves: list[Any],
        rest_leaves: list[Any],
        x: jax.Array,
        y: jax.Array,
        base_key: jax.Array,
        step: jax.Array,
        treedefs: tuple[Any, Any],
    ) -> tuple[list[Any], jax.Array]:
        state_def, rest_def = treedefs
        params, opt_state = jax.tree.unflatten(state_def, leaves)
        rest = jax.tree.unflatten(rest_def, rest_leaves)
        params, opt_state, loss = step_fn(params, opt_state, rest, x, y, base_key, step)
        return jax.tree.leaves((params, opt_state)), loss

    @jax.jit
    def eval_step(params: Any, rest: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        # As GinsengModelState's compiled forward: model(x) with the hidden layer kept.
        model = nnx.merge(graphdef, params, rest)
        hidden = model.hidden_from_first_linear(model.blocks[0].linear(model.preprocess(x)))
        return hidden, model.head(hidden)

    return Steps(train_step, eval_step, train_step_flat)


def train_epoch(
    train_step: Callable[..., Any], state: TrainState, batches: Batches, key: jax.Array
) -> tuple[TrainState, float]:
    """Run ``train_step`` on every batch; return the new state and the mean training loss.

    ``train_step`` is a :class:`Steps`' ``train_step_flat``: the state is flattened
    once here, not at every step. The step's random key is ``fold_in(key, step)``, so
    the global step count (not the epoch) decides augmentation and dropout.
    """
    leaves, state_def = jax.tree.flatten((state.params, state.opt_state))
    rest_leaves, rest_def = jax.tree.flatten(state.rest)
    treedefs, step = (state_def, rest_def), state.step
    in_flight: deque[jax.Array] = deque()
    loss_sum, n_losses = 0.0, 0
    for x, y in batches:
        leaves, loss = train_step(leaves, rest_leaves, x, y, key, np.int32(step), treedefs)
        step += 1
        # jax dispatches asynchronously: unchecked, the loop would read the whole epoch
        # ahead and hold every batch in memory (~1 GB at 100k cells x 3k genes).
        # Waiting for the step MAX_IN_FLIGHT back keeps reading and computing
        # overlapped with bounded memory.
        in_flight.append(loss)
        if len(in_flight) > MAX_IN_FLIGHT:
            loss_sum += float(in_flight.popleft())
            n_losses += 1
    n_losses += len(in_flight)
    loss_sum += sum(float(v) for v in in_flight)
    mean_loss = loss_sum / n_losses if n_losses else float("nan")
    params, opt_state = jax.tree.unflatten(state_def, leaves)
    return TrainState(params, opt_state, state.rest, step), mean_loss


def evaluate(
    eval_step: Callable[[Any, Any, np.ndarray], tuple[jax.Array, jax.Array]],
    state: TrainState,
    batches: Batches,
    label_names: np.ndarray,
) -> Holdout:
    """Logits of every holdout batch (padded to :data:`EVAL_BATCH` rows) and their metrics."""
    logits, labels = [], []
    for x, y in batches:
        logits.append(np.asarray(eval_step(state.params, state.rest, pad_rows(x))[1])[: len(y)])
        labels.append(y)
    if not logits:
        return Holdout(np.zeros((0, len(label_names)), np.float32), np.zeros(0, np.int32), {})
    all_logits, all_labels = np.concatenate(logits), np.concatenate(labels)
    return Holdout(
        all_logits, all_labels, classification_metrics(all_logits, all_labels, label_names)
    )


def pad_rows(x: np.ndarray, rows: int = EVAL_BATCH) -> np.ndarray:
    """``x`` with zero rows appended up to ``rows``, so every call has one shape (one compile)."""
    if len(x) >= rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)])


def host_copy(tree: Any) -> Any:
    """A numpy copy of every array of ``tree``: no XLA kernel to compile (``jnp.copy`` is one per shape)."""
    return jax.tree.map(np.array, tree)


def calibrate(holdout: Holdout, label_names: np.ndarray) -> dict[str, Any]:
    """Fit the temperature on the holdout logits; the metrics before and after it."""
    return calibration_report(holdout.logits, holdout.labels, label_names)


class Best(NamedTuple):
    """The epoch with the lowest holdout loss so far, with a host (numpy) copy of its parameters."""

    loss: float
    epoch: int
    params: Any
    holdout: Holdout | None


def keep_best(best: Best, epoch: int, params: Any, holdout: Holdout) -> Best:
    """``best``, or this epoch if its holdout loss is lower (or there is no holdout)."""
    if len(holdout.labels) == 0:
        return Best(np.inf, epoch, host_copy(params), holdout)
    if holdout.loss < best.loss:
        # A copy: the training step reuses (donates) the buffers of params.
        return Best(holdout.loss, epoch, host_copy(params), holdout)
    return best


def history_row(epoch: int, train_loss: float, holdout: Holdout, lr: float) -> dict[str, Any]:
    """One epoch's entries of the history (all columns but the two timings)."""
    m = holdout.metrics
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "holdout_loss": holdout.loss,
        "holdout_accuracy": m.get("accuracy", float("nan")),
        "holdout_macro_f1": m.get("macro_f1", float("nan")),
        "lr": lr,
    }


def log_epoch(row: dict[str, Any], epochs: int, bar: Any) -> None:
    """Log one epoch's history row and show its loss and accuracy on the progress bar."""
    logger.info(
        "epoch %d/%d: train loss %.4f, holdout loss %.4f, accuracy %.4f, macro-F1 %.4f",
        row["epoch"], epochs, row["train_loss"], row["holdout_loss"],
        row["holdout_accuracy"], row["holdout_macro_f1"],
    )  # fmt: skip
    if bar is not None:
        bar.set_postfix(
            loss=f"{row['train_loss']:.3f}", holdout_acc=f"{row['holdout_accuracy']:.3f}"
        )
