"""The classifier network (Flax NNX): fixed preprocessing, then an MLP.

Raw counts go in, logits come out. Library-size normalisation, ``log1p`` and the
per-gene standardisation are part of the model, so inference normalises exactly as
training did. The number of parameters grows linearly with the number of genes:
``n_genes * hidden_dim`` weights in the first layer, ``hidden_dim**2`` per further
hidden layer and ``hidden_dim * n_labels`` in the head.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .._random import random_uniform

# Genes whose training standard deviation is below this are scaled as if it were this,
# so a gene (almost) silent in training cannot blow up a query cell that expresses it.
MIN_GENE_STD = 0.05
CLIP = 10.0


def _lecun_uniform(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """LeCun-uniform weights (the variance of flax's default), drawn by numpy from ``key``.

    jax's samplers compile once per weight shape, ~0.4 s each on CPU, which made building
    the network (also for inference) take 1-3 s; numpy draws the same law at once.
    """
    if isinstance(key, jax.core.Tracer):  # built inside a jax transformation
        return jax.nn.initializers.lecun_uniform()(key, shape, dtype)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    limit = np.sqrt(3.0 / shape[0])
    values = np.random.default_rng(seed).uniform(-limit, limit, shape).astype(np.dtype(dtype))
    # device_put, not jnp.asarray: the latter compiles a conversion per weight shape.
    return jax.device_put(values)


def _constant_init(value: float) -> Any:
    """An initializer filling with ``value``, without compiling (unlike ``jnp.zeros``).

    Eager ``jnp.zeros``/``jnp.ones`` (flax's default bias and LayerNorm initializers)
    compile one XLA kernel per shape, ~30 ms each on CPU; these values are the same.
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        if isinstance(key, jax.core.Tracer):  # built inside a jax transformation
            return jnp.full(shape, value, dtype)
        return jax.device_put(np.full(shape, value, np.dtype(dtype)))

    return init


_zeros, _ones = _constant_init(0.0), _constant_init(1.0)


class Preprocessing(nnx.Variable):
    """Fixed per-gene statistics: stored in the model, never trained or decayed."""


def network_config(
    n_genes: int,
    n_labels: int,
    *,
    hidden_dim: int = 128,
    n_layers: int = 2,
    dropout_rate: float = 0.2,
    normalize: bool = True,
    target_sum: float = 1e4,
    standardize: bool = False,
) -> dict[str, Any]:
    """Return the JSON-able config from which :class:`GinsengClassifier` is rebuilt."""
    return {
        "architecture": "mlp",
        "n_genes": int(n_genes),
        "n_labels": int(n_labels),
        "hidden_dim": int(hidden_dim),
        "n_layers": int(n_layers),
        "dropout_rate": float(dropout_rate),
        "activation": "gelu",
        "normalize": bool(normalize),
        "target_sum": float(target_sum),
        "log1p": True,
        "standardize": bool(standardize),
        "clip": CLIP,
        # The per-gene statistics are fitted whether or not the model standardises, so
        # a gene the query lacks is read as its training mean (see imputes_missing).
        "impute_missing": True,
    }


def imputes_missing(config: dict[str, Any]) -> bool:
    """Whether the model reads a gene the query lacks as its training mean.

    True for models that standardise and for every model with ``impute_missing`` in its
    config (written since the statistics are fitted for all models); older models
    without standardisation stored no statistics and read a missing gene as zero.
    """
    return bool(config.get("standardize", True) or config.get("impute_missing", False))


def log_normalize(x: Any, *, normalize: bool, target_sum: float, xp: Any = jnp) -> Any:
    """Scale each row to ``target_sum`` total counts (if ``normalize``), then ``log1p``.

    ``xp`` is the array module (``jax.numpy`` or ``numpy``), so the trainer computes
    gene statistics with the very formula the model applies.
    """
    if normalize:
        total = x.sum(axis=1, keepdims=True)
        # Empty cells stay zero instead of dividing by zero.
        x = x * (target_sum / xp.maximum(total, 1.0))
    # log(1 + x) rather than log1p(x): the same to float32 precision for the values
    # that occur here (0 or >= target_sum / library size), and ~2x cheaper in XLA on CPU.
    return xp.log(1.0 + x)


class _Block(nnx.Module):
    def __init__(self, n_in: int, n_out: int, dropout_rate: float, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(
            n_in, n_out, kernel_init=_lecun_uniform, bias_init=_zeros, rngs=rngs
        )
        self.norm = nnx.LayerNorm(n_out, scale_init=_ones, bias_init=_zeros, rngs=rngs)
        self.dropout_rate = float(dropout_rate)

    def __call__(self, h: jax.Array, key: jax.Array | None) -> jax.Array:
        return self.activate(self.linear(h), key)

    def activate(self, z: jax.Array, key: jax.Array | None) -> jax.Array:
        """LayerNorm, GELU and, given a key, dropout of the linear layer's output ``z``."""
        h = nnx.gelu(self.norm(z))
        if key is None or self.dropout_rate == 0.0:
            return h
        # Inverted dropout, drawn from the cheap hash uniforms rather than threefry.
        keep = random_uniform(key, h.shape) >= self.dropout_rate
        return jnp.where(keep, h / (1.0 - self.dropout_rate), 0.0)


class GinsengClassifier(nnx.Module):
    """Counts -> normalise + log1p (+ standardise) -> [Linear, LayerNorm, GELU, Dropout] x n -> logits.

    Calling ``model(x)`` runs in evaluation mode (no dropout); ``model(x, key=key)``
    applies dropout drawn from ``key``.

    Parameters
    ----------
    config
        Output of :func:`network_config`.
    rngs
        Initialises the weights, e.g. ``nnx.Rngs(seed)``.
    """

    def __init__(self, config: dict[str, Any], *, rngs: nnx.Rngs):
        self.config = dict(config)
        n_genes, hidden = config["n_genes"], config["hidden_dim"]
        self.gene_mean = Preprocessing(jax.device_put(np.zeros(n_genes, np.float32)))
        self.gene_scale = Preprocessing(jax.device_put(np.ones(n_genes, np.float32)))
        dims = [n_genes] + [hidden] * config["n_layers"]
        self.blocks = nnx.List(
            _Block(a, b, config["dropout_rate"], rngs=rngs) for a, b in itertools.pairwise(dims)
        )
        self.head = nnx.Linear(
            hidden, config["n_labels"], kernel_init=_lecun_uniform, bias_init=_zeros, rngs=rngs
        )

    def preprocess(
        self, x: jax.Array, *, present: jax.Array | None = None, share: Any = None
    ) -> jax.Array:
        """Apply the fixed preprocessing to a batch of raw counts.

        ``present`` (one value per gene, 1 for measured genes and 0 for genes the query
        lacks) marks genes whose value is *unknown*: they are set to 0 after
        preprocessing, i.e. to the training mean when the model standardises (see
        ``first_layer.missing_genes_note``). ``None`` means every gene was measured.
        ``share`` (see ``first_layer.present_share``) scales the normalisation target, since a
        cell's total then only covers the measured genes.
        """
        cfg = self.config
        target = cfg["target_sum"] if share is None else cfg["target_sum"] * share
        h = log_normalize(x.astype(jnp.float32), normalize=cfg["normalize"], target_sum=target)
        if cfg["standardize"]:
            h = jnp.clip((h - self.gene_mean[...]) * self.gene_scale[...], -CLIP, CLIP)
        if present is not None:
            # The training mean: 0 after standardisation, else the stored log-mean;
            # older models without statistics read a missing gene as zero.
            fill = self.gene_mean[...] if imputes_missing(cfg) and not cfg["standardize"] else 0.0
            h = jnp.where(present > 0, h, fill)
        return h

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        present: jax.Array | None = None,
        share: Any = None,
    ) -> jax.Array:
        """Return logits (cells x labels) for a batch of raw counts (cells x genes).

        ``present`` and ``share`` describe genes the query lacks (see :meth:`preprocess`).
        """
        h = self.preprocess(x, present=present, share=share)
        return self.from_first_linear(self.blocks[0].linear(h), key=key)

    def present_share(self, present: jax.Array) -> jax.Array:
        """Per cell, the expected share of the counts its present genes carry (cells x 1).

        The jax twin of ``first_layer.present_share`` for a ``present`` mask per cell (training
        with ``mask_as="unknown"``); 1 without normalisation or standardisation.
        """
        cfg = self.config
        if not (cfg["normalize"] and imputes_missing(cfg)):
            return jnp.ones((present.shape[0], 1), jnp.float32)
        std = 1.0 / self.gene_scale[...]
        expected = jnp.maximum(jnp.expm1(self.gene_mean[...] + jnp.square(std) / 2.0), 0.0)
        share = (present @ expected) / jnp.maximum(expected.sum(), 1e-12)
        return jnp.clip(share, 1e-3, 1.0)[:, None]

    def from_first_linear(self, z: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """Return logits given ``z``, the first Linear layer's output for a batch.

        Inference on sparse counts computes ``z`` from the non-zero values only (see
        ``ginseng.model.first_layer.first_linear_sparse``) and continues here.
        """
        return self.head(self.hidden_from_first_linear(z, key=key))

    def hidden_from_first_linear(self, z: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """The last hidden layer's output (cells x hidden_dim) given ``z`` (see above).

        What the head maps to logits; the novelty score is a distance in this space.
        """
        keys = jax.random.split(key, len(self.blocks)) if key is not None else None
        h = z
        for i, block in enumerate(self.blocks):
            k = None if keys is None else keys[i]
            h = block.activate(h, k) if i == 0 else block(h, k)
        return h


def gene_statistics(
    batches: Iterable[np.ndarray], config: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mean, scale)`` of the preprocessed genes over ``batches`` of raw counts.

    ``scale`` is ``1 / max(std, MIN_GENE_STD)``. Values are computed in float32, as the
    model computes them, and accumulated in float64 (one pass, no batch is kept), so the
    result does not depend on the batch size.
    """
    total = np.zeros(config["n_genes"], np.float64)
    total_sq = np.zeros(config["n_genes"], np.float64)
    n = 0
    for x in batches:
        h = log_normalize(
            np.asarray(x, np.float32),
            normalize=config["normalize"],
            target_sum=config["target_sum"],
            xp=np,
        )
        total += h.sum(axis=0, dtype=np.float64)
        total_sq += np.square(h).sum(axis=0, dtype=np.float64)
        n += h.shape[0]
    if n == 0:
        return np.zeros_like(total, np.float32), np.ones_like(total, np.float32)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - np.square(mean), 0.0))
    return mean.astype(np.float32), (1.0 / np.maximum(std, MIN_GENE_STD)).astype(np.float32)


def flat_params(model: GinsengClassifier) -> dict[str, np.ndarray]:
    """Return every variable of ``model`` as ``{"blocks/0/linear/kernel": float32 array}``."""
    flat = nnx.to_flat_state(nnx.state(model))
    return {
        "/".join(str(part) for part in path): np.asarray(var[...], dtype=np.float32)
        for path, var in flat
    }


def build_model(
    config: dict[str, Any], params: dict[str, np.ndarray] | None = None
) -> GinsengClassifier:
    """Build the network from ``config`` and, if given, load ``params`` (see :func:`flat_params`).

    Raises ``KeyError``/``ValueError`` when ``params`` does not match the architecture;
    callers turn that into a user-facing error.
    """
    model = GinsengClassifier(config, rngs=nnx.Rngs(0))
    if params is None:
        return model
    expected = flat_params(model)
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        raise KeyError(
            f"parameters do not match the architecture: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    flat = nnx.to_flat_state(nnx.state(model))
    for path, var in flat:
        key = "/".join(str(part) for part in path)
        value = np.asarray(params[key], dtype=np.float32)
        if value.shape != expected[key].shape:
            raise ValueError(
                f"parameter {key!r} has shape {value.shape}, expected {expected[key].shape}"
            )
        # set_value of a device_put array: ``var[...] = jnp.asarray(value)`` compiles
        # two small XLA kernels per parameter shape (~0.1 s per model on CPU).
        var.set_value(jax.device_put(value))
    return model


def count_params(model: GinsengClassifier) -> int:
    """Number of trainable parameters (the fixed preprocessing excluded)."""
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
