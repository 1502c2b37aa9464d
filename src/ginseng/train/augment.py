"""Count-level augmentation, run in jax inside the jitted training step.

Each transform acts on a dense float32 batch of raw counts (cells x genes) and mimics a
difference between a reference and a query: shallower sequencing (binomial thinning),
ambient background (Poisson noise) and genes absent from the query panel (masking).
They are applied in that order, so masked genes are exactly zero.

The samplers run on every value of the batch, zeros included, so they are written to
be cheap: uniforms come from a counter-based hash (:func:`ginseng._random.random_bits`,
~15x cheaper than jax's threefry on CPU) and are turned into counts by inverse transform
sampling, which needs one uniform per value and no rejection loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from .._random import random_bits, random_uniform
from .._trainer_settings import GinsengClassifierTrainerSettings

# Counts up to this value are thinned exactly; of a larger count, this many are thinned
# exactly and the rest by a normal approximation, whose error there is far below the
# noise the augmentation adds.
_EXACT_MAX = 12
# Values augmented at once (about 2 MB of float32): larger batches go block by block.
_BLOCK_VALUES = 1 << 19
# Poisson noise up to this mean is drawn by inverse transform, beyond by jax's sampler.
_POISSON_EXACT_MAX = 10.0


@dataclass(frozen=True)
class Augmentation:
    """The augmentation part of the settings, as static jit arguments.

    ``None`` or 0 switches a transform off; see
    :class:`~ginseng.train.GinsengClassifierTrainerSettings` for their meaning.
    """

    rate: float | None = None
    lam_max: float | None = None
    lower: int | None = None
    upper: int | None = None
    mask_as: str = "zero"

    @classmethod
    def from_settings(cls, settings: GinsengClassifierTrainerSettings) -> Augmentation:
        """Take ``rate``, ``lam_max``, ``lower``, ``upper`` and ``mask_as`` from trainer settings."""
        return cls(
            settings.rate,
            settings.lam_max,
            settings.lower,
            settings.upper,
            getattr(settings, "mask_as", "zero"),
        )

    @property
    def active(self) -> bool:
        """Whether any transform is on."""
        return bool(self.rate) or bool(self.lam_max) or bool(self.upper)

    def __call__(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """Return an augmented copy of the count batch ``x``."""
        return self.with_mask(key, x)[0]

    def with_mask(self, key: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """The augmented batch and, with masking, the 0/1 ``present`` mask (cells x genes).

        Masked genes are zero in the batch either way; ``present`` is 0 for them.
        """
        k_counts, k_mask = jax.random.split(key)
        if self.rate or self.lam_max:
            x = self._resample(k_counts, x)
        if not self.upper:
            return x, None
        masked = gene_mask(k_mask, x.shape, self.lower or 0, self.upper)
        return jnp.where(masked, 0.0, x), jnp.where(masked, 0.0, 1.0)

    def _resample(self, key: jax.Array, x: jax.Array) -> jax.Array:
        n_cells, n_genes = x.shape
        rows = _chunk_rows(n_cells, n_genes)
        if rows == n_cells:
            return self._thin_and_noise(key, x)
        # Wide batches are resampled a few rows at a time: the samplers make several
        # elementwise passes, which stay in cache for a small block but would stream the
        # whole batch through memory each time (3x slower at 20k genes).
        blocks = x.reshape(n_cells // rows, rows, n_genes)
        keys = jax.random.split(key, n_cells // rows)
        out = jax.lax.map(lambda args: self._thin_and_noise(*args), (keys, blocks))
        return out.reshape(n_cells, n_genes)

    def _thin_and_noise(self, key: jax.Array, x: jax.Array) -> jax.Array:
        k_thin, k_noise = jax.random.split(key)
        if self.rate:
            x = thin(k_thin, x, self.rate)
        if self.lam_max:
            x = add_poisson_noise(k_noise, x, self.lam_max)
        return x


def _chunk_rows(n_cells: int, n_genes: int) -> int:
    """Largest divisor of ``n_cells`` whose block holds at most _BLOCK_VALUES values (>= 1)."""
    if n_cells * n_genes <= _BLOCK_VALUES:
        return n_cells
    best = 1
    for rows in range(1, n_cells + 1):
        if n_cells % rows == 0 and rows * n_genes <= _BLOCK_VALUES:
            best = rows
    return best


def _standard_normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Approximately standard normal values: the centred sum of four 8-bit uniforms.

    The Irwin-Hall sum has the normal's mean and variance and tails bounded at about
    3.5 sd; it only feeds the normal approximation of large counts below.
    """
    bits = random_bits(key, shape)
    total = (bits & 255) + ((bits >> 8) & 255) + ((bits >> 16) & 255) + (bits >> 24)
    # Four uniforms on {0..255}: mean 510, variance 4 * (256**2 - 1) / 12.
    return (total.astype(jnp.float32) - 510.0) * (1.0 / math.sqrt((256**2 - 1) / 3))


def _binomial(key: jax.Array, n: jax.Array, p: float) -> jax.Array:
    """Draw ``Binomial(n, p)`` elementwise for integer-valued float ``n`` and ``p <= 0.5``.

    ``Binomial(n, p) = Binomial(m, p) + Binomial(n - m, p)`` with ``m = min(n, 12)``: the
    first part is drawn exactly by inverse transform sampling (one uniform per value),
    the second, non-zero only for counts above 12, by a rounded normal approximation.
    """
    k_u, k_z = jax.random.split(key)
    u = random_uniform(k_u, n.shape)
    m = jnp.minimum(n, _EXACT_MAX)
    # Walk the CDF of Binomial(m, p) upwards: the result is the number of CDF values
    # below u. Past k = m the factor (m - k) makes the pmf zero, so no clamping is needed.
    odds = p / (1.0 - p)
    pmf = jnp.exp(m * math.log1p(-p))
    cdf = pmf
    exact = jnp.zeros_like(n)
    for k in range(_EXACT_MAX):
        exact = exact + (u > cdf)
        pmf = pmf * (m - k) * (odds / (k + 1))
        cdf = cdf + pmf
    rest = n - m
    z = _standard_normal(k_z, n.shape)
    approx = jnp.clip(jnp.round(rest * p + jnp.sqrt(rest * p * (1.0 - p)) * z), 0.0, rest)
    return jnp.minimum(exact, m) + approx


def thin(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Drop each count independently with probability ``rate`` (binomial thinning).

    Exact (up to the 2**-23 grid of the uniforms) for counts up to 12; of larger counts,
    12 are thinned exactly and the rest by a normal approximation.
    """
    x = jnp.round(x)
    if rate <= 0.5:
        return x - _binomial(key, x, rate)
    return _binomial(key, x, 1.0 - rate)


def add_poisson_noise(key: jax.Array, x: jax.Array, lam_max: float) -> jax.Array:
    """Add ``Poisson(lam)`` counts to every gene, ``lam ~ U[0, lam_max]`` per cell."""
    k_lam, k_noise = jax.random.split(key)
    lam = jax.random.uniform(k_lam, (x.shape[0], 1), dtype=x.dtype, maxval=lam_max)
    return x + _poisson(k_noise, jnp.broadcast_to(lam, x.shape), lam_max)


def _poisson(key: jax.Array, lam: jax.Array, lam_max: float) -> jax.Array:
    """Draw ``Poisson(lam)`` elementwise for ``0 <= lam <= lam_max``."""
    if lam_max > _POISSON_EXACT_MAX:
        return jax.random.poisson(key, lam, lam.shape).astype(lam.dtype)
    # Inverse transform sampling up to a bound whose tail probability is below 1e-9;
    # jax.random.poisson's rejection loop costs several times more on CPU.
    steps = math.ceil(lam_max + 6.0 * math.sqrt(lam_max) + 6.0)
    u = random_uniform(key, lam.shape)
    pmf = jnp.exp(-lam)
    cdf = pmf
    out = jnp.zeros_like(lam)
    for k in range(steps):
        out = out + (u > cdf)
        pmf = pmf * lam / (k + 1)
        cdf = cdf + pmf
    return out


def _random_ranks(key: jax.Array, n: int) -> jax.Array:
    """A random permutation of ``range(n)``, by one sort of packed ``uint32`` keys.

    Random high bits with the index in the low bits sort in one pass, where
    ``jax.random.permutation`` (several key-value sorts) costs ~8x more on CPU. Equal
    random parts (rare: about ``n**2 / 2**(33 - log2 n)`` pairs) keep index order.
    """
    index_bits = max(1, (n - 1).bit_length())
    if index_bits > 24:
        return jax.random.permutation(key, n)
    bits = jax.random.bits(key, (n,), jnp.uint32)
    packed = (bits << index_bits) | jnp.arange(n, dtype=jnp.uint32)
    return (jnp.sort(packed) & jnp.uint32((1 << index_bits) - 1)).astype(jnp.int32)


def mask_genes(key: jax.Array, x: jax.Array, lower: int, upper: int) -> jax.Array:
    """Zero ``k ~ U{lower..upper}`` (at most all) distinct random genes of each cell.

    The genes are drawn as a window of ``k`` consecutive positions, starting at a
    uniformly random offset per cell, in a cyclic random gene order drawn per batch:
    every gene is masked with probability ``E[k] / n_genes`` whatever that order, the
    order decides which genes tend to be masked together, and exactly ``k`` are, at the
    cost of a handful of operations per value (a per-cell sort or top-k costs more
    than the network step on CPU).
    """
    return jnp.where(gene_mask(key, x.shape, lower, upper), 0.0, x)


def gene_mask(key: jax.Array, shape: tuple[int, ...], lower: int, upper: int) -> jax.Array:
    """The boolean mask (cells x genes) of the genes :func:`mask_genes` zeroes."""
    n_cells, n_genes = shape
    upper = min(upper, n_genes)
    lower = min(lower, upper)
    k_n, k_perm, k_start = jax.random.split(key, 3)
    n_masked = jax.random.randint(k_n, (n_cells, 1), lower, upper + 1)
    position = _random_ranks(k_perm, n_genes)[None, :]
    start = jax.random.randint(k_start, (n_cells, 1), 0, n_genes)
    offset = position - start
    offset = jnp.where(offset < 0, offset + n_genes, offset)
    return offset < n_masked
