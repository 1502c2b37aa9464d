"""Accuracy benchmark: ginseng vs CellTypist vs logistic regression on real datasets.

Each task (see ``datasets.tasks()``) is run for every seed and fold; each method gets the
same raw-count train/test AnnData objects. Results go to ``benchmarks/results/accuracy.md``
(a markdown table headed by the exact command) and ``accuracy_runs.json`` (every run,
with per-label F1).

Examples
--------
    python benchmarks/bench_accuracy.py                     # all tasks, seeds 0 1 2
    python benchmarks/bench_accuracy.py --tasks cbmc zeisel --seeds 0
    python benchmarks/bench_accuracy.py --quick             # 1 seed, <=3000 train cells
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
import traceback
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import DEFAULT_TASKS, load_dataset, tasks
from peers import PeerResult, metrics, run_celltypist, run_logreg

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("ginseng", "celltypist", "logreg")


def ginseng_train():
    """Return ``ginseng.tl.train`` or None while the training API does not exist yet."""
    try:
        import ginseng as gs

        return gs.tl.train
    except (ImportError, AttributeError):
        return None


def align_counts(x: sp.csr_matrix, genes: pd.Index, model_genes: list[str]) -> sp.csr_matrix:
    """Columns of ``x`` reordered to ``model_genes``; genes the query lacks are all-zero."""
    pos = pd.Index(genes).get_indexer(model_genes)
    present = np.flatnonzero(pos >= 0)
    # A selection matrix moves each present gene's column to its model position in one product.
    sel = sp.csr_matrix(
        (np.ones(present.size, dtype=np.float32), (pos[present], present)),
        shape=(x.shape[1], len(model_genes)),
    )
    return (sp.csr_matrix(x) @ sel).tocsr()


def run_ginseng(
    train_adata: ad.AnnData,
    test_adata: ad.AnnData,
    label_key: str,
    seed: int,
    *,
    epochs: int,
    n_hvgs: int = 0,
    overrides: dict | None = None,
) -> PeerResult:
    """Train with ``ginseng.tl.train`` on raw counts and predict calibrated probabilities.

    With ``n_hvgs``, ``gs.pp.select_hvgs`` (seurat_v3) picks that many genes on the
    training cells only (counted in the training time); ``overrides`` are trainer settings.
    """
    import ginseng as gs

    # Per-epoch bars and log lines would drown the benchmark's own one-line-per-run log.
    gs.settings.progress_bar = False
    gs.settings.verbosity = 1
    train = ginseng_train()
    t0 = time.perf_counter()
    genes = None
    if n_hvgs and n_hvgs < train_adata.n_vars:
        table = gs.pp.select_hvgs(train_adata, n_top_genes=n_hvgs, inplace=False)
        genes = table["selected"].to_numpy()
    state = train(
        train_adata, label_key, layer=None, genes=genes, epochs=epochs, seed=seed,
        **(overrides or {}),
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = align_counts(test_adata.X, test_adata.var_names, list(state.genes))
    proba = np.asarray(state.predict_proba(x, calibrated=True))
    predict_s = time.perf_counter() - t0
    return PeerResult.from_proba(proba, state.labels, train_s, predict_s)


def _subset(adata: ad.AnnData, mask: np.ndarray, label_key: str) -> ad.AnnData:
    # Only counts and the label travel, so no method can peek at batch or donor.
    obs = pd.DataFrame({"label": adata.obs[label_key].astype(str).to_numpy()[mask]})
    obs.index = adata.obs_names[mask]
    obs["label"] = obs["label"].astype("category")
    return ad.AnnData(X=adata.X[mask].copy(), obs=obs, var=pd.DataFrame(index=adata.var_names))


def _cap(mask: np.ndarray, n_max: int | None, seed: int) -> np.ndarray:
    idx = np.flatnonzero(mask)
    if n_max is None or idx.size <= n_max:
        return mask
    keep = np.random.default_rng(seed).choice(idx, size=n_max, replace=False)
    out = np.zeros_like(mask)
    out[keep] = True
    return out


def run(args: argparse.Namespace, skipped: list[str]) -> list[dict]:
    all_tasks = tasks()
    runs: list[dict] = []
    for task_name in args.tasks:
        task = all_tasks[task_name]
        adata = load_dataset(task.dataset, cache_dir=args.cache_dir)
        for seed in args.seeds:
            for fold in task.folds(adata, seed):
                train_mask = _cap(fold.train, args.max_train_cells, seed)
                train = _subset(adata, train_mask, task.label_key)
                test = _subset(adata, fold.test, task.label_key)
                for method in args.methods:
                    print(
                        f"[{task.name} | {fold.name} | seed {seed} | {method}] "
                        f"train {train.n_obs} cells, test {test.n_obs} cells ...",
                        flush=True,
                    )
                    if method == "ginseng":
                        try:
                            res = run_ginseng(
                                train, test, "label", seed, epochs=args.epochs,
                                n_hvgs=args.hvgs, overrides=args.ginseng_settings,
                            )  # fmt: skip
                        except Exception as err:  # noqa: BLE001 - keep the peers' results
                            traceback.print_exc()
                            skipped.append(
                                f"ginseng on {task.name} {fold.name} seed {seed}: {err!r}"
                            )
                            continue
                    elif method == "celltypist":
                        res = run_celltypist(train, test, "label", seed)
                    else:
                        res = run_logreg(train, test, "label", seed)
                    m = metrics(test.obs["label"].to_numpy(), res.y_pred, res.proba, res.labels)
                    print(
                        f"    accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  "
                        f"ECE {m['ece']:.3f}  train {res.train_s:.1f}s  predict {res.predict_s:.1f}s",
                        flush=True,
                    )
                    runs.append(
                        {
                            "task": task.name,
                            "fold": fold.name,
                            "seed": seed,
                            "method": method,
                            "n_train": train.n_obs,
                            "n_test": test.n_obs,
                            "train_s": res.train_s,
                            "predict_s": res.predict_s,
                            **m,
                        }
                    )
    return runs


def _fmt(values: pd.Series, digits: int = 3) -> str:
    if values.size < 2:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def table(runs: list[dict]) -> str:
    df = pd.DataFrame(runs)
    rows = [
        "| task | method | runs | accuracy | macro-F1 | ECE | train s | predict s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (task, method), g in df.groupby(["task", "method"], sort=False):
        rows.append(
            f"| {task} | {method} | {len(g)} | {_fmt(g['accuracy'])} | {_fmt(g['macro_f1'])} | "
            f"{_fmt(g['ece'])} | {_fmt(g['train_s'], 1)} | {_fmt(g['predict_s'], 1)} |"
        )
    return "\n".join(rows)


def time_to_accuracy(runs: list[dict]) -> str:
    """ginseng's training time and macro-F1 next to CellTypist's, per task (issue 13's view).

    Means over the same seeds/folds; the ratio is ginseng's train seconds over
    CellTypist's (below 1: ginseng trains faster), the difference ginseng's macro-F1
    minus CellTypist's. Empty when the run lacks either method.
    """
    df = pd.DataFrame(runs)
    if not {"ginseng", "celltypist"} <= set(df.get("method", [])):
        return ""
    rows = [
        "Time to accuracy (each method's default training; means over the same splits):",
        "",
        "| task | ginseng train s | ginseng macro-F1 | CellTypist train s | CellTypist macro-F1 "
        "| train time ratio | macro-F1 difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for task, g in df.groupby("task", sort=False):
        ours, peer = g[g["method"] == "ginseng"], g[g["method"] == "celltypist"]
        if ours.empty or peer.empty:
            continue
        t_ours, t_peer = ours["train_s"].mean(), peer["train_s"].mean()
        f_ours, f_peer = ours["macro_f1"].mean(), peer["macro_f1"].mean()
        rows.append(
            f"| {task} | {t_ours:.1f} | {f_ours:.3f} | {t_peer:.1f} | {f_peer:.3f} "
            f"| {t_ours / t_peer:.2f}x | {f_ours - f_peer:+.3f} |"
        )
    return "\n".join(rows)


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def header(args: argparse.Namespace, skipped: list[str]) -> str:
    cmd = " ".join(
        shlex.quote(a) for a in ["python", "benchmarks/bench_accuracy.py", *sys.argv[1:]]
    )
    all_tasks = tasks()
    lines = [
        "# Accuracy benchmark",
        "",
        f"Command: `{cmd}`",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; ginseng {_version('ginseng')}, celltypist {_version('celltypist')}, "
        f"scikit-learn {_version('scikit-learn')}, scanpy {_version('scanpy')}.",
        "",
        "Tasks:",
        *[f"- `{t}`: {all_tasks[t].description}" for t in args.tasks],
        "",
        "Mean ± sd over seeds x folds (sd omitted for a single run). Macro-F1 averages over the "
        "labels present in the test set; test cells whose label is absent from training are "
        "dropped. ECE: 15 equal-width bins on the max probability (CellTypist: its per-class "
        "sigmoid `conf_score`; ginseng: calibrated). Train/predict seconds include each "
        "method's own normalisation.",
    ]
    if args.max_train_cells:
        lines.append(f"Training sets capped at {args.max_train_cells} cells (`--quick`).")
    if "ginseng" in args.methods:
        extra = "".join(f", {k}={v!r}" for k, v in args.ginseng_settings.items())
        hvg = (
            f"`gs.pp.select_hvgs(train, n_top_genes={args.hvgs})` on the training cells, then "
            if args.hvgs
            else ""
        )
        lines.append(
            f"ginseng: {hvg}`gs.tl.train(..., epochs={args.epochs}{extra})` with the "
            "default settings otherwise; CellTypist and logistic regression use all genes."
        )
    lines += [f"- not run: {s}" for s in skipped]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=sorted(tasks()))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--epochs", type=int, default=20, help="ginseng training epochs")
    p.add_argument(
        "--hvgs", type=int, default=3000,
        help="ginseng trains on this many HVGs of the training cells (0: all genes)",
    )  # fmt: skip
    p.add_argument(
        "--ginseng-settings", type=json.loads, default={},
        help='JSON of trainer settings for ginseng, e.g. \'{"hidden_dim": 128}\'',
    )  # fmt: skip
    p.add_argument("--max-train-cells", type=int, default=None, help="subsample training sets")
    p.add_argument("--quick", action="store_true", help="seed 0 only, <=3000 train cells, 3 epochs")
    p.add_argument("--cache-dir", default=None, help="dataset cache (default benchmarks/.cache)")
    p.add_argument("--out", default=str(RESULTS / "accuracy.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.max_train_cells = args.max_train_cells or 3000
        args.epochs = min(args.epochs, 3)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    skipped = []
    if "ginseng" in args.methods and ginseng_train() is None:
        skipped.append("ginseng (`ginseng.tl.train` is not importable yet)")
        args.methods = [m for m in args.methods if m != "ginseng"]
    for s in skipped:
        print(f"note: skipping {s}", flush=True)
    runs = run(args, skipped)
    report = header(args, skipped) + "\n\n" + table(runs) + "\n"
    if view := time_to_accuracy(runs):
        report += "\n" + view + "\n"
    print("\n" + report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_name(out.stem + "_runs.json").write_text(json.dumps(runs, indent=1) + "\n")
    print(f"wrote {out} and {out.with_name(out.stem + '_runs.json')}")


if __name__ == "__main__":
    main()
