"""Store creation and streaming speed and memory, from a backed .h5ad.

For each cell count, a label-sorted synthetic count file (cached under
``benchmarks/.cache``) is turned into a GinsengDataset in a fresh subprocess, so that
wall time and peak RSS belong to that step alone; streaming throughput is measured for
one shuffled epoch and one label-balanced epoch. With ``--dense-baseline`` the same
cells are also written as the dense float32 zarr array the original ginseng 0.2 used
(row chunks x all genes), and its size and shuffled-read throughput are reported beside
ours as ratios.

Usage::

    python benchmarks/bench_store.py --cells 100000 1000000 --genes 2000 --dense-baseline
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import CACHE, peak_rss_mb, publish, rss_mb, run_child, synthetic_h5ad


def _dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _stream_rate(ds, **kwargs) -> float:
    start, n = time.perf_counter(), 0
    for _, y in ds.stream(batch_size=256, split="all", seed=0, **kwargs):
        n += y.size
    return n / (time.perf_counter() - start)


def child_create(h5ad: str, store: str) -> dict:
    import anndata as ad

    import ginseng as gs
    from ginseng.data import GinsengDataset

    gs.settings.progress_bar = False
    adata = ad.read_h5ad(h5ad, backed="r")
    # What the backed AnnData itself holds (obs, var, the index): not ginseng's memory.
    before = rss_mb()
    start = time.perf_counter()
    ds = GinsengDataset.create(store, adata, "cell_type", group_key="batch", overwrite=True)
    seconds = time.perf_counter() - start
    return {
        "create_s": seconds,
        "create_cells_per_s": ds.n_cells / seconds,
        "create_peak_rss_mb": peak_rss_mb(),
        "anndata_rss_mb": before,
        "store_mb": _dir_size_mb(Path(store)),
        "counts_dtype": ds.counts_dtype.name,
    }


def child_stream(store: str) -> dict:
    from ginseng.data import GinsengDataset

    ds = GinsengDataset(store)
    return {
        "stream_shuffled_cells_per_s": _stream_rate(ds, shuffle=True),
        "stream_balanced_cells_per_s": _stream_rate(ds, shuffle=True, balance_labels=True),
        "stream_peak_rss_mb": peak_rss_mb(),
    }


def child_dense(h5ad: str, store: str, chunk_rows: int = 1024) -> dict:
    """The 0.2 layout: one dense float32 array, chunks of rows x all genes."""
    import anndata as ad
    import numpy as np
    import zarr
    from zarr.codecs import BloscCodec

    adata = ad.read_h5ad(h5ad, backed="r")
    n, g = adata.shape
    group = zarr.open_group(store, mode="w", zarr_format=3)
    X = group.create_array(
        "X",
        shape=(n, g),
        chunks=(chunk_rows, g),
        dtype=np.float32,
        compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
    )
    start = time.perf_counter()
    for lo in range(0, n, 8 * chunk_rows):
        X[lo : lo + 8 * chunk_rows] = adata.X[lo : lo + 8 * chunk_rows].toarray()
    create_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    start, seen = time.perf_counter(), 0
    for block in rng.permutation(-(-n // chunk_rows)):
        rows = X[block * chunk_rows : (block + 1) * chunk_rows]
        rows = rows[rng.permutation(rows.shape[0])]
        seen += rows.shape[0]
    return {
        "dense_create_s": create_s,
        "dense_store_mb": _dir_size_mb(Path(store)),
        "dense_read_cells_per_s": seen / (time.perf_counter() - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--dense-baseline", action="store_true")
    args = parser.parse_args()

    rows = []
    for n_cells in args.cells:
        h5ad = synthetic_h5ad(n_cells, args.genes)
        store = CACHE / f"bench_store_{n_cells}.zarr"
        result = {"cells": n_cells, "genes": args.genes}
        result |= run_child(__file__, "_create", str(h5ad), str(store))
        result |= run_child(__file__, "_stream", str(store))
        if args.dense_baseline:
            dense = CACHE / f"bench_dense_{n_cells}.zarr"
            result |= run_child(__file__, "_dense", str(h5ad), str(dense))
            shutil.rmtree(dense)
        shutil.rmtree(store)
        print(json.dumps(result), file=sys.stderr)
        rows.append(result)

    command = "python benchmarks/bench_store.py " + " ".join(sys.argv[1:])
    lines = [
        f"### Store ({datetime.now(UTC):%Y-%m-%d}, `{command}`)",
        "",
        "| cells x genes | create cells/s | create peak RSS (backed AnnData alone) "
        "| store size | dtype "
        "| shuffled stream cells/s | balanced stream cells/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['cells']:,} x {r['genes']:,} | {r['create_cells_per_s']:,.0f} "
            f"| {r['create_peak_rss_mb']:,.0f} MB ({r['anndata_rss_mb']:,.0f} MB) "
            f"| {r['store_mb']:,.0f} MB | {r['counts_dtype']} "
            f"| {r['stream_shuffled_cells_per_s']:,.0f} | {r['stream_balanced_cells_per_s']:,.0f} |"
        )
    if args.dense_baseline:
        lines += [
            "",
            "Dense float32 zarr (ginseng 0.2 layout) on the same cells, as ratios to it:",
            "",
            "| cells | dense size | ginseng size | size ratio | dense shuffled read cells/s "
            "| read speed-up |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            lines.append(
                f"| {r['cells']:,} | {r['dense_store_mb']:,.0f} MB | {r['store_mb']:,.0f} MB "
                f"| {r['dense_store_mb'] / r['store_mb']:.1f}x smaller "
                f"| {r['dense_read_cells_per_s']:,.0f} "
                f"| {r['stream_shuffled_cells_per_s'] / r['dense_read_cells_per_s']:.2f}x |"
            )
    table = "\n".join(lines)
    publish(table, "store.md")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        step = {"_create": child_create, "_stream": child_stream, "_dense": child_dense}
        print(json.dumps(step[sys.argv[1]](*sys.argv[2:])))
    else:
        main()
