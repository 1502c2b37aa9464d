"""Gene attributions of a trained network: integrated gradients from the zero-count cell.

The network reads raw counts and preprocesses them itself (normalise to ``target_sum``,
``log1p``, standardise with the stored training statistics, clip); the first layer is
linear in the preprocessed values ``h``. Attributions are computed in that space:

* **Quantity explained**: the calibrated log-probability ``log p_c(h)`` of one label
  ``c`` (the prediction, unless chosen), i.e. ``log_softmax(logits / T)[c]``.
* **Baseline**: the preprocessed zero-count cell ``h0`` (``clip(-mean * scale)`` per gene
  with standardisation, else 0): the state a gene is in when it is not expressed. A
  gene a cell does not express therefore gets exactly zero attribution: the method
  explains a call by the genes the cell *expresses*, never by absent ones. A gene the
  query lacks (``missing``) has baseline and value both at its training mean, so it
  gets zero too.
* **Method**: integrated gradients along the straight path ``h0 + a (h - h0)``, with a
  ``steps``-point Gauss-Legendre rule in a parameter ``t`` of each cell's path
  (:func:`path_speed`: linear in ``a`` where the first LayerNorm's output changes,
  logarithmic beyond, so the same nodes serve standardised models and the default
  ones, whose baseline is near-degenerate for that LayerNorm). Because the first layer is linear, the path in
  its output is ``z(a) = z0 + a dz`` with ``dz = (h - h0) W`` computed from the non-zero
  counts only, and the gradient with respect to ``h`` is ``(dlogp/dz) W^T``. So each
  gene's attribution is ``(h - h0)_g * (mean_a dlogp/dz(a)) . W_g``, and the
  attributions of a cell sum to ``log p_c(h) - log p_c(h0)`` up to the quadrature
  error (completeness).

Integrated gradients (Sundararajan et al. 2017) rather than gradient x input because
the output saturates: a confidently called cell has a near-zero gradient of its
log-probability at its own profile, yet its marker genes are what moved it there;
integrating along the path credits them. The library size is held fixed along the
path (the path is in the normalised log space), so an attribution is the effect of a
gene's normalised level, not of its share of the total count.

Everything here is a pure function of the model and a block of counts, like
:func:`ginseng.tl.kernel.classify_chunk`; :func:`ginseng.tl.explain` loops over chunks.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .._errors import InputError

if TYPE_CHECKING:
    from .state import GinsengModelState

__all__ = ["Attributions", "attribute", "baseline_log_proba", "label_saliency", "top_k_rows"]

# Rows per compiled call; smaller blocks are padded to the next power of two.
ATTRIBUTE_BATCH = 4096
DEFAULT_STEPS = 16
# flax's LayerNorm default, which the network's blocks use.
LAYER_NORM_EPSILON = 1e-6
# Below this rate the path rule is linear in a to float32 precision.
MIN_SPEED = 1e-4
# Values of the dense gradient (rows x genes) held at once: 64 MB of float32.
DENSE_VALUES = 1 << 24

_COMPILED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Attributions:
    """Attributions for a block of cells (rows) over the model's genes (columns).

    Attributes
    ----------
    values
        CSR float32 ``n_cells x n_model_genes``: the attribution of each expressed gene
        (zero counts have none, see the module notes), in nats of calibrated
        log-probability.
    codes
        int32 index (model order) of the label explained for each cell.
    log_proba
        float32 calibrated log-probability of that label.
    log_proba_baseline
        float32 the same for the zero-count cell (the integration's start).
    """

    values: sp.csr_matrix
    codes: np.ndarray
    log_proba: np.ndarray
    log_proba_baseline: np.ndarray


def preprocess_delta(
    state: GinsengModelState, X: sp.csr_matrix, missing: np.ndarray | None = None
) -> tuple[sp.csr_matrix, np.ndarray]:
    """``h(x) - h0`` at the non-zero counts of ``X`` (CSR, model gene order), and ``h0``.

    :func:`ginseng.model.first_layer.sparse_delta`, the arithmetic of the first layer
    (:func:`~ginseng.model.first_layer.first_linear_sparse` returns ``h0 @ W + b + D @ W``):
    a zero count preprocesses to ``h0``, so only the non-zeros differ from the
    baseline. A ``missing`` gene has ``h0`` at its training mean, as the classifier
    reads it, and its column of ``X`` must be empty.
    """
    from .first_layer import sparse_delta

    return sparse_delta(state.config, state.params, X, missing=missing)


def path_speed(z0: Any, dz: Any) -> Any:
    """The rate ``L`` of each row's path parametrisation ``a = expm1(t L) / expm1(L)``.

    The network's first LayerNorm is scale-invariant, so along ``z0 + a dz`` its output
    changes on the scale ``a* = sd(z0) / sd(dz)`` (centred over hidden units, with the
    layer's epsilon) and hardly at all beyond it. When the baseline is near-degenerate
    (models without standardisation: ``z0`` is the first layer's small bias) ``a*`` is
    about 0.002 for PBMC cells and equally spaced nodes all miss the change. With ``L = log1p(1 / a*)``
    the nodes in ``t`` are linear in ``a`` below ``a*`` and logarithmic above it, so a
    few resolve the change at any ``a*``; for a well-conditioned baseline (``a* >= 1``)
    ``L`` is small and the rule is the plain Gauss-Legendre rule in ``a``.

    Deeper layers can be steep near the baseline too, beyond what ``a*`` sees; on
    real data the rule holds the completeness gap near 0.1-0.4% (median, 16 nodes),
    on the near-separable toy models of the tests more nodes are needed.
    """
    import jax.numpy as xp

    z0c = z0 - z0.mean()
    dzc = dz - dz.mean(axis=-1, keepdims=True)
    sd0 = xp.sqrt((z0c * z0c).mean() + LAYER_NORM_EPSILON)
    sd = xp.sqrt((dzc * dzc).mean(axis=-1))
    # Rows with dz = 0 (padding, cells without counts) get the plain rule.
    return xp.maximum(xp.log1p(sd / sd0), MIN_SPEED)


def _compiled(state: GinsengModelState) -> dict[str, Any]:
    """The jitted functions of ``state``'s network, built once per state."""
    cached = _COMPILED.get(state)
    if cached is not None:
        return cached
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, variables = nnx.split(state.build_model())
    temperature = np.float32(state.temperature)

    def log_proba(variables: Any, z: jax.Array) -> jax.Array:
        logits = nnx.merge(graphdef, variables).from_first_linear(z)
        return jax.nn.log_softmax(logits / temperature, axis=-1)

    @jax.jit
    def integrated(
        variables: Any, z0: jax.Array, dz: jax.Array, target: jax.Array, nodes: Any, weights: Any
    ):
        # z0: (hidden,) the baseline's first-layer output; dz: (n, hidden); target: (n,)
        # with -1 for "the predicted label"; nodes/weights: the quadrature on [0, 1].
        rows = jnp.arange(dz.shape[0])
        end = log_proba(variables, z0[None, :] + dz)
        codes = jnp.where(target < 0, jnp.argmax(end, axis=1), target)

        def picked(z: jax.Array) -> jax.Array:
            return log_proba(variables, z)[rows, codes].sum()

        # Per-row path parametrisation a = phi(t) (see path_speed): the nodes are on t.
        speed = path_speed(z0, dz)[:, None]

        def step(total: jax.Array, node: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
            t, w = node
            a = jnp.expm1(t * speed) / jnp.expm1(speed)
            da_dt = speed * jnp.exp(t * speed) / jnp.expm1(speed)
            return total + (w * da_dt) * jax.grad(picked)(z0[None, :] + a * dz), None

        grads, _ = jax.lax.scan(step, jnp.zeros_like(dz), (nodes, weights))
        start = log_proba(variables, jnp.broadcast_to(z0, dz.shape))
        return grads, codes, end[rows, codes], start[rows, codes]

    @jax.jit
    def saliency(variables: Any, z: jax.Array) -> jax.Array:
        # d log p_c / d z at each row of z, for every label c: (n_labels, rows, hidden).
        def picked(c: jax.Array) -> jax.Array:
            return jax.grad(lambda z: log_proba(variables, z)[:, c].sum())(z)

        return jax.lax.map(picked, jnp.arange(state.n_labels))

    cached = {"integrated": integrated, "saliency": saliency, "variables": variables}
    _COMPILED[state] = cached
    return cached


def _first_layer(state: GinsengModelState) -> tuple[np.ndarray, np.ndarray]:
    return state.params["blocks/0/linear/kernel"], state.params["blocks/0/linear/bias"]


def attribute(
    state: GinsengModelState,
    X: Any,
    *,
    codes: np.ndarray | None = None,
    missing: np.ndarray | None = None,
    steps: int = DEFAULT_STEPS,
    batch_size: int = ATTRIBUTE_BATCH,
) -> Attributions:
    """Integrated-gradient attributions of raw counts ``X`` (columns in model gene order).

    Parameters
    ----------
    state
        The model.
    X
        Raw counts, ``n_cells x n_genes`` in the model's gene order (scipy sparse or
        dense), as :meth:`ginseng.model.GinsengModelState.predict_proba` takes them.
    codes
        The label (model index) to explain for each cell; ``None`` explains the
        predicted label (the arg-max of the calibrated probabilities).
    missing
        Boolean mask of the model genes the query lacks (``alignment.missing``); their
        columns of ``X`` are ignored.
    steps
        Nodes of the Gauss-Legendre rule along the path (in its parameter ``t``).
    batch_size
        Rows per compiled call.

    Returns
    -------
    The block's :class:`Attributions`.
    """
    import jax.numpy as jnp

    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}.")
    X = X.tocsr() if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    if X.ndim != 2 or X.shape[1] != state.n_genes:
        raise InputError(
            f"Expected a cells x genes matrix with {state.n_genes} columns in the model's "
            f"gene order, got shape {X.shape}; gs.tl.explain aligns genes by name."
        )
    n = X.shape[0]
    if missing is not None:
        missing = np.asarray(missing, bool)
        if missing.any():
            X = sp.csr_matrix(X.multiply((~missing).astype(np.float32)))
        else:
            missing = None
    X = sp.csr_matrix(X, dtype=np.float32)
    X.eliminate_zeros()
    target = np.full(n, -1, np.int32) if codes is None else np.asarray(codes, np.int32)
    if target.shape != (n,) or (target >= state.n_labels).any():
        raise InputError(f"codes must hold one label index below {state.n_labels} per cell.")

    D, h0 = preprocess_delta(state, X, missing)
    W, b = _first_layer(state)
    z0 = (h0 @ W + b).astype(np.float32)
    fns = _compiled(state)
    nodes, weights = np.polynomial.legendre.leggauss(int(steps))
    nodes = jnp.asarray((nodes + 1.0) / 2.0, jnp.float32)
    weights = jnp.asarray(weights / 2.0, jnp.float32)
    out_codes = np.empty(n, np.int32)
    end = np.empty(n, np.float32)
    start = np.empty(n, np.float32)
    data = np.empty(D.nnz, np.float32)
    rows_per_call = min(batch_size, 1 << max(n - 1, 0).bit_length())
    for lo in range(0, n, rows_per_call):
        block = D[lo : lo + rows_per_call]
        m = block.shape[0]
        dz = np.asarray(block @ W, np.float32)
        tgt = target[lo : lo + m]
        if m < rows_per_call:
            dz = np.concatenate([dz, np.zeros((rows_per_call - m, dz.shape[1]), np.float32)])
            tgt = np.concatenate([tgt, np.zeros(rows_per_call - m, np.int32)])
        grad, c, e, s = fns["integrated"](fns["variables"], z0, dz, tgt, nodes, weights)
        grad = np.asarray(grad)[:m]
        out_codes[lo : lo + m] = np.asarray(c)[:m]
        end[lo : lo + m] = np.asarray(e)[:m]
        start[lo : lo + m] = np.asarray(s)[:m]
        # Gradient with respect to h, at the non-zeros only: (grad @ W^T)[row, gene],
        # DENSE_VALUES values at a time.
        step = max(1, DENSE_VALUES // state.n_genes)
        for a in range(0, m, step):
            b = min(a + step, m)
            dense = grad[a:b] @ W.T
            part = block[a:b]
            rows = np.repeat(np.arange(b - a), np.diff(part.indptr))
            offset = D.indptr[lo + a]
            data[offset : offset + part.nnz] = part.data * dense[rows, part.indices]
    values = sp.csr_matrix((data, D.indices.copy(), D.indptr.copy()), shape=D.shape)
    return Attributions(values, out_codes, end, start)


def baseline_log_proba(state: GinsengModelState) -> np.ndarray:
    """Calibrated log-probabilities (one per label) of the zero-count cell, the baseline."""
    zeros = sp.csr_matrix((1, state.n_genes), dtype=np.float32)
    return np.log(state.predict_proba(zeros)[0].astype(np.float64))


def label_saliency(state: GinsengModelState, *, n_samples: int = 2048, seed: int = 0) -> np.ndarray:
    """Mean ``d log p_c / d h`` over cells drawn from the model's gene statistics.

    ``n_labels x n_genes`` float32. ``h`` is the standardised log-normalised expression
    (one unit is one training standard deviation of the gene). The cells are drawn
    from what the model file stores: each gene independently standard normal in ``h``
    (its training mean and spread), raised to at least its zero-count value ``h0``, so
    no model input is below "not expressed". Averaging the gradient over such cells
    (expected gradients without data) rather than taking it at the single mean cell
    keeps one saturated point from deciding: on synthetic data with planted markers the
    mean cell's gradient missed most of them, the average finds them. Without
    standardisation ``h`` is the log-normalised value, drawn around the gene's training
    log-mean with its training spread (``gene_mean + N(0, 1) / gene_scale``), at least 0;
    models without stored statistics draw ``max(N(0, 1), 0)``.
    """
    import jax.numpy as jnp

    from .network import imputes_missing

    W, b = _first_layer(state)
    fns = _compiled(state)
    h0 = np.zeros(state.n_genes, np.float32)
    if state.config["standardize"]:
        from .network import CLIP

        h0 = np.clip(-state.params["gene_mean"] * state.params["gene_scale"], -CLIP, CLIP)
    rng = np.random.default_rng(seed)
    total = np.zeros((state.n_labels, W.shape[1]), np.float64)
    block = 512
    for start in range(0, n_samples, block):
        m = min(block, n_samples - start)
        h = rng.standard_normal((block, state.n_genes), dtype=np.float32)
        if not state.config["standardize"] and imputes_missing(state.config):
            h = state.params["gene_mean"] + h / state.params["gene_scale"]
        h = np.maximum(h, h0.astype(np.float32))
        z = jnp.asarray(h @ W + b)
        grads = np.asarray(fns["saliency"](fns["variables"], z))  # labels x block x hidden
        total += grads[:, :m].sum(axis=1, dtype=np.float64)
    return ((total / n_samples) @ W.T.astype(np.float64)).astype(np.float32)


def top_k_rows(values: sp.csr_matrix, k: int | None, *, block: int = 4096) -> sp.csr_matrix:
    """Keep the ``k`` largest stored values of each row; ``None`` keeps all.

    Rows are padded to a dense ``block x longest row`` array at a time and cut with
    ``argpartition``, so memory is bounded by ``block`` rows.
    """
    values = sp.csr_matrix(values)
    if k is None:
        return values
    values.sort_indices()
    n = values.shape[0]
    counts = np.diff(values.indptr)
    keep = np.zeros(values.nnz, bool)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        c = counts[lo:hi]
        width = int(c.max(initial=0))
        if width <= k:
            keep[values.indptr[lo] : values.indptr[hi]] = True
            continue
        start = values.indptr[lo]
        pos = np.arange(values.indptr[hi] - start) - np.repeat(values.indptr[lo:hi] - start, c)
        rows = np.repeat(np.arange(hi - lo), c)
        padded = np.full((hi - lo, width), -np.inf, np.float32)
        padded[rows, pos] = values.data[start : values.indptr[hi]]
        best = np.argpartition(-padded, k - 1, axis=1)[:, :k]
        chosen = np.zeros_like(padded, bool)
        np.put_along_axis(chosen, best, True, axis=1)
        keep[start : values.indptr[hi]] = chosen[rows, pos]
    kept_rows = np.repeat(np.arange(n), counts)[keep]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(kept_rows, minlength=n), out=indptr[1:])
    return sp.csr_matrix((values.data[keep], values.indices[keep], indptr), shape=values.shape)
