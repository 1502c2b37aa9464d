"""Classification speed and memory: ginseng vs CellTypist on backed synthetic queries.

The queries are the shared synthetic count files (``benchmarks/synthetic.py``, seed 0,
10 types, 3 batches, sorted by type; cached as ``synthetic_{cells}x{genes}.h5ad``).
Both models are trained once on an independent draw of the same generator: the same
seed-0 type profiles and gene names, fresh per-cell noise (``--train-cells`` cells,
unsorted), restricted to the top ``--model-genes`` genes by ``gs.pp.select_hvgs``
(seurat_v3). They are cached under ``benchmarks/.cache``:

- ginseng: ``gs.tl.train`` on the raw counts of those genes (``--epochs``);
- CellTypist 1.7.1: ``celltypist.train`` with its defaults (lbfgs one-vs-rest logistic
  regression, scaled input) on log1p CP10k (normalised over all genes, then subset).

Each classification runs in a fresh subprocess, so its wall time and peak RSS (VmHWM)
are its own and include reading the query:

- ginseng: ``gs.tl.classify(path, model_path, store_probabilities=True)``, which opens the
  file backed and reads it chunk by chunk;
- CellTypist: ``anndata.read_h5ad(path)`` (in memory), ``normalize_total(1e4)`` +
  ``log1p``, ``celltypist.annotate(adata, model=..., majority_voting=False)``. It builds a
  dense float64 cells x model-genes matrix, so sizes whose estimated peak exceeds the
  memory available are skipped and reported as such; a crash is reported, not raised.

``--profile`` adds a stage-by-stage breakdown of ginseng's call (time and memory).
Run with the bench environment::

    python benchmarks/bench_classify.py --cells 100000 1000000 --repeats 3 --profile
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _common import CACHE, peak_rss_mb, publish, rss_mb, run_child, synthetic_h5ad

LABEL = "cell_type"
# Noise seed of the training cells; the type profiles come from seed 0 like the queries.
TRAIN_NOISE_SEED = 1


def _scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    y_true, y_pred = np.asarray(y_true, str), np.asarray(y_pred, str)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
    }


def _model_paths(n_model_genes: int) -> tuple[Path, Path, Path]:
    stem = f"{n_model_genes}genes"
    return (
        CACHE / f"model_{stem}.h5",
        CACHE / f"celltypist_{stem}.pkl",
        CACHE / f"model_{stem}.json",
    )


def child_prepare(n_train: str, n_genes: str, n_model_genes: str, epochs: str) -> dict:
    """Draw the training cells, select genes, train and cache both models."""
    import celltypist
    import scanpy as sc

    import ginseng as gs
    from ginseng.data.io import save_model

    gs.settings.progress_bar = False
    n_train, n_genes, n_model_genes = int(n_train), int(n_genes), int(n_model_genes)
    # The queries' profiles (seed 0), new cells: the counts are drawn with another seed.
    train = gs.datasets.synthetic_counts(
        n_train, n_genes, sorted_by_label=False, seed=0, noise_seed=TRAIN_NOISE_SEED
    )
    train.obs_names = [f"train_{i}" for i in range(n_train)]
    gs.pp.select_hvgs(train, n_top_genes=n_model_genes)
    genes = train.var_names[train.var["ginseng_genes"].to_numpy()]

    ginseng_path, celltypist_path, meta_path = _model_paths(n_model_genes)
    start = time.perf_counter()
    state = gs.tl.train(train, LABEL, genes="ginseng_genes", epochs=int(epochs))
    ginseng_s = time.perf_counter() - start
    save_model(state, ginseng_path)

    start = time.perf_counter()
    norm = train.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    ct = celltypist.train(norm[:, genes].copy(), labels=LABEL, n_jobs=2, check_expression=False)
    celltypist_s = time.perf_counter() - start
    ct.write(str(celltypist_path))
    meta = {
        "train_cells": n_train,
        "genes": n_genes,
        "model_genes": len(genes),
        "gene_selection": "gs.pp.select_hvgs(n_top_genes, flavor='seurat_v3') on the training cells",
        "epochs": int(epochs),
        "ginseng_train_s": ginseng_s,
        "ginseng_holdout_macro_f1": float(state.metrics.get("macro_f1", float("nan"))),
        "celltypist_train_s": celltypist_s,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def child_ginseng(query: str, model_path: str, batch_size: str, proba: str = "1") -> dict:
    # Libraries classify imports lazily are imported first, as CellTypist's are, so the
    # timed call holds no library import (the process time in the table does).
    import flax.nnx  # noqa: F401
    import jax  # noqa: F401
    import scanpy  # noqa: F401

    import ginseng as gs

    gs.settings.progress_bar = False
    kwargs = {} if batch_size == "default" else {"batch_size": int(batch_size)}
    start = time.perf_counter()
    out = gs.tl.classify(query, model_path, store_probabilities=proba == "1", **kwargs)
    # Peak taken before scoring, whose label arrays would add to it.
    result = {"wall_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}
    result["n_cells"] = out.n_obs
    return result | _scores(out.obs[LABEL], out.obs["ginseng_cell_type"])


def child_celltypist(query: str, model_path: str) -> dict:
    import anndata as ad
    import celltypist
    import scanpy as sc

    start = time.perf_counter()
    adata = ad.read_h5ad(query)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    pred = celltypist.annotate(adata, model=model_path, majority_voting=False)
    result = {"wall_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}
    result["n_cells"] = adata.n_obs
    y_pred = pred.predicted_labels["predicted_labels"]
    return result | _scores(adata.obs[LABEL], y_pred)


def child_profile(query: str, model_path: str) -> dict:
    """ginseng's classify loop taken apart: seconds and MB per stage."""
    import anndata as ad
    import pandas as pd
    import scanpy  # noqa: F401
    import scipy.sparse as sp

    import ginseng as gs
    from ginseng.data.io import load_model
    from ginseng.tl.kernel import align_genes, assign_labels, check_chunk, iter_row_chunks
    from ginseng.tl.kernel import model_label_colors as label_colors

    t: dict[str, float] = {}
    mem = {"after_imports": rss_mb()}

    def clock(key, fn, *a):
        start = time.perf_counter()
        value = fn(*a)
        t[key] = t.get(key, 0.0) + time.perf_counter() - start
        return value

    state = clock("load_model", load_model, model_path)
    state.predict_proba(np.zeros((1, state.n_genes), np.float32))  # jit compile
    mem["after_model_and_jit"] = rss_mb()
    backed = clock("open_backed_and_obs", lambda: ad.read_h5ad(query, backed="r"))
    mem["after_open_backed"] = rss_mb()
    mem["peak_after_open_backed"] = peak_rss_mb()
    obs_mb = backed.obs.memory_usage(deep=True).sum() / 2**20
    alignment = clock("align_genes", lambda: align_genes(state.genes, backed.var))
    n, n_labels = backed.n_obs, state.n_labels
    proba = np.empty((n, n_labels), np.float32)
    codes, conf = np.empty(n, np.int32), np.empty(n, np.float32)
    chunks = iter_row_chunks(backed.X, gs.settings.chunk_size)
    nnz = 0
    while (item := clock("read_rows", next, chunks, None)) is not None:
        rows, chunk = item
        nnz += chunk.nnz
        clock("check_counts", lambda c=chunk: check_chunk(c, check="sign", where="X"))
        aligned = clock("align_chunk", lambda c=chunk: alignment.take(c))
        clock("densify_again_(in_predict)", lambda a=aligned: sp.csr_matrix(a).toarray())
        p = clock("predict_proba", state.predict_proba, aligned)
        start = time.perf_counter()
        codes[rows] = p.argmax(axis=1)
        conf[rows] = p[np.arange(len(p)), codes[rows]]
        proba[rows] = p
        t["argmax_store"] = t.get("argmax_store", 0.0) + time.perf_counter() - start
    mem["after_loop"] = rss_mb()
    mem["peak_after_loop"] = peak_rss_mb()
    labels = [str(x) for x in state.labels]

    def annotate():
        predicted = assign_labels(codes, conf, labels, None)
        backed.obs["ginseng_cell_type"] = pd.Categorical(predicted)
        backed.obs["ginseng_confidence"] = conf
        backed.uns["ginseng_cell_type_colors"] = label_colors(list(predicted.categories), labels)
        backed.obsm["ginseng_probabilities"] = proba

    clock("write_obs_obsm_uns", annotate)
    mem["after_annotate"] = rss_mb()
    return {
        "n_cells": n,
        "nnz": nnz,
        "chunk_size": gs.settings.chunk_size,
        "seconds": t,
        "rss_mb": mem,
        "peak_rss_mb": peak_rss_mb(),
        "obs_mb": float(obs_mb),
        "outputs_mb": (proba.nbytes + codes.nbytes + conf.nbytes) / 2**20,
    }


def _run(step: str, *args: str) -> dict:
    start = time.perf_counter()
    try:
        return run_child(__file__, step, *args) | {"process_s": time.perf_counter() - start}
    except subprocess.CalledProcessError as err:
        tail = (err.stderr or "").strip().splitlines()[-1:] or [""]
        why = "killed (signal 9, out of memory?)" if err.returncode == -9 else tail[0][:120]
        return {"error": f"failed: {why}"}


def _mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _celltypist_need_gb(query: Path, n_model_genes: int) -> float:
    """Estimated peak of CellTypist's annotate: the CSR query in memory plus two dense
    float64 cells x model-genes arrays (the centred and the scaled matrix)."""
    import h5py

    with h5py.File(query, "r") as f:
        nnz, n = f["X/data"].shape[0], f["X/indptr"].shape[0] - 1
    return (nnz * 8 + n * 8 + 2 * n * n_model_genes * 8) / 2**30 + 0.5


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--model-genes", type=int, default=2000)
    parser.add_argument("--train-cells", type=int, default=30_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", default="default", help="ginseng rows per chunk")
    parser.add_argument(
        "--methods", nargs="+", default=["ginseng", "celltypist"],
        choices=["ginseng", "ginseng-noproba", "celltypist"],
        help="ginseng-noproba: store_probabilities=False",
    )  # fmt: skip
    parser.add_argument(
        "--celltypist-max-gb", type=float, default=None,
        help="skip CellTypist above this estimated peak (default: 80%% of MemAvailable)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="ginseng stage breakdown")
    args = parser.parse_args()

    ginseng_model, celltypist_model, meta_path = _model_paths(args.model_genes)
    if not (ginseng_model.exists() and celltypist_model.exists() and meta_path.exists()):
        print("training the cached models ...", file=sys.stderr)
        prep = (args.train_cells, args.genes, args.model_genes, args.epochs)
        run_child(__file__, "_prepare", *map(str, prep))
    meta = json.loads(meta_path.read_text())
    limit_gb = args.celltypist_max_gb or 0.8 * _mem_available_gb()

    results: dict[tuple[int, str], list[dict] | dict] = {}
    profiles = {}
    for n_cells in args.cells:
        query = synthetic_h5ad(n_cells, args.genes)
        for method in args.methods:
            results[n_cells, method] = []
            if method == "celltypist":
                need = _celltypist_need_gb(query, meta["model_genes"])
                if need > limit_gb:
                    why = f"skipped: needs ~{need:.0f} GB, {limit_gb:.0f} GB available"
                    results[n_cells, method] = {"error": why}
        # Methods take turns in each repeat, so a shared machine's load hits them alike.
        for _ in range(args.repeats):
            for method in args.methods:
                if isinstance(results[n_cells, method], dict):
                    continue
                if method.startswith("ginseng"):
                    proba = "0" if method == "ginseng-noproba" else "1"
                    r = _run("_ginseng", str(query), str(ginseng_model), args.batch_size, proba)
                else:
                    r = _run("_celltypist", str(query), str(celltypist_model))
                print(n_cells, method, json.dumps(r), file=sys.stderr)
                if "error" in r:
                    results[n_cells, method] = r
                else:
                    results[n_cells, method].append(r)
        if args.profile:
            profiles[n_cells] = _run("_profile", str(query), str(ginseng_model))
            print(n_cells, "profile", json.dumps(profiles[n_cells]), file=sys.stderr)

    publish(_report(args, meta, results, profiles), "classify.md")


def _report(args, meta, results, profiles) -> str:
    command = "python benchmarks/bench_classify.py " + " ".join(sys.argv[1:])
    lines = [
        f"### Classification ({datetime.now(UTC):%Y-%m-%d}, `{command}`)",
        "",
        f"Backed synthetic .h5ad queries x {args.genes:,} genes (CSR float32, uncompressed); "
        f"{meta['model_genes']:,}-gene models trained on {meta['train_cells']:,} independent "
        f"cells ({meta['gene_selection']}; ginseng {meta['epochs']} epochs, CellTypist "
        "default lbfgs). call s: the timed call, from reading the query to the predictions "
        "(libraries imported beforehand); process s: the whole child process, imports "
        f"included. Medians of {args.repeats} fresh processes; peak RSS = VmHWM of the "
        "process. Shared 2-core, 24 GiB machine; queries read through the OS page cache.",
        "",
        "| cells | method | call s (min-max) | cells/s | process s | peak RSS | accuracy "
        "| macro-F1 |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    speed, peak = {}, {}
    for (n_cells, method), runs in results.items():
        if isinstance(runs, dict):
            lines.append(f"| {n_cells:,} | {method} | {runs['error']} | | | | | |")
            continue
        wall, rss = _median(runs, "wall_s"), _median(runs, "peak_rss_mb")
        speed[n_cells, method], peak[n_cells, method] = n_cells / wall, rss
        spread = f" ({min(r['wall_s'] for r in runs):.1f}-{max(r['wall_s'] for r in runs):.1f})"
        lines.append(
            f"| {n_cells:,} | {method} | {wall:.1f}{spread if len(runs) > 1 else ''} "
            f"| {n_cells / wall:,.0f} | {_median(runs, 'process_s'):.1f} | {rss:,.0f} MB "
            f"| {runs[0]['accuracy']:.3f} "
            f"| {runs[0]['macro_f1']:.3f} |"
        )
    lines.append("")
    for n_cells in args.cells:
        if (n_cells, "ginseng") in speed and (n_cells, "celltypist") in speed:
            ratio = speed[n_cells, "ginseng"] / speed[n_cells, "celltypist"]
            mem = peak[n_cells, "ginseng"] / peak[n_cells, "celltypist"]
            lines.append(
                f"- {n_cells:,} cells: ginseng {ratio:.1f}x CellTypist's cells/s "
                f"(goal >= 15x), peak RSS {mem:.2f}x CellTypist's."
            )
    sizes = sorted(n for n, m in peak if m == "ginseng")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        growth = peak[hi, "ginseng"] / peak[lo, "ginseng"] - 1
        lines.append(
            f"- ginseng peak RSS {hi:,} vs {lo:,} cells: {growth:+.1%} "
            f"({peak[lo, 'ginseng']:,.0f} -> {peak[hi, 'ginseng']:,.0f} MB; goal within 10%)."
        )
    if profiles:
        lines += ["", _profile_table(profiles)]
    return "\n".join(lines)


def _profile_table(profiles: dict) -> str:
    ok = {n: p for n, p in profiles.items() if "error" not in p}
    stages = list(dict.fromkeys(k for p in ok.values() for k in p["seconds"]))
    head = " | ".join(f"{n:,} cells" for n in ok)
    lines = [
        "ginseng stages (one process per size, jit compiled before timing):",
        "",
        f"| stage | {head} |",
        "| --- |" + " ---: |" * len(ok),
    ]
    for stage in stages:
        cells = " | ".join(f"{p['seconds'].get(stage, 0):.2f} s" for p in ok.values())
        lines.append(f"| {stage} | {cells} |")
    for key in ok[next(iter(ok))]["rss_mb"]:
        cells = " | ".join(f"{p['rss_mb'][key]:,.0f} MB" for p in ok.values())
        lines.append(f"| RSS {key.replace('_', ' ')} | {cells} |")
    for key, name in (("obs_mb", "obs (deep)"), ("outputs_mb", "codes+confidence+proba")):
        cells = " | ".join(f"{p[key]:,.0f} MB" for p in ok.values())
        lines.append(f"| {name} | {cells} |")
    cells = " | ".join(f"{p['peak_rss_mb']:,.0f} MB" for p in ok.values())
    lines.append(f"| peak RSS | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        step = {
            "_prepare": child_prepare,
            "_ginseng": child_ginseng,
            "_celltypist": child_celltypist,
            "_profile": child_profile,
        }
        print(json.dumps(step[sys.argv[1]](*sys.argv[2:])))
    else:
        main()
