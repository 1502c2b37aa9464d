"""Explanations: deletion test, canonical markers and speed of ``gs.tl.explain``.

Task: Liu 2021 PBMC (``gs.datasets.liu2021_pbmc()``); a model is trained on batches
B1+B2 and explains the cells of B3 (a new batch), twice: with the 12 ``coarse_label``
types, and with the four T-cell types of those merged into one "T" (``major``).

(a) Deletion: for each B3 cell, set its top-20 attributed genes to zero counts, or 20
    random expressed genes (fewer if it expresses fewer), and measure the drop of the
    calibrated probability of the predicted label; the goal is a mean drop >= 3x.
(b) Canonical markers: the top-10 genes of B (MS4A1/CD79A), classical monocytes
    (CD14/LYZ), NK (NKG7/GNLY) and T (CD3E; each T-cell label of the 12-type model)
    contain one of the canonical markers, from ``gs.tl.marker_genes`` (the model file
    alone) and from the mean ``gs.tl.explain`` attribution over B3 cells predicted as
    that type (data-driven); the goal is >= 80% of those types.
(c) Completeness: each cell's attributions (all genes, ``n_top=None``) should add up to
    the change of log-probability from the zero-count cell; the median and 95th
    percentile of the relative gap are reported (quadrature error, 16 nodes).
(d) Speed: cells/s of ``gs.tl.explain`` (n_top=20) over all B3 cells, after a warm-up
    call that compiles (wall clock, and per CPU-second of this process, which the
    load of a shared machine does not inflate); the goal is >= 5,000 cells/s.

Run: ``python benchmarks/bench_explain.py [--epochs 10] [--seed 0]``; appends a table to
``benchmarks/results/explain.md``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

try:
    from benchmarks._common import publish
except ImportError:  # run as a script
    from _common import publish

CANONICAL = {
    "B": ["MS4A1", "CD79A"],
    "Mono_Classical": ["CD14", "LYZ"],
    "NK": ["NKG7", "GNLY"],
    "T": ["CD3E"],
    "CD4 T": ["CD3E"],
    "CD8 T": ["CD3E"],
}
T_TYPES = {"CD4 T", "CD8 T", "CD8_Va7.2", "T_Vd2"}


def deletion(state, X, attributions, k: int, seed: int) -> dict:
    """Mean drop of the predicted label's probability: top-k genes vs k random ones."""
    import scipy.sparse as sp

    X = sp.csr_matrix(X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    proba = state.predict_proba(X)
    codes = proba.argmax(axis=1)
    rows = np.arange(X.shape[0])
    top_mask = np.zeros(X.nnz, bool)
    rand_mask = np.zeros(X.nnz, bool)
    A = sp.csr_matrix(attributions)
    for i in rows:
        lo, hi = X.indptr[i], X.indptr[i + 1]
        cols = X.indices[lo:hi]
        top = A.indices[A.indptr[i] : A.indptr[i + 1]]
        top_mask[lo:hi] = np.isin(cols, top)
        pick = rng.choice(hi - lo, min(k, hi - lo), replace=False)
        rand_mask[lo + pick] = True
    drops = {}
    for name, mask in (("top", top_mask), ("random", rand_mask)):
        Y = X.copy()
        Y.data[mask] = 0
        Y.eliminate_zeros()
        drops[name] = float((proba[rows, codes] - state.predict_proba(Y)[rows, codes]).mean())
    return {"drop_top": drops["top"], "drop_random": drops["random"]}


def canonical_hits(table: dict[str, list[str]]) -> tuple[int, int, list[str]]:
    hits, total, notes = 0, 0, []
    for label, genes in table.items():
        if label not in CANONICAL:
            continue
        total += 1
        found = [g for g in CANONICAL[label] if g in genes]
        hits += bool(found)
        notes.append(f"{label}: {'/'.join(found) if found else 'none'}")
    return hits, total, notes


def run_task(adata, key: str, args) -> dict:
    import ginseng as gs

    batch = adata.obs["batch"].astype(str).to_numpy()
    train = adata[batch != "B3"].copy()
    test = adata[batch == "B3"].copy()
    state = gs.tl.train(train, key, epochs=args.epochs, seed=args.seed)
    gs.tl.explain(test[:256].copy(), state)  # compile
    t0, c0 = time.perf_counter(), time.process_time()
    gs.tl.explain(test, state, n_top=args.k)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    att = test.layers["ginseng_attributions"][:, test.var_names.get_indexer(state.genes)]
    X = test[:, state.genes].X
    result = deletion(state, X, att, args.k, args.seed)

    model_markers = gs.tl.marker_genes(state, n_top=10)
    from_model = {
        str(label): part["gene"].tolist()
        for label, part in model_markers.groupby("label", observed=True)
    }
    full = test.copy()
    gs.tl.explain(full, state, n_top=None)
    values = full.layers["ginseng_attributions"][:, full.var_names.get_indexer(state.genes)]
    explained = full.obs["ginseng_explained_label"].astype(str).to_numpy()
    # Completeness: a cell's attributions add up to log p(cell) - log p(zero-count cell).
    total = full.obs["ginseng_attribution_total"].to_numpy(np.float64)
    gap = np.abs(np.asarray(values.sum(axis=1)).ravel() - total) / np.maximum(np.abs(total), 1e-3)
    from_data = {}
    for label in state.labels:
        rows = explained == label
        if rows.any():
            mean = np.asarray(values[rows].mean(axis=0)).ravel()
            from_data[str(label)] = [str(g) for g in state.genes[np.argsort(-mean)[:10]]]
    hm, tm, notes_m = canonical_hits(from_model)
    hd, td, notes_d = canonical_hits(from_data)
    return {
        "task": key,
        "n_labels": state.n_labels,
        "cells": test.n_obs,
        "cells_per_s": test.n_obs / seconds,
        "cells_per_cpu_s": test.n_obs / cpu_seconds,
        **result,
        "ratio": result["drop_top"] / max(result["drop_random"], 1e-12),
        "model_hits": f"{hm}/{tm}",
        "model_notes": "; ".join(notes_m),
        "data_hits": f"{hd}/{td}",
        "data_notes": "; ".join(notes_d),
        "macro_f1": float(state.metrics["macro_f1"]),
        "standardize": bool(state.config["standardize"]),
        "completeness_median": float(np.median(gap)),
        "completeness_p95": float(np.quantile(gap, 0.95)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    import ginseng as gs

    gs.settings.progress_bar = False
    gs.settings.verbosity = 1
    adata = gs.datasets.liu2021_pbmc()
    coarse = adata.obs["coarse_label"].astype(str)
    adata.obs["major"] = coarse.where(~coarse.isin(T_TYPES), "T").astype("category")
    rows = [run_task(adata, key, args) for key in ("coarse_label", "major")]
    load = os.getloadavg()[0]
    lines = [
        f"### Explanations ({time.strftime('%Y-%m-%d')}, "
        f"`python benchmarks/bench_explain.py --epochs {args.epochs} --seed {args.seed}`)",
        "",
        "Liu 2021 PBMC, trained on B1+B2 with the default settings (standardize="
        f"{rows[0]['standardize']}), explaining the B3 cells; "
        f"load average {load:.1f} on {os.cpu_count()} cores (cells/s is wall-clock, shared "
        "with that load; per CPU-second counts this process's CPU time, all threads).",
        "",
        "| labels | B3 cells | explain cells/s (per CPU-second) | drop top-20 | drop random-20 "
        "| ratio | completeness gap median (p95) | canonical in top-10: marker_genes (model) "
        "| mean attribution (data) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} ({r['n_labels']}) | {r['cells']:,} | {r['cells_per_s']:,.0f} "
            f"({r['cells_per_cpu_s']:,.0f}) "
            f"| {r['drop_top']:.3f} | {r['drop_random']:.3f} | {r['ratio']:.1f}x "
            f"| {r['completeness_median']:.1%} ({r['completeness_p95']:.1%}) "
            f"| {r['model_hits']} ({r['model_notes']}) | {r['data_hits']} ({r['data_notes']}) |"
        )
    publish("\n".join(lines), "explain.md")


if __name__ == "__main__":
    main()
