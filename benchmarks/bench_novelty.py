"""Novelty benchmark: leave-one-type-out on real data, novelty vs 1 - confidence.

For each dataset split and each label with at least ``--min-query`` query cells, that
label is removed from the training cells, ginseng is trained on the rest and classifies
all query cells. The held-out type's query cells are "novel": the AUROC of
``obs["ginseng_novelty"]`` for telling them from the known query cells is compared with
the AUROC of ``1 - confidence``. Known-cell macro-F1 is reported without a novelty
threshold and with ``novelty_threshold=0.99`` (cells marked "Novel" count as wrong).
For comparison, two alternative scores are computed from the same network's hidden
layer: the distance to the k-th nearest training cell on L2-normalised features
(Sun et al., 2022) and the relative Mahalanobis distance (Ren et al., 2021).

Splits: Liu 2021 PBMC cross-batch (train B1+B2, query B3, coarse labels); Baron human
pancreas (came sample) 50/50 stratified by label.

Examples
--------
    python benchmarks/bench_novelty.py                       # both datasets
    python benchmarks/bench_novelty.py --datasets baron --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import load_dataset, tasks

RESULTS = Path(__file__).resolve().parent / "results"


def split(name: str, seed: int) -> tuple[ad.AnnData, np.ndarray, np.ndarray, str]:
    """The dataset, train and query masks and the label column of split ``name``."""
    if name == "liu2021":
        task = tasks()["liu2021"]
        adata = load_dataset(task.dataset)
        fold = task.folds(adata, seed)[0]
        return adata, fold.train, fold.test, task.label_key
    if name == "baron":
        from sklearn.model_selection import train_test_split

        adata = load_dataset("baron_human")
        labels = adata.obs["label"].astype(str).to_numpy()
        counts = pd.Series(labels).value_counts()
        ok = np.isin(labels, counts.index[counts >= 2])
        idx = np.flatnonzero(ok)
        tr, te = train_test_split(idx, test_size=0.5, random_state=seed, stratify=labels[idx])
        train = np.zeros(adata.n_obs, bool)
        test = np.zeros(adata.n_obs, bool)
        train[tr], test[te] = True, True
        return adata, train, test, "label"
    raise KeyError(name)


def subset(adata: ad.AnnData, mask: np.ndarray, label_key: str) -> ad.AnnData:
    obs = pd.DataFrame({"label": adata.obs[label_key].astype(str).to_numpy()[mask]})
    obs.index = adata.obs_names[mask]
    obs["label"] = obs["label"].astype("category")
    return ad.AnnData(X=adata.X[mask].copy(), obs=obs, var=pd.DataFrame(index=adata.var_names))


def train_model(train: ad.AnnData, seed: int, epochs: int, n_hvgs: int):
    import ginseng as gs

    genes = None
    if n_hvgs and n_hvgs < train.n_vars:
        table = gs.pp.select_hvgs(train, n_top_genes=n_hvgs, inplace=False)
        genes = table["selected"].to_numpy()
    return gs.tl.train(train, "label", genes=genes, epochs=epochs, seed=seed)


def hidden_of(state, adata: ad.AnnData, first: bool = False) -> np.ndarray:
    """Last- (or first-) hidden-layer features of ``adata``'s cells (genes aligned by name)."""
    from ginseng.model.first_layer import first_linear_sparse
    from ginseng.tl.kernel import align_genes

    alignment = align_genes(state.genes, adata.var)
    x = alignment.take(adata.X.tocsr())
    if first:
        z = first_linear_sparse(state.config, state.params, x)
        return np.asarray(state.build_model().blocks[0].activate(z, None))
    hidden, _ = state.predict_hidden_logits(x, missing=alignment.missing)
    return hidden


def preprocessed(state, adata: ad.AnnData) -> np.ndarray:
    """The network's input for ``adata``'s cells (normalised, log1p, standardised genes)."""
    from ginseng.tl.kernel import align_genes

    alignment = align_genes(state.genes, adata.var)
    x = alignment.take(adata.X.tocsr()).toarray()
    return np.asarray(state.build_model().preprocess(x))


def mahalanobis_min(h_ref: np.ndarray, y: np.ndarray, h_q: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean (pooled covariance)."""
    classes = np.unique(y)
    means = np.stack([h_ref[y == c].mean(axis=0) for c in classes])
    centred = h_ref - means[np.searchsorted(classes, y)]
    d = h_ref.shape[1]
    cov = centred.T @ centred / len(h_ref)
    cov += 1e-3 * np.trace(cov) / d * np.eye(d)
    prec = np.linalg.inv(cov)
    diff = h_q[:, None, :] - means[None]
    return np.einsum("nkd,de,nke->nk", diff, prec, diff).min(axis=1)


def alternative_scores(
    state, train: ad.AnnData, query: ad.AnnData, seed: int, k: int = 10, n_ref: int = 20_000
) -> dict[str, np.ndarray]:
    """kNN distance on normalised features and the relative Mahalanobis distance."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    ref = train[rng.permutation(train.n_obs)[:n_ref]]
    h_ref, h_q = hidden_of(state, ref), hidden_of(state, query)

    def unit(h: np.ndarray) -> np.ndarray:
        return h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)

    nn = NearestNeighbors(n_neighbors=k).fit(unit(h_ref))
    knn = nn.kneighbors(unit(h_q))[0][:, -1]
    # Relative Mahalanobis: class-conditional minus a background Gaussian's distance.
    y = ref.obs["label"].astype(str).to_numpy()
    classes = np.unique(y)
    means = np.stack([h_ref[y == c].mean(axis=0) for c in classes])
    centred = h_ref - means[np.searchsorted(classes, y)]
    d = h_ref.shape[1]
    cov = centred.T @ centred / len(h_ref) + 1e-3 * np.eye(d)
    prec = np.linalg.inv(cov)
    diff = h_q[:, None, :] - means[None]
    md = np.einsum("nkd,de,nke->nk", diff, prec, diff).min(axis=1)
    mu0 = h_ref.mean(axis=0)
    cov0 = np.cov(h_ref, rowvar=False) + 1e-3 * np.eye(d)
    d0 = h_q - mu0
    md0 = np.einsum("nd,de,ne->n", d0, np.linalg.inv(cov0), d0)
    f_ref, f_q = hidden_of(state, ref, first=True), hidden_of(state, query, first=True)
    md_ref = mahalanobis_min(h_ref, y, h_ref)
    # Input space: the model's preprocessed genes, 50 principal components of the reference.
    x_ref, x_q = preprocessed(state, ref), preprocessed(state, query)
    centre = x_ref.mean(axis=0)
    _, _, vt = np.linalg.svd(x_ref - centre, full_matrices=False)
    p_ref, p_q = (x_ref - centre) @ vt[:50].T, (x_q - centre) @ vt[:50].T
    pca_q, pca_ref = mahalanobis_min(p_ref, y, p_q), mahalanobis_min(p_ref, y, p_ref)
    hid_q = mahalanobis_min(h_ref, y, h_q)

    def reference_quantile(ref_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.sort(ref_scores), scores, side="right") / len(ref_scores)

    def log_z(ref_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
        # A reference cell can sit on its label's mean (a label of one cell): distance 0.
        ref_log = np.log(np.maximum(ref_scores, 1e-12))
        return (np.log(np.maximum(scores, 1e-12)) - ref_log.mean()) / ref_log.std()

    return {
        # Novel in either space: the larger of the two reference quantiles (ties broken
        # by the summed log-z so that cells beyond every reference cell still rank).
        "combined_max_quantile": np.maximum(
            reference_quantile(md_ref, hid_q), reference_quantile(pca_ref, pca_q)
        )
        + 1e-6 * (log_z(md_ref, hid_q) + log_z(pca_ref, pca_q)),
        "combined_max_log_z": np.maximum(log_z(md_ref, hid_q), log_z(pca_ref, pca_q)),
        "combined_sum_log_z": log_z(md_ref, hid_q) + log_z(pca_ref, pca_q),
        "knn": knn,
        "relative_mahalanobis": md - md0,
        "mahalanobis_first_layer": mahalanobis_min(f_ref, y, f_q),
        "mahalanobis_input_pca": mahalanobis_min(p_ref, y, p_q),
        "mahalanobis_both_layers": mahalanobis_min(
            np.hstack([f_ref, h_ref]), y, np.hstack([f_q, h_q])
        ),
    }


def known_macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    present = sorted(set(truth))
    return float(np.mean(f1_score(truth, predicted, labels=present, average=None, zero_division=0)))


def run(args: argparse.Namespace) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    import ginseng as gs

    gs.settings.progress_bar = False
    gs.settings.verbosity = 1
    runs = []
    for name in args.datasets:
        adata, train_mask, query_mask, label_key = split(name, args.seed)
        labels = adata.obs[label_key].astype(str).to_numpy()
        query_counts = pd.Series(labels[query_mask]).value_counts()
        held_types = sorted(query_counts.index[query_counts >= args.min_query])
        for held in held_types:
            t0 = time.perf_counter()
            train = subset(adata, train_mask & (labels != held), label_key)
            query = subset(adata, query_mask, label_key)
            state = train_model(train, args.seed, args.epochs, args.hvgs)
            train_s = time.perf_counter() - t0
            gs.tl.classify(query, state)
            truth = query.obs["label"].astype(str).to_numpy()
            novel = truth == held
            novelty = query.obs["ginseng_novelty"].to_numpy()
            conf = query.obs["ginseng_confidence"].to_numpy()
            alt = alternative_scores(state, train, query, args.seed)
            predicted = query.obs["ginseng_cell_type"].astype(str).to_numpy()
            flagged = gs.tl.classify(query, state, novelty_threshold=0.99, return_table=True)
            predicted_flag = flagged["ginseng_cell_type"].astype(str).to_numpy()
            row = {
                "dataset": name,
                "held_out": held,
                "n_novel": int(novel.sum()),
                "n_known": int((~novel).sum()),
                "auroc_novelty": float(roc_auc_score(novel, novelty)),
                "auroc_1_minus_conf": float(roc_auc_score(novel, 1 - conf)),
                "auroc_knn": float(roc_auc_score(novel, alt["knn"])),
                "auroc_relative_mahalanobis": float(
                    roc_auc_score(novel, alt["relative_mahalanobis"])
                ),
                "auroc_first_layer": float(roc_auc_score(novel, alt["mahalanobis_first_layer"])),
                "auroc_input_pca": float(roc_auc_score(novel, alt["mahalanobis_input_pca"])),
                "auroc_both_layers": float(roc_auc_score(novel, alt["mahalanobis_both_layers"])),
                **{
                    f"auroc_{key}": float(roc_auc_score(novel, alt[key]))
                    for key in ("combined_max_quantile", "combined_max_log_z", "combined_sum_log_z")
                },
                "macro_f1_known": known_macro_f1(truth[~novel], predicted[~novel]),
                "macro_f1_known_q99": known_macro_f1(truth[~novel], predicted_flag[~novel]),
                "novel_flagged_q99": float((predicted_flag[novel] == "Novel").mean()),
                "known_flagged_q99": float((predicted_flag[~novel] == "Novel").mean()),
                "train_s": train_s,
            }
            print(json.dumps(row), flush=True)
            runs.append(row)
    return runs


def report(args: argparse.Namespace, runs: list[dict]) -> str:
    cmd = " ".join(shlex.quote(a) for a in ["python", "benchmarks/bench_novelty.py", *sys.argv[1:]])
    df = pd.DataFrame(runs)
    cols = [
        "dataset", "held_out", "n_novel", "auroc_novelty", "auroc_1_minus_conf", "auroc_knn",
        "auroc_relative_mahalanobis", "auroc_first_layer", "auroc_both_layers", "auroc_input_pca",
        "macro_f1_known", "macro_f1_known_q99",
        "novel_flagged_q99", "known_flagged_q99",
    ]  # fmt: skip
    table = df[cols].to_markdown(index=False, floatfmt=".3f")
    mean = df[cols[3:]].mean()
    summary = [
        f"- mean AUROC: novelty {mean['auroc_novelty']:.3f}, 1 - confidence "
        f"{mean['auroc_1_minus_conf']:.3f} (difference "
        f"{mean['auroc_novelty'] - mean['auroc_1_minus_conf']:+.3f}); lowest novelty AUROC "
        f"{df['auroc_novelty'].min():.3f} ({df.loc[df['auroc_novelty'].idxmin(), 'held_out']}).",
        f"- alternatives from the same hidden layer: kNN {mean['auroc_knn']:.3f}, relative "
        f"Mahalanobis {mean['auroc_relative_mahalanobis']:.3f}, Mahalanobis on the first "
        f"hidden layer {mean['auroc_first_layer']:.3f}, on both layers "
        f"{mean['auroc_both_layers']:.3f}, on 50 principal components of the model's "
        f"preprocessed input genes {mean['auroc_input_pca']:.3f}.",
        f"- known-cell macro-F1 {mean['macro_f1_known']:.3f} (labels unchanged by the "
        f"novelty score); with novelty_threshold=0.99 {mean['macro_f1_known_q99']:.3f}, "
        f"flagging {mean['novel_flagged_q99']:.1%} of novel and "
        f"{mean['known_flagged_q99']:.1%} of known query cells.",
    ]
    return "\n".join(
        [
            "# Novelty benchmark (leave one type out)",
            "",
            f"Command: `{cmd}`",
            "",
            f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.machine()}, "
            f"{os.cpu_count()} CPUs; seed {args.seed}, {args.epochs} epochs, "
            f"{args.hvgs} HVGs of the training cells.",
            "",
            "Splits: `liu2021` trains on batches B1+B2 and queries B3 (coarse labels); "
            "`baron` is a 50/50 split stratified by label. Every label with >= "
            f"{args.min_query} query cells is held out from training in turn. AUROC: "
            "novel (held-out type) vs known query cells. `macro_f1_known`: known query "
            "cells; `_q99` with `novelty_threshold=0.99` (Novel counts as wrong). "
            "`novel_flagged_q99` / `known_flagged_q99`: share of query cells labelled Novel.",
            "",
            *summary,
            "",
            table,
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["liu2021", "baron"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hvgs", type=int, default=3000)
    p.add_argument("--min-query", type=int, default=100)
    p.add_argument("--out", default=str(RESULTS / "novelty.md"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = run(args)
    text = report(args, runs)
    print(text)
    out = Path(args.out)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
