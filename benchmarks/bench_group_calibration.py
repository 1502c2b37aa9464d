"""Calibration under shift: temperature fitted on random cells vs whole held-out groups.

Task: Liu 2021 PBMC (``gs.datasets.liu2021_pbmc()``), train on B1+B2 (30 donors),
annotate B3 (13 other donors, another sequencing batch), coarse labels. For each seed,
ginseng is trained with default settings and ``group_key`` in three ways:

- ``cells``: ``group_key="donor"``, ``group_level=False`` (the default): the holdout
  that picks the epoch and fits the temperature is 10% random cells;
- ``donors``: ``group_key="donor"``, ``group_level=True``: whole donors (about 10% of
  the cells) are held out;
- ``batch``: ``group_key="batch"``, ``group_level=True``: a whole batch (B1 or B2, the
  one closest to 10% of the cells) is held out.

Reported: macro-F1 and accuracy on B3, the calibrated ECE on B3 (what a user sees on a
new study) and the ECE the model card reports on its own holdout (what the user is
told to expect), the temperature, and the uncalibrated ECE on B3.

Examples
--------
    python benchmarks/bench_group_calibration.py                 # seeds 0 1 2
    python benchmarks/bench_group_calibration.py --seeds 0 --modes cells donors
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {
    "cells": {"group_key": "donor", "group_level": False},
    "donors": {"group_key": "donor", "group_level": True},
    "batch": {"group_key": "batch", "group_level": True},
}
LABEL = "coarse_label"


def run(args: argparse.Namespace) -> list[dict]:
    import anndata as ad
    import pandas as pd
    from scipy.special import softmax
    from sklearn.metrics import f1_score

    import ginseng as gs
    from ginseng.train.calibration import expected_calibration_error

    gs.settings.progress_bar = False
    gs.settings.verbosity = 1
    adata = gs.datasets.liu2021_pbmc()
    batch = adata.obs["batch"].astype(str).to_numpy()

    def part(mask):
        obs = adata.obs[[LABEL, "donor", "batch"]].iloc[np.flatnonzero(mask)].copy()
        for key in obs:
            obs[key] = obs[key].astype(str).astype("category")
        return ad.AnnData(adata.X[mask].copy(), obs=obs, var=pd.DataFrame(index=adata.var_names))

    train, test = part(batch != "B3"), part(batch == "B3")
    truth = test.obs[LABEL].astype(str).to_numpy()
    present = sorted(set(truth))
    rows = []
    for seed in args.seeds:
        for mode in args.modes:
            t0 = time.perf_counter()
            state = gs.tl.train(train, LABEL, epochs=args.epochs, seed=seed, **MODES[mode])
            seconds = time.perf_counter() - t0
            logits = state.predict_logits(test[:, state.genes].X).astype(np.float64)
            proba = softmax(logits / state.temperature, axis=1)
            raw = softmax(logits, axis=1)
            index = pd.Index(state.labels).get_indexer(truth)  # -1: label unknown to the model
            predicted = state.labels[proba.argmax(axis=1)]
            m = state.metrics
            rows.append(
                {
                    "mode": mode,
                    "seed": seed,
                    "macro_f1": float(
                        f1_score(truth, predicted, labels=present, average="macro", zero_division=0)
                    ),
                    "accuracy": float((predicted == truth).mean()),
                    "ece_new_study": expected_calibration_error(proba, index),
                    "ece_new_study_uncalibrated": expected_calibration_error(raw, index),
                    "ece_model_card": float(m["ece"]),
                    "holdout_split": m.get("holdout_split"),
                    "n_heldout_groups": m.get("n_heldout_groups"),
                    "holdout_cells": int(m["n_cells"]),
                    "temperature": float(state.temperature),
                    "train_s": seconds,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)
    cols = [
        ("macro_f1", "B3 macro-F1"),
        ("accuracy", "B3 accuracy"),
        ("ece_new_study", "B3 ECE (calibrated)"),
        ("ece_model_card", "model-card ECE (own holdout)"),
        ("ece_new_study_uncalibrated", "B3 ECE (T = 1)"),
        ("temperature", "T"),
        ("holdout_cells", "holdout cells"),
    ]
    lines = [
        "| calibrated on | runs | " + " | ".join(c for _, c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for mode in [m for m in MODES if m in set(df["mode"])]:
        d = df[df["mode"] == mode]
        cells = [f"{d[k].mean():.3f} ± {d[k].std(ddof=0):.3f}" for k, _ in cols[:-1]]
        cells.append(f"{d['holdout_cells'].mean():.0f}")
        label = {
            "cells": "random cells (donor key, group_level=False)",
            "donors": "held-out donors (group_level=True)",
            "batch": "held-out batch (group_key='batch', group_level=True)",
        }[mode]
        lines.append(f"| {label} | {len(d)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "group_calibration.md")
    args = parser.parse_args(argv)
    rows = run(args)
    command = "python benchmarks/bench_group_calibration.py " + shlex.join(argv or sys.argv[1:])
    text = "\n\n".join(
        [
            f"`{command.strip()}`",
            "Liu 2021 PBMC, train B1+B2 (30 donors), annotate B3 (13 other donors, another "
            "batch), coarse labels, default settings, 10 epochs; mean ± sd over seeds "
            f"{', '.join(map(str, args.seeds))}. ECE: 15 equal-width bins on the top "
            "probability; a B3 cell whose label the model lacks counts as wrong.",
            table(rows),
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
