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
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from _common import CACHE, peak_rss_mb, publish, run_child, synthetic_h5ad, synthetic_zarr

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


def child_profile(query: str, model_path: str, repeats: str = "3") -> dict:
    """Where classification's time goes, next to its floor: reading the rows, nothing else.

    In one fresh process, after the model's forward pass is compiled:

    - ``read floor``: the query's rows read chunk by chunk (``iter_row_chunks``, the
      reader ``gs.tl.classify`` uses) from the same file, doing nothing else;
    - ``classify``: the public call ``gs.tl.classify(path, model)`` (it opens the file,
      reads obs and var, and classifies the counts chunk by chunk with read-ahead);
    - the stages of that call's per-chunk work, run serially one after the other on
      each chunk (so they add up; the real call overlaps reading with the rest).

    Floors and calls alternate ``repeats`` times (medians reported), so a load change on
    a shared machine hits both alike.
    """
    import ginseng as gs
    from ginseng.data.io import load_model
    from ginseng.model.first_layer import first_linear_sparse
    from ginseng.model.novelty import novelty_scores
    from ginseng.tl.kernel import align_genes, calibrated_proba, check_chunk, iter_row_chunks

    gs.settings.progress_bar = False
    chunk_size = gs.settings.chunk_size
    state = load_model(model_path)
    opened = _open_counts(query)
    alignment = align_genes(state.genes, opened.var)
    missing = alignment.missing if alignment.missing.any() else None
    # Compile the forward pass for the shapes the chunks use.
    for _, chunk in iter_row_chunks(opened.matrix[: min(chunk_size, opened.n_obs)], chunk_size):
        state.predict_hidden_logits(alignment.take(chunk), missing=missing)

    def read_floor() -> float:
        start = time.perf_counter()
        for _ in iter_row_chunks(opened.matrix, chunk_size):
            pass
        return time.perf_counter() - start

    def call() -> float:
        start = time.perf_counter()
        gs.tl.classify(query, state)  # opens the file (obs, var) and reads it in chunks
        return time.perf_counter() - start

    floors, calls = [], []
    for _ in range(int(repeats)):
        floors.append(read_floor())
        calls.append(call())

    t: dict[str, float] = {}

    def clock(key, fn, *a, **kw):
        start = time.perf_counter()
        value = fn(*a, **kw)
        t[key] = t.get(key, 0.0) + time.perf_counter() - start
        return value

    chunks = iter_row_chunks(opened.matrix, chunk_size)
    first_layer_rows = min(4096, chunk_size)
    while (item := clock("read rows", next, chunks, None)) is not None:
        _, chunk = item
        clock("check counts (sign)", check_chunk, chunk, check="sign", where="X")
        aligned = clock("align genes (take)", alignment.take, chunk)
        for lo in range(0, aligned.shape[0], first_layer_rows):
            block = aligned[lo : lo + first_layer_rows]
            clock(
                "first layer (sparse)",
                first_linear_sparse, state.config, state.params, block, missing=missing,
            )  # fmt: skip
        hidden, logits = clock(
            "forward (first layer + network)", state.predict_hidden_logits, aligned, missing=missing
        )
        if state.uncertainty is not None:
            clock("novelty", novelty_scores, hidden, state.uncertainty)
        proba = clock("softmax + argmax", calibrated_proba, logits, state.temperature)
        clock("softmax + argmax", proba.argmax, axis=1)
    t["network (forward - first layer)"] = (
        t.pop("forward (first layer + network)") - t["first layer (sparse)"]
    )
    return {
        "n_cells": opened.n_obs,
        "format": opened.fmt,
        "chunk_size": chunk_size,
        "read_floor_s": statistics.median(floors),
        "classify_s": statistics.median(calls),
        "floors_s": floors,
        "calls_s": calls,
        "stages_s": t,
        "load": os.getloadavg(),
        "peak_rss_mb": peak_rss_mb(),
    }


@dataclass
class _Counts:
    """A query's counts left on disk, with its var (what classify reads of it)."""

    matrix: Any
    var: Any
    n_obs: int
    fmt: str


def _open_counts(path: str) -> _Counts:
    """The counts of an .h5ad (backed) or AnnData .zarr file, read as classify reads them."""
    if path.endswith(".zarr"):
        import zarr
        from anndata.io import read_elem, sparse_dataset

        group = zarr.open_group(path, mode="r")
        matrix = sparse_dataset(group["X"])
        return _Counts(matrix, read_elem(group["var"]), matrix.shape[0], "zarr")
    from ginseng.data.io import read_adata

    backed = read_adata(path, backed="r")
    return _Counts(backed.X, backed.var, backed.n_obs, "h5ad")


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
    parser.add_argument(
        "--profile", action="store_true",
        help="ginseng's read floor, call and stage breakdown (per format, --repeats times)",
    )  # fmt: skip
    parser.add_argument("--formats", nargs="+", default=["h5ad", "zarr"], choices=["h5ad", "zarr"])
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
            for fmt in args.formats:
                path = query if fmt == "h5ad" else synthetic_zarr(n_cells, args.genes)
                profile = _run("_profile", str(path), str(ginseng_model), str(args.repeats))
                profiles[n_cells, fmt] = profile
                print(n_cells, fmt, "profile", json.dumps(profile), file=sys.stderr)

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
    ok = {key: p for key, p in profiles.items() if "error" not in p}
    failed = [f"{n:,} {fmt}: {p['error']}" for (n, fmt), p in profiles.items() if "error" in p]
    if not ok:
        return "ginseng profile: " + "; ".join(failed)
    head = " | ".join(f"{n:,} {fmt}" for n, fmt in ok)
    lines = [
        "ginseng against its floor (one fresh process per column; read floor and classify "
        "alternate, medians; the stages run serially on each chunk after the timed calls, "
        "so they add up, whereas the call overlaps reading with the rest):",
        "",
        f"| | {head} |",
        "| --- |" + " ---: |" * len(ok),
    ]

    def row(name: str, values: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    row("read floor s", [f"{p['read_floor_s']:.2f}" for p in ok.values()])
    row("classify s (public call)", [f"{p['classify_s']:.2f}" for p in ok.values()])
    row(
        "**classify / read floor**",
        [f"**{p['classify_s'] / p['read_floor_s']:.2f}x**" for p in ok.values()],
    )
    row("cells/s", [f"{p['n_cells'] / p['classify_s']:,.0f}" for p in ok.values()])
    stages = list(dict.fromkeys(k for p in ok.values() for k in p["stages_s"]))
    for stage in stages:
        row(f"stage: {stage}", [f"{p['stages_s'].get(stage, 0):.2f} s" for p in ok.values()])
    row("stages, sum", [f"{sum(p['stages_s'].values()):.2f} s" for p in ok.values()])
    row("peak RSS", [f"{p['peak_rss_mb']:,.0f} MB" for p in ok.values()])
    row(
        "load average (1, 5, 15 min)",
        ["/".join(f"{x:.1f}" for x in p["load"]) for p in ok.values()],
    )
    row("floors s (all)", [" ".join(f"{x:.2f}" for x in p["floors_s"]) for p in ok.values()])
    row("calls s (all)", [" ".join(f"{x:.2f}" for x in p["calls_s"]) for p in ok.values()])
    if failed:
        lines += ["", "Failed: " + "; ".join(failed)]
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
