"""Wall time and peak memory of ``select_hvgs`` on a backed .h5ad.

A label-sorted synthetic count file (cached under ``benchmarks/.cache`` and reused) is
opened backed in a fresh subprocess, so that the peak RSS reported is that of the
selection step alone (imports included). The markdown table is printed and appended to
``benchmarks/results/hvg.md``.

Usage::

    python benchmarks/bench_hvg.py --cells 100000 1000000 --genes 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime

from _common import peak_rss_mb, publish, run_child, synthetic_h5ad


def child_select(h5ad: str, n_top: str, flavor: str, batch_key: str, chunk_size: str) -> dict:
    import anndata as ad

    import ginseng as gs
    from ginseng.utils import select_hvgs

    gs.settings.progress_bar = False
    adata = ad.read_h5ad(h5ad, backed="r")
    start = time.perf_counter()
    select_hvgs(
        adata,
        int(n_top),
        flavor=flavor,
        batch_key=batch_key or None,
        chunk_size=int(chunk_size) if chunk_size else None,
    )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "n_selected": int(adata.var["ginseng_genes"].sum()),
        "nnz": int(adata.file["X/indices"].shape[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--n-top", type=int, default=2000)
    parser.add_argument("--flavor", default="seurat_v3", choices=["seurat_v3", "seurat"])
    parser.add_argument("--batch-key", default="", help="obs column, e.g. batch")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: settings")
    args = parser.parse_args()

    rows = []
    for n_cells in args.cells:
        h5ad = synthetic_h5ad(n_cells, args.genes)
        chunk = "" if args.chunk_size is None else str(args.chunk_size)
        step = [str(h5ad), str(args.n_top), args.flavor, args.batch_key, chunk]
        result = run_child(__file__, "_select", *step)
        result |= {"cells": n_cells, "file_gb": h5ad.stat().st_size / 2**30}
        print(json.dumps(result), file=sys.stderr)
        rows.append(result)

    command = "python benchmarks/bench_hvg.py " + " ".join(sys.argv[1:])
    lines = [
        f"### select_hvgs, backed ({datetime.now(UTC):%Y-%m-%d}, `{command}`)",
        "",
        "| cells x genes | nnz | file | flavor | batch_key | chunk_size | wall time "
        "| cells/s | peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['cells']:,} x {args.genes:,} | {r['nnz']:,} | {r['file_gb']:.1f} GB "
            f"| {args.flavor} | {args.batch_key or '-'} | {args.chunk_size or 'default'} "
            f"| {r['seconds']:.1f} s | {r['cells'] / r['seconds']:,.0f} "
            f"| {r['peak_rss_mb']:,.0f} MB |"
        )
    publish("\n".join(lines), "hvg.md")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_select":
        print(json.dumps(child_select(*sys.argv[2:])))
    else:
        main()
