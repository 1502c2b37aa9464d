"""Training speed, memory and accuracy: ginseng vs CellTypist (SGD mini-batch), one script.

Synthetic counts (``benchmarks/synthetic.py``, unsorted, 10 types, 3 batches) are cut
once into a training file and a held-out query file (cached under
``benchmarks/.cache``). Each method then runs in a fresh subprocess, so its wall time
and peak RSS (VmHWM) are its own; its CPU time (all threads) is reported too, as it
depends less than wall time on the load of a shared machine:

- ginseng: ``gs.tl.train`` on the backed training file (store creation included), then
  prediction on the backed query file in chunks;
- CellTypist 1.7.1: the training file read into memory, CP10k + log1p, then
  ``celltypist.train(use_SGD=True, mini_batch=True, epochs=...)`` and
  ``celltypist.annotate`` on the query file.

Run with the bench environment (CellTypist needs scikit-learn < 1.8)::

    pip install -e ".[bench]"
    python benchmarks/bench_train.py --cells 100000 --genes 3000 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _common import CACHE, peak_rss_mb, publish, run_child


def _macro_f1(y_true, y_pred) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro"))


def child_ginseng(train_h5ad: str, query_h5ad: str, epochs: str) -> dict:
    import anndata as ad

    import ginseng as gs
    from ginseng.tl.kernel import iter_row_chunks

    gs.settings.progress_bar = False
    start, cpu = time.perf_counter(), time.process_time()
    state = gs.tl.train(ad.read_h5ad(train_h5ad, backed="r"), "cell_type", epochs=int(epochs))
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu

    start = time.perf_counter()
    query = ad.read_h5ad(query_h5ad, backed="r")
    assert list(query.var_names) == list(state.genes)  # same synthetic genes, same order
    predictions = [
        state.predict(chunk) for _, chunk in iter_row_chunks(query.X, gs.settings.chunk_size)
    ]
    y_pred = np.concatenate(predictions)
    return {
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "predict_s": time.perf_counter() - start,
        "macro_f1": _macro_f1(query.obs["cell_type"].astype(str), y_pred),
        "peak_rss_mb": peak_rss_mb(),
    }


def child_celltypist(train_h5ad: str, query_h5ad: str, epochs: str) -> dict:
    import anndata as ad
    import celltypist
    import scanpy as sc

    def log_cp10k(adata):
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
        return adata

    start, cpu = time.perf_counter(), time.process_time()
    train = log_cp10k(ad.read_h5ad(train_h5ad))
    model = celltypist.train(
        train,
        labels="cell_type",
        use_SGD=True,
        mini_batch=True,
        epochs=int(epochs),
        n_jobs=2,
        check_expression=False,
        feature_selection=False,
    )
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    query = log_cp10k(ad.read_h5ad(query_h5ad))
    result = celltypist.annotate(query, model=model, majority_voting=False)
    y_pred = result.predicted_labels["predicted_labels"].astype(str)
    return {
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "predict_s": time.perf_counter() - start,
        "macro_f1": _macro_f1(query.obs["cell_type"].astype(str), y_pred),
        "peak_rss_mb": peak_rss_mb(),
    }


def _files(n_cells: int, n_genes: int, n_query: int) -> tuple[Path, Path]:
    import anndata as ad
    from synthetic import write_synthetic_h5ad

    train = CACHE / f"train_{n_cells}x{n_genes}.h5ad"
    query = CACHE / f"query_{n_query}x{n_genes}.h5ad"
    if not (train.exists() and query.exists()):
        CACHE.mkdir(parents=True, exist_ok=True)
        full = CACHE / f"unsorted_{n_cells + n_query}x{n_genes}.h5ad"
        write_synthetic_h5ad(full, n_cells + n_query, n_genes, sorted_by_label=False)
        backed = ad.read_h5ad(full, backed="r")
        backed[:n_cells].to_memory().write_h5ad(train)
        backed[n_cells:].to_memory().write_h5ad(query)
        backed.file.close()
        full.unlink()
    return train, query


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=3000)
    parser.add_argument("--query", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=["ginseng", "celltypist"])
    args = parser.parse_args()

    train, query = _files(args.cells, args.genes, args.query)
    results = {}
    for method in args.methods:
        load_before = os.getloadavg()[0]
        results[method] = run_child(
            __file__, f"_{method}", str(train), str(query), str(args.epochs)
        )
        # Wall times on 2 shared cores scale with the load: record it around each child.
        results[method]["load"] = f"{load_before:.1f}-{os.getloadavg()[0]:.1f}"
        print(method, json.dumps(results[method]), file=sys.stderr)

    command = "python benchmarks/bench_train.py " + " ".join(sys.argv[1:])
    lines = [
        f"### Training ({datetime.now(UTC):%Y-%m-%d}, `{command}`)",
        "",
        f"{args.cells:,} training cells x {args.genes:,} genes, {args.epochs} epochs, "
        f"{args.query:,} held-out query cells.",
        "",
        "| method | train wall s | train CPU s | predict wall s | peak RSS | macro-F1 "
        "| load average |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, r in results.items():
        lines.append(
            f"| {method} | {r['train_s']:.1f} | {r['train_cpu_s']:.1f} | {r['predict_s']:.1f} "
            f"| {r['peak_rss_mb']:,.0f} MB | {r['macro_f1']:.3f} | {r['load']} |"
        )
    if {"ginseng", "celltypist"} <= set(results):
        g, c = results["ginseng"], results["celltypist"]
        lines += [
            "",
            f"ginseng vs CellTypist: training {c['train_s'] / g['train_s']:.1f}x faster "
            f"({c['train_cpu_s'] / g['train_cpu_s']:.1f}x less CPU time), "
            f"peak RSS {g['peak_rss_mb'] / c['peak_rss_mb']:.2f}x, "
            f"macro-F1 {g['macro_f1'] - c['macro_f1']:+.3f}.",
        ]
    table = "\n".join(lines)
    publish(table, "train.md")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        step = {"_ginseng": child_ginseng, "_celltypist": child_celltypist}
        print(json.dumps(step[sys.argv[1]](*sys.argv[2:])))
    else:
        main()
