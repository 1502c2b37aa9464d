"""Synthetic raw counts with cell types and batches, written to .h5ad in bounded memory.

Each cell draws its library size (log-normal, then Poisson), splits it over contiguous
blocks of genes ("modules") with gamma-distributed cell-specific weights, which gives
negative-binomial-like overdispersion, and places the UMIs of each module on genes
following its cell type's profile (a shared log-normal profile, perturbed per type and
per batch, plus a few strong markers per type). Drawing sorted uniforms per module (from
exponential spacings) makes the gene indices of each cell come out sorted, so one
``searchsorted`` and a run-length count give the CSR rows without any sort.

    python benchmarks/synthetic.py OUT.h5ad --cells 100000 --genes 20000
"""

from __future__ import annotations

import argparse
import resource
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

# Cells generated per step: fixed so that the data depend only on the seed, not on
# chunk_size, and small enough that the per-UMI temporaries stay in cache-sized arrays.
_BLOCK = 2048
_N_MODULES = 64


class _Model:
    """Mean profiles and per-cell labels, all drawn from one seeded generator."""

    def __init__(self, n_cells, n_genes, n_types, n_batches, mean_umis, seed, sorted_by_label):
        if min(n_cells, n_genes, n_types, n_batches) < 1 or mean_umis <= 0:
            raise ValueError("n_cells, n_genes, n_types, n_batches and mean_umis must be positive")
        self.seed = seed
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
        self.types = np.sort(types) if sorted_by_label else types
        self.batches = rng.integers(0, n_batches, size=n_cells)

    def obs(self) -> pd.DataFrame:
        n = len(self.types)
        type_names = [f"type_{t}" for t in range(self.n_types)]
        batch_names = [f"batch_{b}" for b in range(self.n_batches)]
        return pd.DataFrame(
            {
                "cell_type": pd.Categorical.from_codes(self.types, categories=type_names),
                "batch": pd.Categorical.from_codes(self.batches, categories=batch_names),
            },
            index=pd.Index([f"cell_{i}" for i in range(n)]),
        )

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
        rng = np.random.default_rng([self.seed, block])
        stop = min(start + _BLOCK, len(self.types))
        profile = self.types[start:stop] * self.n_batches + self.batches[start:stop]
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


def _uns(n_types, n_batches, mean_umis, seed, sorted_by_label) -> dict:
    return {
        "synthetic": {
            "n_types": n_types,
            "n_batches": n_batches,
            "mean_umis": float(mean_umis),
            "seed": seed,
            "sorted_by_label": sorted_by_label,
        }
    }


def make_synthetic_adata(
    n_cells: int,
    n_genes: int,
    *,
    n_types: int = 10,
    seed: int = 0,
    sorted_by_label: bool = True,
    n_batches: int = 3,
    mean_umis: float = 2000,
) -> ad.AnnData:
    """Return in memory the AnnData that :func:`write_synthetic_h5ad` writes."""
    model = _Model(n_cells, n_genes, n_types, n_batches, mean_umis, seed, sorted_by_label)
    X = sp.vstack(list(model.blocks()), format="csr")
    return ad.AnnData(
        X=X,
        obs=model.obs(),
        var=model.var(),
        uns=_uns(n_types, n_batches, mean_umis, seed, sorted_by_label),
    )


def write_synthetic_h5ad(
    path: str | Path,
    n_cells: int,
    n_genes: int,
    *,
    n_types: int = 10,
    chunk_size: int = 20_000,
    seed: int = 0,
    sorted_by_label: bool = True,
    n_batches: int = 3,
    mean_umis: float = 2000,
) -> Path:
    """Write synthetic integer counts (CSR float32 ``X``) to ``path``, ``chunk_size`` cells at a time.

    ``obs`` has categorical ``cell_type`` ("type_0", ...) and ``batch`` ("batch_0",
    ...), sorted by ``cell_type`` when ``sorted_by_label``; ``var`` is indexed by
    "gene_0", ... with ``marker_of`` naming the type a gene marks (or ""). The result
    equals ``make_synthetic_adata`` with the same arguments whatever ``chunk_size``.
    """
    path = Path(path)
    model = _Model(n_cells, n_genes, n_types, n_batches, mean_umis, seed, sorted_by_label)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        ad.io.write_elem(f, "obs", model.obs())
        ad.io.write_elem(f, "var", model.var())
        for key in ("obsm", "varm", "obsp", "varp", "layers"):
            ad.io.write_elem(f, key, {})
        ad.io.write_elem(f, "uns", _uns(n_types, n_batches, mean_umis, seed, sorted_by_label))
        empty = sp.csr_matrix((0, n_genes), dtype=np.float32)
        ad.io.write_elem(
            f, "X", empty, dataset_kwargs={"chunks": (1 << 18,), "indptr_dtype": "int64"}
        )
        X = ad.io.sparse_dataset(f["X"])
        pending, n_pending = [], 0
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--types", type=int, default=10)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--mean-umis", type=float, default=2000)
    parser.add_argument("--chunk-size", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unsorted", action="store_true", help="do not sort cells by type")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    write_synthetic_h5ad(
        args.out,
        args.cells,
        args.genes,
        n_types=args.types,
        chunk_size=args.chunk_size,
        seed=args.seed,
        sorted_by_label=not args.unsorted,
        n_batches=args.batches,
        mean_umis=args.mean_umis,
    )
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"wrote {args.out} ({args.cells} x {args.genes}) in {seconds:.1f} s, peak RSS {peak_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
