"""Write synthetic raw counts to .h5ad with :func:`ginseng.datasets.write_synthetic_h5ad`.

The generator lives in the package (``gs.datasets.synthetic_counts`` in memory,
``gs.datasets.write_synthetic_h5ad`` chunk by chunk); this script is its command line,
used by the benchmarks to make their cached count files:

    python benchmarks/synthetic.py OUT.h5ad --cells 100000 --genes 20000
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from ginseng.datasets import synthetic_counts, write_synthetic_h5ad

__all__ = ["main", "synthetic_counts", "write_synthetic_h5ad"]


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
