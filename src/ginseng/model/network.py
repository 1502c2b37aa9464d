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

# Genes whose training standard deviation is below this are scaled as if it were this,
# so a gene (almost) silent in training cannot blow up a query cell that expresses it.
MIN_GENE_STD = 0.05
CLIP = 10.0


class Preprocessing(nnx.Variable):
    """Fixed per-gene statistics: stored in the model, never trained or decayed."""


def network_config(
    n_genes: int,
    n_labels: int,
    *,
    hidden_dim: int = 256,
    n_layers: int = 2,
    dropout_rate: float = 0.2,
    normalize: bool = True,
    target_sum: float = 1e4,
    standardize: bool = True,
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
    }


def log_normalize(x: Any, *, normalize: bool, target_sum: float, xp: Any = jnp) -> Any:
    """Scale each row to ``target_sum`` total counts (if ``normalize``), then ``log1p``.

    ``xp`` is the array module (``jax.numpy`` or ``numpy``), so the trainer computes
    gene statistics with the very formula the model applies.
    """
    if normalize:
        total = x.sum(axis=1, keepdims=True)
        # Empty cells stay zero instead of dividing by zero.
        x = x * (target_sum / xp.maximum(total, 1.0))
    return xp.log1p(x)


class _Block(nnx.Module):
    def __init__(self, n_in: int, n_out: int, dropout_rate: float, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(n_in, n_out, rngs=rngs)
        self.norm = nnx.LayerNorm(n_out, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(self, h: jax.Array, key: jax.Array | None) -> jax.Array:
        h = nnx.gelu(self.norm(self.linear(h)))
        return self.dropout(h, deterministic=key is None, rngs=key)


class GinsengClassifier(nnx.Module):
    """Counts -> normalise + log1p (+ standardise) -> [Linear, LayerNorm, GELU, Dropout] x n -> logits.

    Parameters
    ----------
    config
        Output of :func:`network_config`.
    rngs
        Initialises the weights, e.g. ``nnx.Rngs(seed)``.

    Calling ``model(x)`` runs in evaluation mode (no dropout); ``model(x, key=key)``
    applies dropout drawn from ``key``.
    """

    def __init__(self, config: dict[str, Any], *, rngs: nnx.Rngs):
        self.config = dict(config)
        n_genes, hidden = config["n_genes"], config["hidden_dim"]
        self.gene_mean = Preprocessing(jnp.zeros(n_genes, jnp.float32))
        self.gene_scale = Preprocessing(jnp.ones(n_genes, jnp.float32))
        dims = [n_genes] + [hidden] * config["n_layers"]
        self.blocks = nnx.List(
            _Block(a, b, config["dropout_rate"], rngs=rngs) for a, b in itertools.pairwise(dims)
        )
        self.head = nnx.Linear(hidden, config["n_labels"], rngs=rngs)

    def preprocess(self, x: jax.Array) -> jax.Array:
        """Apply the fixed preprocessing to a batch of raw counts."""
        cfg = self.config
        h = log_normalize(
            x.astype(jnp.float32), normalize=cfg["normalize"], target_sum=cfg["target_sum"]
        )
        if cfg["standardize"]:
            h = jnp.clip((h - self.gene_mean[...]) * self.gene_scale[...], -CLIP, CLIP)
        return h

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """Return logits (cells x labels) for a batch of raw counts (cells x genes)."""
        h = self.preprocess(x)
        keys = jax.random.split(key, len(self.blocks)) if key is not None else None
        for i, block in enumerate(self.blocks):
            h = block(h, None if keys is None else keys[i])
        return self.head(h)


def gene_statistics(
    batches: Iterable[np.ndarray], config: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mean, scale)`` of the preprocessed genes over ``batches`` of raw counts.

    ``scale`` is ``1 / max(std, MIN_GENE_STD)``. Accumulated in float64 (one pass, no
    batch is kept), so the result does not depend on the batch size.
    """
    total = np.zeros(config["n_genes"], np.float64)
    total_sq = np.zeros(config["n_genes"], np.float64)
    n = 0
    for x in batches:
        h = log_normalize(
            np.asarray(x, np.float64),
            normalize=config["normalize"],
            target_sum=config["target_sum"],
            xp=np,
        )
        total += h.sum(axis=0)
        total_sq += np.square(h).sum(axis=0)
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
        var[...] = jnp.asarray(value)
    return model


def count_params(model: GinsengClassifier) -> int:
    """Number of trainable parameters (the fixed preprocessing excluded)."""
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
