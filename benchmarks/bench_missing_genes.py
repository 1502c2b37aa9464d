"""Macro-F1 against the fraction of the model's genes the query has (issue 11, item 4).

Task: Liu 2021 PBMC (``gs.datasets.liu2021_pbmc()``), cross-batch: train on B1+B2,
annotate B3, coarse labels (``obs["coarse_label"]``). One ginseng model (default
settings, ``gs.tl.train``) and one CellTypist 1.7.1 model (defaults, as in
``peers.run_celltypist``) are trained on all 1,000 genes; then, for each fraction and
each of the seeds, that fraction of the model's genes is drawn at random and the B3
query keeps only those genes, as a query measured on a smaller panel would. Methods:

- ``ginseng zero-fill``: a missing gene read as zero counts (ginseng <= 0.1;
  ``classify_chunk(..., missing_genes="zero")``);
- ``ginseng mean, total not rescaled`` (measured, not shipped): a missing gene set to
  its training mean (0 after standardisation), each cell normalised to the usual
  target although its total covers the present genes only;
- ``ginseng mean-imputed (default)``: as above, with the normalisation target scaled
  by the expected share of the counts the present genes carry
  (``ginseng.model.first_layer.present_share``), what ``gs.tl.classify`` does now;
- ``ginseng mean + measured share`` (measured, not shipped): the same with the share
  measured on the training counts instead of estimated from the model's statistics;
- ``CellTypist``: its own handling (the query is log1p CP10k-normalised over the genes
  it has; CellTypist drops the model's missing features from the linear model).

CellTypist runs in another Python (``--celltypist-python``, default
``$GINSENG_BENCH_PEERS_PYTHON`` or this interpreter), fed through temporary ``.h5ad``
files.

Examples
--------
    python benchmarks/bench_missing_genes.py                  # fractions 1 .9 .7 .5 .3, seeds 0 1 2
    python benchmarks/bench_missing_genes.py --seeds 0 --fractions 1 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FRACTIONS = (1.0, 0.9, 0.7, 0.5, 0.3)
LABEL = "coarse_label"
METHODS = (
    "ginseng zero-fill",
    "ginseng mean, total not rescaled",
    "ginseng mean-imputed (default)",
    "ginseng mean + measured share",
    "CellTypist",
)


def kept_genes(genes: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``fraction`` of ``genes`` drawn at random with ``seed`` (all of them at 1)."""
    n = len(genes)
    if fraction >= 1.0:
        return np.asarray(genes)
    rng = np.random.default_rng(seed)
    return np.asarray(genes)[np.sort(rng.choice(n, round(fraction * n), replace=False))]


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Macro-F1 over the labels present in ``truth``."""
    from sklearn.metrics import f1_score

    present = sorted(set(truth))
    return float(f1_score(truth, predicted, labels=present, average="macro", zero_division=0))


# --------------------------------------------------------------- CellTypist (other python)
def celltypist_worker(folder: Path) -> None:
    """Train CellTypist on ``train.h5ad`` once; annotate each query of ``queries.json``.

    Settings as ``peers.run_celltypist``: L2 logistic regression (lbfgs, one-vs-rest)
    on log1p CP10k, no SGD, no feature selection, best match, no majority voting.
    """
    import anndata as ad
    import celltypist

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import log_cp10k

    train = ad.read_h5ad(folder / "train.h5ad")
    test = ad.read_h5ad(folder / "test.h5ad")
    queries = json.loads((folder / "queries.json").read_text())
    t0 = time.perf_counter()
    model = celltypist.train(
        log_cp10k(train),
        labels=train.obs[LABEL].astype(str).to_numpy(),
        check_expression=True,
        n_jobs=2,
        use_SGD=False,
        feature_selection=False,
    )
    out: dict = {"train_s": time.perf_counter() - t0}
    for name, genes in queries.items():
        query = log_cp10k(test[:, genes].copy())
        result = celltypist.annotate(query, model=model, majority_voting=False)
        out[name] = result.predicted_labels["predicted_labels"].astype(str).tolist()
    (folder / "celltypist.json").write_text(json.dumps(out))


def run_celltypist_elsewhere(python: str, train, test, queries: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-missing-") as tmp:
        folder = Path(tmp)
        for name, adata in (("train", train), ("test", test)):
            adata.write_h5ad(folder / f"{name}.h5ad")
        (folder / "queries.json").write_text(
            json.dumps({k: [str(g) for g in v] for k, v in queries.items()})
        )
        subprocess.run(
            [python, __file__, "--celltypist-worker", str(folder)],
            check=True,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        return json.loads((folder / "celltypist.json").read_text())


# ------------------------------------------------------------------------- ginseng
def training_share(train, genes: np.ndarray) -> np.ndarray:
    """Mean share of a cell's counts (over ``genes``) that each gene carries in training."""
    import scipy.sparse as sp

    X = sp.csr_matrix(train[:, genes].X, dtype=np.float64)
    total = np.maximum(np.asarray(X.sum(axis=1)).ravel(), 1.0)
    return np.asarray((sp.diags(1.0 / total) @ X).mean(axis=0)).ravel()


def run(args: argparse.Namespace) -> list[dict]:
    import anndata as ad
    import pandas as pd

    import ginseng as gs
    from ginseng.model.first_layer import present_share
    from ginseng.tl import kernel

    gs.settings.progress_bar = False
    gs.settings.verbosity = 1
    adata = gs.datasets.liu2021_pbmc()
    batch = adata.obs["batch"].astype(str).to_numpy()

    def part(mask):
        obs = pd.DataFrame({LABEL: adata.obs[LABEL].astype(str).to_numpy()[mask]})
        obs.index = adata.obs_names[mask]
        return ad.AnnData(adata.X[mask].copy(), obs=obs, var=pd.DataFrame(index=adata.var_names))

    train, test = part(batch != "B3"), part(batch == "B3")
    truth = test.obs[LABEL].to_numpy()
    t0 = time.perf_counter()
    state = gs.tl.train(train, LABEL, epochs=args.epochs, seed=0, mask_as=args.mask_as)
    print(f"ginseng trained in {time.perf_counter() - t0:.1f} s", flush=True)
    share = training_share(train, state.genes)

    queries = {
        f"{f}|{s}": kept_genes(state.genes, f, s)
        for f in args.fractions
        for s in (args.seeds if f < 1 else args.seeds[:1])
    }
    rows = []
    for name, genes in queries.items():
        fraction, seed = name.split("|")
        query = test[:, genes].copy()
        alignment = kernel.align_genes(state.genes, query.var, min_overlap=0.0)
        present = ~alignment.missing
        estimated = present_share(state.config, state.params, alignment.missing)
        target = state.config["target_sum"]
        unscaled = replace(state, config={**state.config, "target_sum": target / estimated})
        measured = replace(
            state,
            config={**state.config, "target_sum": target * share[present].sum() / estimated},
        )
        for method, model, how in (
            ("ginseng zero-fill", state, "zero"),
            ("ginseng mean, total not rescaled", unscaled, "mean"),
            ("ginseng mean-imputed (default)", state, "mean"),
            ("ginseng mean + measured share", measured, "mean"),
        ):
            result = kernel.classify_chunks(
                query.X, alignment, model, batch_size=4096, missing_genes=how
            )
            predicted = state.labels[result.codes]
            rows.append(_row(method, fraction, seed, alignment.fraction, truth, predicted))
        print(f"ginseng {name} done", flush=True)

    if args.celltypist_python:
        ct = run_celltypist_elsewhere(args.celltypist_python, train, test, queries)
        for name in queries:
            fraction, seed = name.split("|")
            rows.append(
                _row("CellTypist", fraction, seed, float(fraction), truth, np.asarray(ct[name]))
            )
        print(f"CellTypist trained in {ct['train_s']:.1f} s", flush=True)
    return rows


def _row(method, fraction, seed, realised, truth, predicted) -> dict:
    return {
        "method": method,
        "fraction": float(fraction),
        "seed": int(seed),
        "genes_present": float(realised),
        "macro_f1": macro_f1(truth, predicted),
        "accuracy": float((truth == predicted).mean()),
    }


def table(rows: list[dict], metric: str) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)
    methods = [m for m in METHODS if m in set(df["method"])]
    lines = [
        "| model genes present | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for fraction in sorted(df["fraction"].unique(), reverse=True):
        cells = []
        for method in methods:
            v = df[(df["fraction"] == fraction) & (df["method"] == method)][metric]
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=0):.3f}")
        lines.append(f"| {fraction:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--mask-as",
        choices=["zero", "unknown"],
        default="zero",
        help="training setting mask_as: what the gene-masking augmentation makes of a gene",
    )
    parser.add_argument(
        "--celltypist-python", default=os.environ.get("GINSENG_BENCH_PEERS_PYTHON", sys.executable)
    )
    parser.add_argument("--celltypist-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "missing_genes.md")
    args = parser.parse_args(argv)
    if args.celltypist_worker is not None:
        celltypist_worker(args.celltypist_worker)
        return
    if args.celltypist_python and not Path(args.celltypist_python).exists():
        print(f"no {args.celltypist_python}: CellTypist skipped", flush=True)
        args.celltypist_python = None
    rows = run(args)
    command = "python benchmarks/bench_missing_genes.py " + shlex.join(argv or sys.argv[1:])
    text = "\n\n".join(
        [
            f"`{command.strip()}`",
            f"Liu 2021 PBMC, train B1+B2, annotate B3, coarse labels (ginseng: mask_as="
            f"{args.mask_as!r}); one model per method "
            "trained on all 1,000 genes; the query keeps a random fraction of the model's "
            f"genes (seeds {', '.join(map(str, args.seeds))}; mean ± sd over seeds).",
            "Macro-F1:",
            table(rows, "macro_f1"),
            "Accuracy:",
            table(rows, "accuracy"),
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
