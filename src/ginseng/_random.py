"""Cheap counter-based random numbers for every value of a batch, in jax.

Shared by the network's dropout (:mod:`ginseng.model.network`) and the count
augmentation (:mod:`ginseng.train.augment`), which run them on every value of a
training batch: jax's threefry would cost as much as the network's arithmetic there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _fmix32(h: jax.Array) -> jax.Array:
    # MurmurHash3's 32-bit finaliser: a bijection whose every output bit depends on
    # every input bit.
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform ``uint32`` bits of a 2-d ``shape``, cheap enough for every value of a batch.

    Each row gets a 32-bit seed from ``key`` (jax's threefry); the values of a row are
    a counter-based hash (MurmurHash3's finaliser over the Weyl sequence of the column
    index, xor the row seed). On CPU jax's threefry costs ~1.7 ns per value, as much as
    the network's matrix products for a 256 x 3000 batch; the hash costs ~0.1 ns.

    Examples
    --------
    >>> import jax
    >>> bits = random_bits(jax.random.key(0), (2, 3))
    >>> bits.shape, bits.dtype
    ((2, 3), dtype('uint32'))
    >>> bool((bits == random_bits(jax.random.key(0), (2, 3))).all())  # same key, same bits
    True
    """
    rows, cols = shape
    seeds = jax.random.bits(key, (rows, 1), jnp.uint32)
    weyl = jax.lax.broadcasted_iota(jnp.uint32, (rows, cols), 1) * jnp.uint32(0x9E3779B9)
    return _fmix32(weyl ^ seeds)


def random_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Float32 uniforms in ``[0, 1)`` on a 2**-23 grid, from :func:`random_bits`.

    Examples
    --------
    >>> import jax
    >>> u = random_uniform(jax.random.key(1), (4, 1000))
    >>> bool((u >= 0).all() and (u < 1).all()), round(float(u.mean()), 1)
    (True, 0.5)
    """
    bits = random_bits(key, shape)
    one_to_two = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
    return one_to_two - 1.0
