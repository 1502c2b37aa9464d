"""Label hierarchies: consistency, back-off precision, cells left unlabelled, ECE per level.

ginseng trains on the finest labels with a hierarchy (``gs.tl.train(...,
hierarchy=PARENTS)``, defaults otherwise) and classifies the query with
``unassigned_threshold``. Reported per split and seed:

- ``consistent``: share of cells whose level columns follow one path of the tree
  (goal 100%).
- At ``--threshold`` (0.9): ``precision`` of the calls, counting a call right when it is
  the true label or one of its ancestors (goal >= 0.95); ``unlabelled``: share of cells
  given no label at all (not even the coarsest level passes).
- ``flat_unlabelled``: the share a flat threshold on the fine labels (arg-max
  probability, same model) leaves unlabelled at the lowest threshold whose precision
  reaches the back-off's (`flat_threshold`); ``reduction`` = 1 - unlabelled /
  flat_unlabelled (goal >= 50%). With ``nan`` no flat threshold reaches that precision.
- ``ece_<level>``: ECE (15 bins) of each level's top-down call, no threshold (goal <=
  0.03 within study).

Hierarchies (written down here, from the datasets' own labels):

- Liu 2021 PBMC: ``label`` (17 types) under the dataset's ``coarse_label`` (12) under a
  lineage (``LIU_LINEAGE``).
- Baron human pancreas: ``label`` (14 types) under a compartment (``BARON_COMPARTMENT``).

Splits (as ``bench_prediction_sets.py``): ``liu2021_within`` (80/20 stratified),
``liu2021`` (train B1+B2, query B3, a new batch), ``baron`` (50/50 stratified). None of
ginseng's defaults were chosen on these figures: the threshold is the issue's 0.9.

Examples
--------
    python benchmarks/bench_hierarchy.py --seeds 0 1 2
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

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_novelty import subset
from bench_prediction_sets import split
from peers import expected_calibration_error

RESULTS = Path(__file__).resolve().parent / "results"

LIU_LINEAGE = {
    "B": "Lymphoid",
    "Plasmablast": "Lymphoid",
    "CD4 T": "Lymphoid",
    "CD8 T": "Lymphoid",
    "CD8_Va7.2": "Lymphoid",
    "T_Vd2": "Lymphoid",
    "NK": "Lymphoid",
    "Mono_Classical": "Myeloid",
    "Mono_Nonclassical": "Myeloid",
    "DC": "Myeloid",
    "Erythrocyte": "Erythroid",
    "Platelet": "Megakaryocytic",
}
BARON_COMPARTMENT = {
    **dict.fromkeys(["alpha", "beta", "delta", "gamma", "epsilon"], "endocrine"),
    **dict.fromkeys(["acinar", "ductal"], "exocrine"),
    **dict.fromkeys(
        ["activated_stellate", "quiescent_stellate", "endothelial", "schwann"], "stromal"
    ),
    **dict.fromkeys(["macrophage", "mast", "t_cell"], "immune"),
}


def parents_of(name: str, adata) -> dict[str, str]:
    """The ``{child: parent}`` mapping of split ``name``'s dataset."""
    if name.startswith("liu2021"):
        pairs = adata.obs[["label", "coarse_label"]].astype(str).drop_duplicates()
        mapping = {
            f: c for f, c in zip(pairs["label"], pairs["coarse_label"], strict=True) if f != c
        }
        mapping.update(LIU_LINEAGE)
        return mapping
    return dict(BARON_COMPARTMENT)


def flat_at_precision(proba: np.ndarray, fine_truth_ok: np.ndarray, target: float):
    """Lowest flat threshold whose precision reaches ``target``: (threshold, unlabelled)."""
    confidence = proba.max(axis=1)
    order = np.argsort(-confidence)
    correct = fine_truth_ok[order]
    # Keeping the k most confident cells: precision of the top k for every k.
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    ok = np.flatnonzero(precision >= target)
    if ok.size == 0:
        return float("nan"), float("nan")
    k = int(ok.max()) + 1  # the most cells kept at that precision
    return float(confidence[order][k - 1]), 1.0 - k / len(correct)


def run_one(name: str, seed: int, threshold: float) -> dict:
    import ginseng as gs

    adata, train_mask, query_mask, key = split(name, seed)
    if name.startswith("liu2021"):
        key = "label"  # the finest labels; the split's own key is coarse_label
    parents = parents_of(name, adata)
    train = subset(adata, train_mask, key)
    query = subset(adata, query_mask, key)
    t0 = time.process_time()
    state = gs.tl.train(train, "label", hierarchy=parents, seed=seed)
    train_cpu = time.process_time() - t0
    h = state.hierarchy
    known = np.isin(query.obs["label"].astype(str), state.labels)
    query = query[known].copy()
    truth = query.obs["label"].astype(str).to_numpy()
    row_of = {str(label): i for i, label in enumerate(state.labels)}
    truth_paths = h.paths[[row_of[t] for t in truth]].astype(str)  # cells x levels

    table = gs.tl.classify(query, state, unassigned_threshold=threshold, return_table=True)
    free = gs.tl.classify(query, state, return_table=True)  # no threshold: every level
    levels = list(h.levels)
    values = table[[f"ginseng_cell_type_{lv}" for lv in levels]].astype(str).to_numpy()
    paths = {tuple(map(str, r)) for r in h.paths}
    consistent = np.mean(
        [
            any(p[: len(a)] == a for p in paths)
            for a in (tuple(v for v in row if v != "Unassigned") for row in values)
        ]
    )
    call = table["ginseng_cell_type"].astype(str).to_numpy()
    labelled = call != "Unassigned"
    right = np.array([c in set(p) for c, p in zip(call, truth_paths, strict=True)])
    precision = float(right[labelled].mean()) if labelled.any() else float("nan")
    unlabelled = float(1 - labelled.mean())
    proba = free[[str(x) for x in state.labels]].to_numpy()
    flat_pred = np.asarray(state.labels, dtype=str)[proba.argmax(axis=1)]
    flat_threshold, flat_unlabelled = flat_at_precision(proba, flat_pred == truth, precision)
    flat_at_090 = proba.max(axis=1) >= threshold
    row = {
        "split": name,
        "seed": seed,
        "n_query": len(truth),
        "levels": " > ".join(levels),
        "consistent": float(consistent),
        "precision": precision,
        "unlabelled": unlabelled,
        "backed_off": float(np.mean(labelled & ~np.isin(call, state.labels))),
        "flat_precision_at_threshold": float((flat_pred == truth)[flat_at_090].mean()),
        "flat_unlabelled_at_threshold": float(1 - flat_at_090.mean()),
        "flat_threshold": flat_threshold,
        "flat_unlabelled": flat_unlabelled,
        "reduction": 1 - unlabelled / flat_unlabelled if flat_unlabelled else float("nan"),
        "fine_accuracy_top_down": float(
            (free["ginseng_cell_type"].astype(str).to_numpy() == truth).mean()
        ),
        "fine_accuracy_flat": float((flat_pred == truth).mean()),
        "train_cpu_s": train_cpu,
    }
    for k, level in enumerate(levels):
        node = free[f"ginseng_cell_type_{level}"].astype(str).to_numpy()
        conf = free[f"ginseng_confidence_{level}"].to_numpy()
        row[f"ece_{k}"] = expected_calibration_error(conf, node == truth_paths[:, k])
        row[f"accuracy_{k}"] = float((node == truth_paths[:, k]).mean())
    print(json.dumps(row), flush=True)
    return row


def report(args: argparse.Namespace, rows: list[dict]) -> str:
    cmd = " ".join(
        shlex.quote(a) for a in ["python", "benchmarks/bench_hierarchy.py", *sys.argv[1:]]
    )
    df = pd.DataFrame(rows)
    ece_cols = sorted(c for c in df.columns if c.startswith("ece_"))
    acc_cols = sorted(c for c in df.columns if c.startswith("accuracy_"))
    cols = [
        "split", "seed", "n_query", "levels", "consistent", "precision", "unlabelled",
        "backed_off", "flat_unlabelled_at_threshold", "flat_precision_at_threshold",
        "flat_threshold", "flat_unlabelled", "reduction", *ece_cols, *acc_cols,
        "fine_accuracy_top_down", "fine_accuracy_flat", "train_cpu_s",
    ]  # fmt: skip
    means = df.groupby("split", sort=False)[
        ["consistent", "precision", "unlabelled", "flat_unlabelled", "reduction", *ece_cols]
    ].mean()
    return "\n".join(
        [
            f"# Label hierarchies (threshold {args.threshold})",
            "",
            f"Command: `{cmd}`",
            "",
            f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.machine()}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
            "`gs.tl.train(train, 'label', hierarchy=parents, seed=seed)` with defaults "
            "otherwise. Level k of `ece_k`/`accuracy_k` counts from the coarsest (0) to "
            "the labels; `flat_*_at_threshold`: the same model's fine arg-max with a flat "
            "threshold at the same value. See the module docstring for every column.",
            "",
            "Mean over seeds:",
            "",
            means.to_markdown(floatfmt=".3f"),
            "",
            "Every run:",
            "",
            df[cols].to_markdown(index=False, floatfmt=".3f"),
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--splits", nargs="+", default=["liu2021_within", "liu2021", "baron"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--out", default=str(RESULTS / "hierarchy.md"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import ginseng as gs

    gs.settings.progress_bar = False
    gs.settings.verbosity = 1
    rows = [run_one(name, seed, args.threshold) for name in args.splits for seed in args.seeds]
    text = report(args, rows)
    print(text)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
