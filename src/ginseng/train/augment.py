"""Count-level augmentation, run in jax inside the jitted training step.

Each transform acts on a dense float32 batch of raw counts (cells x genes) and mimics a
difference between a reference and a query: shallower sequencing (binomial thinning),
ambient background (Poisson noise) and genes absent from the query panel (masking).
They are applied in that order, so masked genes are exactly zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

# Counts up to this value are thinned exactly; larger ones by a normal approximation,
# whose error there is far below the noise the augmentation adds.
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

    @classmethod
    def from_settings(cls, settings) -> Augmentation:
        """Take ``rate``, ``lam_max``, ``lower`` and ``upper`` from trainer settings."""
        return cls(settings.rate, settings.lam_max, settings.lower, settings.upper)

    @property
    def active(self) -> bool:
        """Whether any transform is on."""
        return bool(self.rate) or bool(self.lam_max) or bool(self.upper)

    def __call__(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """Return an augmented copy of the count batch ``x``."""
        k_counts, k_mask = jax.random.split(key)
        if self.rate or self.lam_max:
            x = self._resample(k_counts, x)
        if self.upper:
            x = mask_genes(k_mask, x, self.lower or 0, self.upper)
        return x

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


def _binomial(key: jax.Array, n: jax.Array, p: float) -> jax.Array:
    """Draw ``Binomial(n, p)`` elementwise for integer-valued float ``n`` and ``p <= 0.5``."""
    k_u, k_z = jax.random.split(key)
    u = jax.random.uniform(k_u, n.shape, dtype=n.dtype)
    # Inverse transform sampling, exact for n <= _EXACT_MAX: walk the CDF upwards. Past
    # k = n the factor (n - k) makes the pmf zero, so no clamping is needed.
    odds = p / (1.0 - p)
    pmf = jnp.exp(jnp.minimum(n, _EXACT_MAX) * math.log1p(-p))
    cdf = pmf
    small = jnp.zeros_like(n)
    for k in range(_EXACT_MAX):
        small = small + (u > cdf)
        pmf = pmf * (n - k) * (odds / (k + 1))
        cdf = cdf + pmf
    z = jax.random.normal(k_z, n.shape, dtype=n.dtype)
    large = jnp.round(n * p + jnp.sqrt(n * p * (1.0 - p)) * z)
    return jnp.where(n <= _EXACT_MAX, jnp.minimum(small, n), jnp.clip(large, 0.0, n))


def thin(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Drop each count independently with probability ``rate`` (binomial thinning)."""
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
    u = jax.random.uniform(key, lam.shape, dtype=lam.dtype)
    pmf = jnp.exp(-lam)
    cdf = pmf
    out = jnp.zeros_like(lam)
    for k in range(steps):
        out = out + (u > cdf)
        pmf = pmf * lam / (k + 1)
        cdf = cdf + pmf
    return out


def mask_genes(key: jax.Array, x: jax.Array, lower: int, upper: int) -> jax.Array:
    """Zero ``k ~ U{lower..upper}`` (at most all) distinct random genes of each cell.

    The genes are drawn as a window of ``k`` consecutive positions, starting at a random
    offset per cell, in a random gene permutation drawn per batch: every gene is equally
    likely to be masked and exactly ``k`` are, at the cost of a handful of operations
    per value (a per-cell sort or top-k costs more than the network step on CPU).
    """
    n_cells, n_genes = x.shape
    upper = min(upper, n_genes)
    lower = min(lower, upper)
    k_n, k_perm, k_start = jax.random.split(key, 3)
    n_masked = jax.random.randint(k_n, (n_cells, 1), lower, upper + 1)
    position = jax.random.permutation(k_perm, n_genes)[None, :]
    start = jax.random.randint(k_start, (n_cells, 1), 0, n_genes)
    mask = (position - start) % n_genes < n_masked
    return jnp.where(mask, 0.0, x)
