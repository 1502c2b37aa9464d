"""Synthetic raw counts with cell types and batches, in memory or written in bounded memory.

Each cell draws its library size (log-normal, then Poisson), splits it over contiguous
blocks of genes ("modules") with gamma-distributed cell-specific weights, which gives
negative-binomial-like overdispersion, and places the UMIs of each module on genes
following its cell type's profile (a shared log-normal profile, perturbed per type and
per batch, plus a few strong markers per type). Drawing sorted uniforms per module (from
exponential spacings) makes the gene indices of each cell come out sorted, so one
``searchsorted`` and a run-length count give the CSR rows without any sort.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._errors import InputError

# Cells generated per step: fixed so that the data depend only on the seed, not on
# chunk_size, and small enough that the per-UMI temporaries stay in cache-sized arrays.
_BLOCK = 2048
_N_MODULES = 64


class _Model:
    """Mean profiles and per-cell labels, all drawn from one seeded generator."""

    def __init__(
        self, n_cells, n_genes, n_types, n_batches, mean_umis, seed, sorted_by_label, noise_seed
    ):
        sizes = {"n_cells": n_cells, "n_genes": n_genes, "n_types": n_types, "n_batches": n_batches}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}.")
        if not mean_umis > 0:
            raise InputError(f"mean_umis must be positive, got {mean_umis!r}.")
        self.seed = seed
        self.noise_seed = seed if noise_seed is None else noise_seed
        rng = np.random.default_rng(seed)
        self.n_genes, self.n_types, self.n_batches = n_genes, n_types, n_batches
        self.mean_umis = mean_umis

        base = rng.normal(0.0, 1.6, n_genes)
        log_profiles = base + rng.normal(0.0, 0.35, (n_types, n_genes))
        n_markers = max(3, n_genes // 200)
        self.markers = np.full(n_genes, "", dtype=object)
        for t in range(n_types):
            genes = rng.choice(n_genes, size=min(n_markers, n_genes), replace=False)
            log_profiles[t, genes] += rng.uniform(2.0, 4.0, genes.size)
            self.markers[genes] = f"type_{t}"
        batch_shift = rng.normal(0.0, 0.15, (n_batches, n_genes))
        # profile index p = type * n_batches + batch
        logp = (log_profiles[:, None, :] + batch_shift[None, :, :]).reshape(-1, n_genes)
        probs = np.exp(logp - logp.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)

        self.n_modules = min(_N_MODULES, n_genes)
        edges = np.linspace(0, n_genes, self.n_modules + 1).astype(np.intp)
        cum = np.cumsum(probs, axis=1)
        cum[:, -1] = 1.0
        starts = np.concatenate([np.zeros((len(probs), 1)), cum[:, edges[1:-1] - 1]], axis=1)
        self.module_start = starts
        self.module_mass = np.diff(np.concatenate([starts, np.ones((len(probs), 1))], axis=1))
        # One sorted array for every profile: profile p occupies (p, p + 1].
        self.cum_all = (cum + np.arange(len(probs))[:, None]).ravel()

        weights = np.exp(rng.normal(0.0, 0.7, n_types))
        types = rng.choice(n_types, size=n_cells, p=weights / weights.sum())
        # The smallest integer type: two codes per cell are all the per-cell state kept.
        self.types = (np.sort(types) if sorted_by_label else types).astype(_codes_dtype(n_types))
        self.batches = rng.integers(0, n_batches, size=n_cells).astype(_codes_dtype(n_batches))

    def obs_columns(self) -> dict[str, pd.Categorical]:
        type_names = [f"type_{t}" for t in range(self.n_types)]
        batch_names = [f"batch_{b}" for b in range(self.n_batches)]
        return {
            "cell_type": pd.Categorical.from_codes(self.types, categories=type_names),
            "batch": pd.Categorical.from_codes(self.batches, categories=batch_names),
        }

    def obs(self) -> pd.DataFrame:
        return pd.DataFrame(self.obs_columns(), index=pd.Index(_cell_names(0, len(self.types))))

    def write_obs(self, file, chunk_size: int) -> None:
        """Write ``obs()`` into an open h5py file, the cell names ``chunk_size`` at a time.

        The same element anndata's ``write_elem(file, "obs", self.obs())`` writes
        (``dataframe`` encoding, a ``string-array`` index, categorical columns), without
        the names of every cell in memory at once: about 140 bytes per cell for anndata's
        conversion (1.5 GB at 10M cells).
        """
        import h5py
        from anndata.io import write_elem

        n = len(self.types)
        columns = self.obs_columns()
        group = file.create_group("obs")
        group.attrs.update(
            {
                "encoding-type": "dataframe",
                "encoding-version": "0.2.0",
                "_index": "_index",
                "column-order": list(columns),
            }
        )
        index = group.create_dataset("_index", shape=(n,), dtype=h5py.string_dtype())
        index.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        for lo in range(0, n, chunk_size):
            hi = min(lo + chunk_size, n)
            index[lo:hi] = np.array(_cell_names(lo, hi), dtype=object)
        for name, values in columns.items():
            write_elem(group, name, values)

    def var(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"marker_of": self.markers.astype(str)},
            index=pd.Index([f"gene_{j}" for j in range(self.n_genes)]),
        )

    def blocks(self, n_threads: int = 2) -> Iterator[sp.csr_matrix]:
        """Yield the CSR rows ``_BLOCK`` cells at a time, in order.

        Each block has its own generator seeded by (seed, block), so blocks can be
        drawn on ``n_threads`` threads (numpy releases the GIL in the heavy steps) and
        the result does not depend on the scheduling.
        """
        starts = range(0, len(self.types), _BLOCK)
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            pending: deque = deque()
            for block, start in enumerate(starts):
                pending.append(pool.submit(self._block, block, start))
                # A short window keeps memory bounded while the threads stay busy.
                if len(pending) > 2 * n_threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def _block(self, block: int, start: int) -> sp.csr_matrix:
        rng = np.random.default_rng([self.noise_seed, block])
        stop = min(start + _BLOCK, len(self.types))
        profile = self.types[start:stop].astype(np.intp) * self.n_batches + self.batches[start:stop]
        n, n_genes, n_modules = len(profile), self.n_genes, self.n_modules
        sigma = 0.5
        library = rng.lognormal(np.log(self.mean_umis) - sigma**2 / 2, sigma, n)
        umis = np.maximum(rng.poisson(library), max(1, int(self.mean_umis // 10)))
        # Gamma module weights: the cell-to-cell excess variance of a negative binomial.
        mass = self.module_mass[profile] * rng.gamma(3.0, 1 / 3, (n, n_modules))
        per_module = rng.multinomial(umis, mass / mass.sum(axis=1, keepdims=True)).ravel()

        # Sorted uniforms in each (cell, module) segment from exponential spacings,
        # mapped straight onto the module's stretch of the profile's cumulative sum.
        ends = np.cumsum(per_module + 1) - 1
        spacing = np.cumsum(rng.standard_exponential(int(ends[-1]) + 1))
        before = np.concatenate([[0.0], spacing[ends[:-1]]])
        seg_profile = np.repeat(profile, n_modules)
        seg_base = seg_profile + self.module_start[profile].ravel()
        seg_scale = self.module_mass[profile].ravel() / (spacing[ends] - before)
        keep = np.ones(spacing.size, dtype=bool)
        keep[ends] = False
        seg = np.repeat(np.arange(per_module.size), per_module)
        needles = seg_base[seg] + (spacing[keep] - before[seg]) * seg_scale[seg]
        del spacing, keep
        gene = np.searchsorted(self.cum_all, needles, side="right")
        del needles
        gene -= (seg_profile * n_genes)[seg]
        # Rounding can put a needle on the very edge of its profile's stretch.
        np.clip(gene, 0, n_genes - 1, out=gene)

        key = np.repeat(np.arange(n) * n_genes, umis) + gene
        first = np.ones(key.size, dtype=bool)
        first[1:] = key[1:] != key[:-1]
        starts = np.flatnonzero(first)
        counts = np.diff(np.append(starts, key.size))
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(key[starts] // n_genes, minlength=n), out=indptr[1:])
        return sp.csr_matrix(
            (counts.astype(np.float32), gene[starts].astype(np.int32), indptr),
            shape=(n, n_genes),
        )


def _codes_dtype(n: int) -> np.dtype:
    """The smallest signed integer type that holds the codes ``0 .. n - 1``."""
    return np.dtype(np.min_scalar_type(-max(n, 1)))


def _cell_names(start: int, stop: int) -> list[str]:
    return [f"cell_{i}" for i in range(start, stop)]


def _uns(model: _Model, sorted_by_label: bool) -> dict:
    return {
        "synthetic": {
            "n_types": model.n_types,
            "n_batches": model.n_batches,
            "mean_umis": float(model.mean_umis),
            "seed": model.seed,
            "noise_seed": model.noise_seed,
            "sorted_by_label": sorted_by_label,
        }
    }


def synthetic_counts(
    n_cells: int,
    n_genes: int,
    *,
    n_types: int = 10,
    n_batches: int = 3,
    mean_umis: float = 2000,
    sorted_by_label: bool = True,
    seed: int = 0,
    noise_seed: int | None = None,
) -> AnnData:
    """Synthetic raw counts with cell types, batches and marker genes, in memory.

    Cell types differ by a perturbed expression profile and a few strong markers each;
    batches add a small shift to every profile; library sizes are log-normal and the
    counts negative-binomial-like. Use :func:`write_synthetic_h5ad` for data larger than
    memory: it writes the same AnnData in chunks.

    Parameters
    ----------
    n_cells, n_genes
        Shape of the matrix.
    n_types
        Number of cell types ("type_0", ...), with log-normal abundances.
    n_batches
        Number of batches ("batch_0", ...), assigned uniformly.
    mean_umis
        Mean number of counts per cell.
    sorted_by_label
        Order the cells by cell type (the worst case for naive mini-batching); otherwise
        they come in random order.
    seed
        Seed of the profiles, markers and labels; also of the counts unless
        ``noise_seed`` is given.
    noise_seed
        Seed of the per-cell counts. With the same ``seed`` and ``n_cells``, a different
        ``noise_seed`` draws new cells of the same types from the same profiles (a second
        dataset of the same "tissue", e.g. a query for a reference).

    Returns
    -------
    AnnData with integer counts in ``X`` (CSR float32, canonical), ``obs["cell_type"]``
    and ``obs["batch"]`` (categorical), ``var["marker_of"]`` (the type a gene marks, or
    ""), and the parameters in ``uns["synthetic"]``.

    Examples
    --------
    >>> import ginseng as gs
    >>> adata = gs.datasets.synthetic_counts(1000, 200, n_types=4, seed=1)
    >>> adata.shape, adata.X.dtype
    ((1000, 200), dtype('float32'))
    >>> adata.obs["cell_type"].cat.categories.tolist()
    ['type_0', 'type_1', 'type_2', 'type_3']
    """
    model = _Model(
        n_cells, n_genes, n_types, n_batches, mean_umis, seed, sorted_by_label, noise_seed
    )
    return AnnData(
        X=sp.vstack(list(model.blocks()), format="csr"),
        obs=model.obs(),
        var=model.var(),
        uns=_uns(model, sorted_by_label),
    )


def write_synthetic_h5ad(
    path: str | Path,
    n_cells: int,
    n_genes: int,
    *,
    chunk_size: int = 20_000,
    n_types: int = 10,
    n_batches: int = 3,
    mean_umis: float = 2000,
    sorted_by_label: bool = True,
    seed: int = 0,
    noise_seed: int | None = None,
) -> Path:
    """Write :func:`~ginseng.datasets.synthetic_counts` to an ``.h5ad`` file, ``chunk_size`` cells at a time.

    Memory stays bounded by ``chunk_size`` whatever ``n_cells`` (the tutorial's million
    cells by 2,000 genes: about a minute, 0.6 GB peak). The file holds exactly the
    AnnData that :func:`~ginseng.datasets.synthetic_counts` returns with the same arguments, whatever
    ``chunk_size``; ``X`` is CSR with 64-bit ``indptr``, so it can be read backed
    (``anndata.read_h5ad(path, backed="r")``). The file appears at ``path`` only once
    complete.

    Parameters
    ----------
    path
        Output ``.h5ad`` file (replaced if it exists).
    n_cells, n_genes, n_types, n_batches, mean_umis, sorted_by_label, seed, noise_seed
        As in :func:`synthetic_counts`.
    chunk_size
        Cells appended to the file at once; does not change the data.

    Returns
    -------
    The path written.

    Examples
    --------
    >>> import anndata as ad
    >>> import ginseng as gs
    >>> path = gs.datasets.write_synthetic_h5ad(tmp / "s.h5ad", 5000, 300, chunk_size=2000)
    >>> backed = ad.read_h5ad(path, backed="r")
    >>> backed.shape, backed.obs["batch"].nunique()
    ((5000, 300), 3)
    """
    import h5py
    from anndata.io import sparse_dataset, write_elem

    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    path = Path(path)
    model = _Model(
        n_cells, n_genes, n_types, n_batches, mean_umis, seed, sorted_by_label, noise_seed
    )
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        model.write_obs(f, chunk_size)
        write_elem(f, "var", model.var())
        for key in ("obsm", "varm", "obsp", "varp", "layers"):
            write_elem(f, key, {})
        write_elem(f, "uns", _uns(model, sorted_by_label))
        empty = sp.csr_matrix((0, n_genes), dtype=np.float32)
        write_elem(f, "X", empty, dataset_kwargs={"chunks": (1 << 18,), "indptr_dtype": "int64"})
        X = sparse_dataset(f["X"])
        pending: list[sp.csr_matrix] = []
        n_pending = 0
        for block in model.blocks():
            pending.append(block)
            n_pending += block.shape[0]
            if n_pending >= chunk_size:
                X.append(sp.vstack(pending, format="csr"))
                pending, n_pending = [], 0
        if pending:
            X.append(sp.vstack(pending, format="csr"))
    tmp.replace(path)
    return path
