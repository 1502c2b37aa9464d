"""Transfer benchmark: reference and query from different studies, technologies or species.

Every task trains on one dataset and annotates another (see ``TASKS``): PBMC between a
CITE-seq study (Liu 2021) and 10x 3' v1 (Zheng 2017's pbmc68k_reduced), which share only
306 gene names, and pancreas between Baron mouse and Baron human through one-to-one
orthologs. Labels are mapped on both sides to a shared coarse set (``PBMC_LIU``,
``PBMC_68K``, ``PANC_*`` below); a query cell whose mapped label is absent from the
reference is dropped (the counts are in the results); reference labels without a
counterpart stay in the reference, so predicting them is an error.

Methods, each run in its own process (clean memory and timings), one at a time:

- ``ginseng``: ``gs.tl.train(ref, "label", seed=seed)`` with no tuning, all reference
  genes, then ``gs.tl.classify(query, state, return_table=True)`` with defaults. When the
  default refuses the query for low gene overlap (``min_gene_overlap=0.5``), the failure
  is recorded and the same model is scored again with ``min_gene_overlap=0`` as
  ``ginseng_overlap0`` (what a user does next).
- ``celltypist``: CellTypist 1.7.1 ``train`` defaults (on log1p CP10k) then ``annotate``;
  CellTypist matches genes by name itself.
- ``celltypist_fs``: the same with ``feature_selection=True``.
- ``logreg``: scikit-learn multinomial LogisticRegression on log1p CP10k of the reference
  genes present in the query.
- ``scanvi``: scANVI (scvi-tools 1.4.2), trained *jointly with the unlabeled query*
  (transductive: it sees the query's counts, unlike every method above). Reference and
  query are concatenated on the genes ``logreg`` uses (the reference genes the query
  has, raw counts); ``scvi.model.SCVI.setup_anndata(adata, batch_key="dataset",
  labels_key="label")`` with ``dataset`` = reference / query and the query's labels set
  to ``"Unknown"``; ``SCVI(adata).train()`` with defaults (n_latent 10, max_epochs
  ``min(round(20000 / n_cells * 400), 400)``), then
  ``SCANVI.from_scvi_model(vae, unlabeled_category="Unknown", labels_key="label")``
  ``.train()`` with defaults; the query is scored on ``predict(soft=True)`` (argmax for
  the label, the max for ECE). ``scvi.settings.seed = seed``. Train time covers setup,
  SCVI and SCANVI training; CPU time adds all threads. It runs in its own Python, given by
  ``--scvi-python`` (skipped, with a message, when that is not given), so scvi-tools
  never enters ginseng's environment::

      python3.11 -m venv ~/venvs/scvi
      ~/venvs/scvi/bin/pip install "scvi-tools==1.4.2"   # brings torch, anndata
      python benchmarks/bench_transfer.py --methods scanvi --scvi-python ~/venvs/scvi/bin/python --append

  The bench's child (in the bench environment) starts ``<scvi-python>
  bench_transfer.py --scvi-worker DIR`` on the cached task files, reads back the query's
  probabilities and scores them with ``peers.metrics`` as every other method. A ``scanvi_e<N>`` method is the same with SCVI capped at N epochs
  (``--scvi-max-epochs N``; SCANVI keeps its default), for runs that defaults make too
  long: on the shared 2-core machine, niced, the defaults took 423-898 CPU-seconds on
  ``pbmc_liu1k_to_68k`` but ran at 58-74 s per SCVI epoch on the pancreas tasks (about
  7 h for 400), whose recorded runs are therefore ``scanvi_e20``.

Results: ``benchmarks/results/transfer.md`` (table headed by the exact command) and
``transfer_runs.json`` (every run, failures included), rewritten after every run.

Examples
--------
    python benchmarks/bench_transfer.py                               # 6 tasks x seeds 0 1 2
    python benchmarks/bench_transfer.py --tasks panc_mouse_to_human --seeds 0
    python benchmarks/bench_transfer.py --methods ginseng logreg
    nice -n 10 python benchmarks/bench_transfer.py --tasks pbmc_liu1k_to_68k --seeds 0 \
        --methods scanvi --scvi-python ~/venvs/scvi/bin/python --append
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CACHE, RESULTS

HERE = Path(__file__).resolve().parent
METHODS = ("ginseng", "ginseng_ref_only", "celltypist", "celltypist_fs", "logreg", "scanvi")
UNKNOWN = "Unknown"  # scANVI's unlabeled category (the query's cells)
MAX_CELLS = 20_000  # cap on reference and query sizes (fixed-seed subsample)
SUBSAMPLE_SEED = 0  # the caps do not depend on the run seed: every seed sees one split

# --- harmonised labels --------------------------------------------------------------
# Shared PBMC set: B, CD4 T, CD8 T, NK, Monocyte, DC. Labels not named here keep their
# own name and have no counterpart on the other side.
PBMC_LIU = {
    "B_Mem": "B",
    "B_Naive": "B",
    "T_gd": "B",  # the B3 "T_gd" cells express MS4A1/CD79A (shared/DATASETS.md)
    "CD4_Mem": "CD4 T",
    "CD4_Naive": "CD4 T",
    "CD8_Mem": "CD8 T",
    "CD8_Naive": "CD8 T",
    "NK": "NK",
    "Mono_Classical": "Monocyte",
    "Mono_Nonclassical": "Monocyte",
    "DC": "DC",
    "pDC": "DC",
    "CD8_Va7.2": "MAIT",  # no counterpart in pbmc68k
    "T_Vd2": "gd T",  # no counterpart in pbmc68k
    # Plasmablast, Platelet, Erythrocyte: no counterpart in pbmc68k
}
PBMC_68K = {
    "CD19+ B": "B",
    "CD4+/CD25 T Reg": "CD4 T",
    "CD4+/CD45RO+ Memory": "CD4 T",
    "CD4+/CD45RA+/CD25- Naive T": "CD4 T",
    "CD8+ Cytotoxic T": "CD8 T",
    "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T",
    "CD56+ NK": "NK",
    "CD14+ Monocyte": "Monocyte",
    "Dendritic": "DC",
    # CD34+: no counterpart in Liu 2021
}
# Baron pancreas (cell_type1). Coarse: stellate states merged, T cells named alike.
PANC_HUMAN_COARSE = {
    "activated_stellate": "stellate",
    "quiescent_stellate": "stellate",
    "t_cell": "T cell",
    # acinar, mast, epsilon: no counterpart in Baron mouse
}
PANC_MOUSE_COARSE = {
    "activated_stellate": "stellate",
    "quiescent_stellate": "stellate",
    "T_cell": "T cell",
    # B_cell, immune_other: no counterpart in Baron human
}
# Fine: the two stellate states kept apart.
PANC_HUMAN_FINE = {"t_cell": "T cell"}
PANC_MOUSE_FINE = {"T_cell": "T cell"}


@dataclass(frozen=True)
class Side:
    """One side of a task: a dataset, its label mapping and which cells to take."""

    dataset: str
    labels: dict[str, str]
    species: str = "human"
    batches: tuple[str, ...] | None = None  # liu2021 batches to keep (None: all)
    max_cells: int = MAX_CELLS


@dataclass(frozen=True)
class TransferTask:
    """Train on ``ref``, annotate ``query``."""

    name: str
    ref: Side
    query: Side
    description: str
    regimes: tuple[str, ...] = field(default_factory=tuple)


TASKS = {
    t.name: t
    for t in [
        TransferTask(
            "pbmc_liu_to_68k",
            Side("liu2021_pbmc", PBMC_LIU),
            Side("pbmc68k_reduced", PBMC_68K),
            "Liu 2021 CITE-seq PBMC (all 3 batches, capped at 20k cells) -> Zheng 2017 "
            "10x 3' v1 PBMC (pbmc68k_reduced), coarse labels",
            ("cross-technology", "<=500 shared genes", "harmonised labels"),
        ),
        TransferTask(
            "pbmc_68k_to_liu",
            Side("pbmc68k_reduced", PBMC_68K),
            Side("liu2021_pbmc", PBMC_LIU),
            "pbmc68k_reduced (700 cells, noisy bulk labels) -> Liu 2021 CITE-seq PBMC "
            "(capped at 20k cells), coarse labels",
            ("small reference", "cross-technology", "<=500 shared genes", "harmonised labels"),
        ),
        TransferTask(
            "pbmc_liu1k_to_68k",
            Side("liu2021_pbmc", PBMC_LIU, max_cells=1000),
            Side("pbmc68k_reduced", PBMC_68K),
            "Liu 2021 CITE-seq PBMC subsampled to 1,000 cells -> pbmc68k_reduced, coarse labels",
            ("small reference", "cross-technology", "<=500 shared genes", "harmonised labels"),
        ),
        TransferTask(
            "panc_mouse_to_human",
            Side("baron_mouse", PANC_MOUSE_COARSE, species="mouse"),
            Side("baron_human", PANC_HUMAN_COARSE),
            "Baron 2016 mouse pancreas (1,886 cells; genes renamed to their human 1:1 "
            "orthologs) -> Baron 2016 human pancreas, coarse labels",
            ("cross-species", "small reference", "harmonised labels"),
        ),
        TransferTask(
            "panc_human_to_mouse",
            Side("baron_human", PANC_HUMAN_COARSE),
            Side("baron_mouse", PANC_MOUSE_COARSE, species="mouse"),
            "Baron 2016 human pancreas (2,142 cells, all 20,125 genes) -> Baron 2016 mouse "
            "pancreas (genes renamed to their human 1:1 orthologs), coarse labels",
            ("cross-species", "harmonised labels"),
        ),
        TransferTask(
            "panc_mouse_to_human_fine",
            Side("baron_mouse", PANC_MOUSE_FINE, species="mouse"),
            Side("baron_human", PANC_HUMAN_FINE),
            "Baron mouse -> Baron human through 1:1 orthologs, fine labels (activated and "
            "quiescent stellate kept apart)",
            ("cross-species", "small reference", "fine labels"),
        ),
    ]
}


# --- building the task data ---------------------------------------------------------


def _side(side: Side, cache_dir: str | None) -> ad.AnnData:
    from datasets import load_dataset, mouse_to_human

    adata = load_dataset(side.dataset, cache_dir=cache_dir)
    if side.species == "mouse":
        adata = mouse_to_human(adata, cache_dir=cache_dir)
    if side.batches is not None:
        adata = adata[adata.obs["batch"].isin(side.batches).to_numpy()].copy()
    original = adata.obs["label"].astype(str)
    # Only counts and the mapped label travel, so no method can peek at batch or donor.
    out = ad.AnnData(
        X=adata.X.copy(),
        obs=pd.DataFrame(
            {
                "label": pd.Categorical(original.map(lambda s: side.labels.get(s, s))),
                "original_label": original.to_numpy(),
            },
            index=adata.obs_names.copy(),
        ),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    return out


def _cap(adata: ad.AnnData, n_max: int) -> ad.AnnData:
    if adata.n_obs <= n_max:
        return adata
    keep = np.sort(np.random.default_rng(SUBSAMPLE_SEED).choice(adata.n_obs, n_max, replace=False))
    return adata[keep].copy()


def build_task(task: TransferTask, cache_dir: str | None) -> tuple[ad.AnnData, ad.AnnData, dict]:
    """Reference and query AnnData (raw counts, ``obs["label"]``) and a description."""
    ref = _cap(_side(task.ref, cache_dir), task.ref.max_cells)
    query = _side(task.query, cache_dir)
    ref_labels = set(ref.obs["label"].astype(str))
    qlabel = query.obs["label"].astype(str)
    unmatched = ~qlabel.isin(ref_labels).to_numpy()
    dropped = query.obs.loc[unmatched, "original_label"].value_counts()
    query = _cap(query[~unmatched].copy(), task.query.max_cells)
    query.obs["label"] = query.obs["label"].cat.remove_unused_categories()
    shared = ref.var_names.isin(query.var_names)
    info = {
        "task": task.name,
        "description": task.description,
        "regimes": list(task.regimes),
        "reference": task.ref.dataset
        + (" (mouse->human orthologs)" if task.ref.species == "mouse" else ""),
        "query": task.query.dataset
        + (" (mouse->human orthologs)" if task.query.species == "mouse" else ""),
        "n_ref": int(ref.n_obs),
        "n_query": int(query.n_obs),
        "ref_genes": int(ref.n_vars),
        "query_genes": int(query.n_vars),
        "shared_genes": int(shared.sum()),
        "ref_labels": {str(k): int(v) for k, v in ref.obs["label"].value_counts().items()},
        "query_labels": {str(k): int(v) for k, v in query.obs["label"].value_counts().items()},
        "query_dropped": {str(k): int(v) for k, v in dropped.items() if v},
        "ref_label_map": dict(task.ref.labels),
        "query_label_map": dict(task.query.labels),
    }
    return ref, query, info


def prepare(task: TransferTask, cache_dir: str | None) -> tuple[Path, Path, dict]:
    """Write the task's reference and query to the cache (once) for the child processes."""
    base = Path(cache_dir or os.environ.get("GINSENG_BENCH_CACHE", CACHE)) / "transfer"
    base.mkdir(parents=True, exist_ok=True)
    ref_path, query_path = base / f"{task.name}_ref.h5ad", base / f"{task.name}_query.h5ad"
    info_path = base / f"{task.name}_info.json"
    if not (ref_path.exists() and query_path.exists() and info_path.exists()):
        ref, query, info = build_task(task, cache_dir)
        ref.write_h5ad(ref_path)
        query.write_h5ad(query_path)
        info_path.write_text(json.dumps(info, indent=1))
    return ref_path, query_path, json.loads(info_path.read_text())


# --- one method in a child process --------------------------------------------------


def _cpu_s() -> float:
    """CPU seconds of this process and its children (live ones and reaped ones)."""
    import psutil

    proc = psutil.Process()
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return total


def _score(query: ad.AnnData, method: str, res, cpu_s: float) -> dict:
    from peers import metrics

    m = metrics(query.obs["label"].astype(str).to_numpy(), res.y_pred, res.proba, res.labels)
    return {
        "method": method,
        "status": "ok",
        "train_s": res.train_s,
        "train_cpu_s": cpu_s,
        "predict_s": res.predict_s,
        **m,
    }


def _run_ginseng(ref: ad.AnnData, query: ad.AnnData, seed: int, *, query_aware: bool) -> list[dict]:
    """Train with defaults, classify with defaults (and, if refused, min_gene_overlap=0).

    ``query_aware``: train with ``query_genes=query.var_names`` (what the docs tell a
    user who has the query at hand), method ``ginseng``; else ``ginseng_ref_only``.
    """
    from peers import PeerResult

    import ginseng as gs

    gs.settings.progress_bar = False
    gs.settings.verbosity = 1
    name = "ginseng" if query_aware else "ginseng_ref_only"
    extra = {"query_genes": query.var_names} if query_aware else {}
    t0, c0 = time.perf_counter(), _cpu_s()
    state = gs.tl.train(ref, "label", seed=seed, **extra)
    train_s, cpu_s = time.perf_counter() - t0, _cpu_s() - c0
    labels = [str(x) for x in state.labels]
    out = []
    for method, options in ((name, {}), (f"{name}_overlap0", {"min_gene_overlap": 0.0})):
        t0 = time.perf_counter()
        try:
            table = gs.tl.classify(query, state, return_table=True, **options)
        except Exception as err:  # noqa: BLE001 - recorded as the method's failure
            out.append(
                {"method": method, "status": "failed", "error": f"{type(err).__name__}: {err}",
                 "train_s": train_s, "train_cpu_s": cpu_s}
            )  # fmt: skip
            continue
        predict_s = time.perf_counter() - t0
        proba = table[labels].to_numpy(dtype=np.float64)
        res = PeerResult.from_proba(proba, labels, train_s, predict_s)
        row = _score(query, method, res, cpu_s)
        row["n_genes"] = int(state.n_genes)
        # The trainer settings the defaults gave, so that a run says what it trained with.
        row["settings"] = json.loads(state.settings.to_json()) if state.settings else None
        out.append(row)
        if method == name:
            break  # the default worked: no need for the fallback
    return out


def scvi_worker(folder: Path) -> None:
    """scANVI in the scvi-tools environment: read ``job.json``, write ``scanvi.npz``/``.json``.

    Runs under ``--scvi-python`` (scvi-tools 1.4.2, torch); needs only anndata, numpy and
    pandas from this file, which scvi-tools brings.
    """
    import resource

    import scvi
    import torch

    job = json.loads((folder / "job.json").read_text())
    ref, query = ad.read_h5ad(job["ref"]), ad.read_h5ad(job["query"])
    shared = ref.var_names[ref.var_names.isin(query.var_names)]  # as peers.run_logreg
    if shared.size == 0:
        raise ValueError("the reference and query share no gene names")
    parts = {}
    for name, side in (("reference", ref), ("query", query)):
        part = ad.AnnData(X=side[:, shared].X.copy(), var=pd.DataFrame(index=shared.copy()))
        part.obs_names = [f"{name}:{x}" for x in side.obs_names]
        labels = side.obs["label"].astype(str).to_numpy() if name == "reference" else UNKNOWN
        part.obs["label"] = labels
        part.obs["dataset"] = name
        parts[name] = part
    if UNKNOWN in set(parts["reference"].obs["label"]):
        raise ValueError(f"a reference label is {UNKNOWN!r}, scANVI's unlabeled category")
    adata = ad.concat(list(parts.values()))  # reference first, then query
    adata.obs["label"] = adata.obs["label"].astype("category")
    adata.obs["dataset"] = adata.obs["dataset"].astype("category")
    is_query = (adata.obs["dataset"] == "query").to_numpy()
    epochs = job.get("max_epochs")  # SCVI's epochs; None: scvi-tools' default

    def cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    scvi.settings.seed = job["seed"]
    t0, c0 = time.perf_counter(), cpu()
    scvi.model.SCVI.setup_anndata(adata, batch_key="dataset", labels_key="label")
    vae = scvi.model.SCVI(adata)
    vae.train(max_epochs=epochs)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNKNOWN, labels_key="label")
    lvae.train()  # default: min(10, max(2, round(SCVI's heuristic / 3))) after SCVI
    train_s, cpu_s = time.perf_counter() - t0, cpu() - c0
    t0 = time.perf_counter()
    proba = lvae.predict(indices=np.flatnonzero(is_query), soft=True)
    predict_s = time.perf_counter() - t0
    if UNKNOWN in set(proba.columns):
        raise RuntimeError(f"scANVI returned a probability for {UNKNOWN!r}: {list(proba.columns)}")
    np.savez(folder / "scanvi.npz", proba=proba.to_numpy(dtype=np.float64))
    (folder / "scanvi.json").write_text(
        json.dumps(
            {
                "labels": [str(c) for c in proba.columns],
                "train_s": train_s,
                "train_cpu_s": cpu_s,
                "predict_s": predict_s,
                "n_genes": int(shared.size),
                "epochs_scvi": len(vae.history["elbo_train"]),
                "epochs_scanvi": len(lvae.history["elbo_train"]),
                "max_epochs": epochs,
                "scvi_tools": scvi.__version__,
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "accelerator": "cuda" if torch.cuda.is_available() else "cpu",
            }
        )
    )


def _run_scanvi(
    ref_path: Path, query_path: Path, query: ad.AnnData, method: str, seed: int,
    python: str | None, max_epochs: int | None,
) -> list[dict]:  # fmt: skip
    """Run :func:`scvi_worker` under ``python`` and score its probabilities here."""
    import tempfile

    from peers import PeerResult

    if not python:
        raise ValueError("scanvi needs --scvi-python (a Python with scvi-tools 1.4.2)")
    with tempfile.TemporaryDirectory(prefix="bench-scanvi-") as tmp:
        folder = Path(tmp)
        job = {"ref": str(ref_path), "query": str(query_path), "seed": seed,
               "max_epochs": max_epochs}  # fmt: skip
        (folder / "job.json").write_text(json.dumps(job))
        log = folder / "worker.log"  # scvi-tools' progress bar: `tail` it to follow a run
        with log.open("w") as err:
            proc = subprocess.run(
                [python, __file__, "--scvi-worker", str(folder)],
                stdout=err, stderr=subprocess.STDOUT, check=False,
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            )  # fmt: skip
        if proc.returncode != 0 or not (folder / "scanvi.json").exists():
            tail = log.read_text(errors="replace").strip()[-1500:]
            raise RuntimeError(f"scvi worker exit {proc.returncode}: {tail}")
        info = json.loads((folder / "scanvi.json").read_text())
        proba = np.load(folder / "scanvi.npz")["proba"]
    res = PeerResult.from_proba(proba, info["labels"], info["train_s"], info["predict_s"])
    row = _score(query, method, res, info["train_cpu_s"])
    row.update({k: v for k, v in info.items() if k not in ("labels", "train_s", "predict_s",
                                                           "train_cpu_s")})  # fmt: skip
    return [row]


def child(
    task_name: str, method: str, seed: int, cache_dir: str | None,
    scvi_python: str | None = None, scvi_max_epochs: int | None = None,
) -> list[dict]:  # fmt: skip
    """Run ``method`` on ``task_name`` for ``seed``; return its result rows."""
    import warnings

    from peers import _warm_joblib, run_celltypist, run_logreg

    ref_path, query_path, _ = prepare(TASKS[task_name], cache_dir)
    ref, query = ad.read_h5ad(ref_path), ad.read_h5ad(query_path)
    if method in ("ginseng", "ginseng_ref_only"):
        return _run_ginseng(ref, query, seed, query_aware=method == "ginseng")
    if method == "scanvi":
        name = f"scanvi_e{scvi_max_epochs}" if scvi_max_epochs else "scanvi"
        return _run_scanvi(ref_path, query_path, query, name, seed, scvi_python, scvi_max_epochs)
    if method.startswith("celltypist"):
        _warm_joblib(2)  # loky workers start outside the timed fit (as in bench_accuracy)
    c0 = _cpu_s()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if method == "celltypist":
            res = run_celltypist(ref, query, "label", seed)
        elif method == "celltypist_fs":
            res = run_celltypist(ref, query, "label", seed, feature_selection=True)
        elif method == "logreg":
            res = run_logreg(ref, query, "label", seed, max_iter=5000)
        else:
            raise ValueError(f"unknown method {method!r}")
    cpu_s = _cpu_s() - c0  # includes the predict step; train dominates
    row = _score(query, method, res, cpu_s)
    row["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught})
    return [row]


# --- the parent ---------------------------------------------------------------------


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def _fmt(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna()
    if values.size == 0:
        return "-"
    if values.size < 2:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


# ginseng rows: query-aware defaults, reference-only defaults, query-aware with the first
# gene ranking (pancreas runs kept), and the defaults before standardize=False /
# n_top_genes=3000 / query_genes (runs recorded before that change); ginseng_steps1000:
# "ginseng" with min_steps=1000, the default before 500 (runs kept).
GINSENG_ROWS = (
    "ginseng",
    "ginseng_steps1000",
    "ginseng_ref_only",
    "ginseng_whole_ref_hvg",
    "ginseng_prev",
)


def _as_user_gets_it(ok: pd.DataFrame) -> pd.Series:
    """Each ginseng row as a user gets it: the default where classify ran, else the
    ``min_gene_overlap=0`` fallback (named ``<row>_overlap0``) under the row's name."""
    method = ok["method"].copy()
    for base in GINSENG_ROWS:
        has_default = set(ok.loc[ok["method"] == base, "task"])
        fallback = (ok["method"] == f"{base}_overlap0") & ~ok["task"].isin(has_default)
        method[fallback] = base
    return method


def tables(runs: list[dict], infos: dict[str, dict]) -> str:
    task_rows = [
        "| task | reference -> query | ref cells | query cells (dropped) | shared genes | labels (ref / query) | regimes |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, info in infos.items():
        dropped = sum(info["query_dropped"].values())
        task_rows.append(
            f"| {name} | {info['reference']} -> {info['query']} | {info['n_ref']} | "
            f"{info['n_query']} ({dropped}) | {info['shared_genes']} of {info['ref_genes']} | "
            f"{len(info['ref_labels'])} / {len(info['query_labels'])} | {', '.join(info['regimes'])} |"
        )
    rows = [
        "| task | method | ok / runs | macro-F1 | accuracy | ECE | train s (wall) | train s (CPU) | predict s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    df = pd.DataFrame(runs)
    for (task, method), g in df.groupby(["task", "method"], sort=False):
        ok = g[g["status"] == "ok"]
        rows.append(
            f"| {task} | {method} | {len(ok)} / {len(g)} | {_fmt(ok.get('macro_f1', pd.Series()))} | "
            f"{_fmt(ok.get('accuracy', pd.Series()))} | {_fmt(ok.get('ece', pd.Series()))} | "
            f"{_fmt(g['train_s'], 1) if 'train_s' in g else '-'} | "
            f"{_fmt(g['train_cpu_s'], 1) if 'train_cpu_s' in g else '-'} | "
            f"{_fmt(ok.get('predict_s', pd.Series()), 1)} |"
        )
    ok = df[df["status"] == "ok"].copy() if "macro_f1" in df else df.iloc[:0]
    ok["method"] = _as_user_gets_it(ok)
    ok = ok[~ok["method"].str.endswith("_overlap0")]
    bases = [m for m in GINSENG_ROWS if m in set(ok["method"])]
    gap = [
        "| task | best peer | its macro-F1 | " + " | ".join(f"{b} (- best)" for b in bases) + " |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in bases) + " |",
    ]
    mean = ok.groupby(["task", "method"])["macro_f1"].mean()
    for task in dict.fromkeys(ok["task"]):
        m = mean.loc[task]
        # the three peers (CellTypist x2, logreg); scANVI has its own table below
        peers = m.drop([x for x in m.index if x.startswith(("ginseng", "scanvi"))])
        if peers.empty:
            continue
        best = peers.idxmax()
        cells = [f"{m[b]:.3f} ({m[b] - peers[best]:+.3f})" if b in m else "-" for b in bases]
        gap.append(f"| {task} | {best} | {peers[best]:.3f} | " + " | ".join(cells) + " |")
    scanvi = [
        "| task | scANVI method | seeds | scANVI macro-F1 | ginseng macro-F1 (- scANVI) | "
        "scANVI ECE | ginseng ECE | train s scANVI / ginseng (wall) | "
        "train CPU s scANVI / ginseng | CPU ratio |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cols = ["macro_f1", "ece", "train_s", "train_cpu_s"]
    for (task, method), r in ok.groupby(["task", "method"], sort=False):
        if not method.startswith("scanvi"):
            continue
        # ginseng on the same seeds, so the two see the same splits and similar load
        g = ok[(ok["task"] == task) & (ok["method"] == "ginseng") & ok["seed"].isin(r["seed"])]
        if g.empty:
            continue
        seeds = ", ".join(str(x) for x in sorted(set(r["seed"])))
        r, g = r[cols].mean(), g[cols].mean()
        scanvi.append(
            f"| {task} | {method} | {seeds} | {r['macro_f1']:.3f} | "
            f"{g['macro_f1']:.3f} ({g['macro_f1'] - r['macro_f1']:+.3f}) | {r['ece']:.3f} | "
            f"{g['ece']:.3f} | {r['train_s']:.0f} / {g['train_s']:.1f} | "
            f"{r['train_cpu_s']:.0f} / {g['train_cpu_s']:.1f} | "
            f"{r['train_cpu_s'] / g['train_cpu_s']:.0f}x |"
        )
    summary = [
        "| method | tasks | mean macro-F1 | mean ECE | mean train s (wall) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    per_task = ok.groupby(["method", "task"])[["macro_f1", "ece", "train_s"]].mean()
    for method, g in per_task.groupby(level=0, sort=False):
        summary.append(
            f"| {method} | {len(g)} | {g['macro_f1'].mean():.3f} | {g['ece'].mean():.3f} | "
            f"{g['train_s'].mean():.1f} |"
        )
    return "\n".join(
        [
            "## Tasks",
            "",
            *task_rows,
            "",
            "## Results",
            "",
            *rows,
            "",
            "## ginseng against the best peer (mean macro-F1; a refused default scored at "
            "min_gene_overlap=0)",
            "",
            *gap,
            "",
            "## ginseng against scANVI (scANVI trained with the unlabeled query; ginseng: "
            "its runs on the seeds scANVI ran; scANVI niced, so compare CPU seconds)",
            "",
            *(scanvi if len(scanvi) > 2 else ["no scANVI runs"]),
            "",
            "## Mean over tasks (each task's mean over seeds first)",
            "",
            *summary,
        ]
    )


def label_maps(infos: dict[str, dict]) -> str:
    lines = ["## Label harmonisation", ""]
    for name, info in infos.items():
        lines.append(
            f"- `{name}`: reference labels {info['ref_labels']}; query labels {info['query_labels']}; "
            f"query cells dropped (label without a counterpart in the reference): "
            f"{info['query_dropped'] or 'none'}."
        )
    maps = {"PBMC_LIU (liu2021 mergedcelltype)": PBMC_LIU, "PBMC_68K (pbmc68k bulk_labels)": PBMC_68K,
            "PANC_HUMAN_COARSE": PANC_HUMAN_COARSE, "PANC_MOUSE_COARSE": PANC_MOUSE_COARSE,
            "PANC_HUMAN_FINE": PANC_HUMAN_FINE, "PANC_MOUSE_FINE": PANC_MOUSE_FINE}  # fmt: skip
    lines += ["", "Mappings (labels not listed keep their own name):", ""]
    lines += [f"- {k}: " + ", ".join(f"{a} -> {b}" for a, b in v.items()) for k, v in maps.items()]
    return "\n".join(lines)


def _command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in ["python", "benchmarks/bench_transfer.py", *argv[1:]])


def header(args: argparse.Namespace, loads: list[dict], commands: list[str]) -> str:
    runs_on = "; ".join(
        f"`{c}` started {ld['start_utc']}, load average 1/5/15 min at start {ld['start']}, "
        f"at its last run {ld.get('last')}"
        for c, ld in zip(commands, loads, strict=True)
    )
    return "\n".join(
        [
            "# Transfer benchmark (reference and query from different studies)",
            "",
            "Command"
            + ("s (results appended with `--append`)" if len(commands) > 1 else "")
            + ": "
            + "; ".join(f"`{c}`" for c in commands),
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs. "
            f"Runs: {runs_on}. ginseng {_version('ginseng')}, celltypist {_version('celltypist')}, "
            f"scikit-learn {_version('scikit-learn')}, scanpy {_version('scanpy')}, "
            f"jax {_version('jax')}. Timings on a loaded machine are indicative; compare within a row group.",
            "",
            "Each method runs in its own process, one at a time, on the same raw-count reference "
            "and query. Mean ± sd over seeds (seed changes ginseng's shuffle/split/init and "
            "LogisticRegression's random_state, which its lbfgs solver does not use: CellTypist's "
            "default and LogisticRegression are deterministic, so where time was short they ran "
            "for fewer seeds than ginseng; CellTypist with feature selection is not; `ok / runs` "
            "counts the runs). "
            "References and queries above 20,000 cells are subsampled once with seed 0. "
            "Macro-F1 averages over the labels present in the query; ECE: 15 equal-width bins on "
            "the max probability (`peers.expected_calibration_error`, as bench_accuracy.py; "
            "CellTypist: its per-class sigmoid `conf_score`; ginseng: calibrated). Train CPU "
            "seconds add the method's worker processes (CellTypist: n_jobs=2 loky workers; "
            "its CPU figure includes annotate).",
            "",
            "ginseng: `gs.tl.train(ref, 'label', query_genes=query.var_names, seed=seed)` "
            "(defaults otherwise: the 3,000 most variable reference genes among those the "
            "query measures, no per-gene standardisation, 10 epochs; the docs tell users "
            "who have the query to pass its genes) then `gs.tl.classify(query, state, "
            "return_table=True)`. `ginseng_ref_only`: the same without `query_genes` "
            "(the model knows nothing of the query). `ginseng_prev`: the defaults before "
            "2026-11-29 (all reference genes, per-gene standardisation), runs kept from "
            "that date. `ginseng_whole_ref_hvg` (pancreas tasks): `query_genes` as "
            "first released, the 3,000 shared genes ranked by the whole reference's "
            "normalised variance; `ginseng` now selects them as `select_hvgs` does on the "
            "shared genes alone (`mask_var`); runs kept. `ginseng_steps1000`: `ginseng` "
            "with `min_steps=1000`, the default until commit c794053, when 500 was "
            "chosen on bench_accuracy.py (runs kept; the `ginseng_ref_only`, "
            "`ginseng_whole_ref_hvg` and `ginseng_prev` runs were made with 1000 too; each "
            "ginseng run's `defaults` or `settings` in transfer_runs.json says which). "
            "A `<row>_overlap0` row appears only where the default classify "
            "refused the query (GeneMismatchError below 50% of the model's genes found) and "
            "scores the same model with `min_gene_overlap=0`; the summary tables count it "
            "in its row's place.",
            "",
            "`scanvi`: scvi-tools' scANVI in its own venv (`--scvi-python`; scvi-tools and "
            "torch versions, epochs trained and torch threads are in each run's row of "
            "transfer_runs.json), trained on reference + the *unlabeled query* (genes: the "
            "reference genes the query has, raw counts; batch = reference/query; SCVI then "
            "SCANVI.from_scvi_model, defaults; `scanvi_e<N>`: SCVI capped at N epochs, SCANVI default). It sees the "
            "query's counts, which no other method does; it is not one of the issue's three "
            "peers, so the best-peer table leaves it out. Its runs were made under `nice -n 10` "
            "on the shared 2-core machine: its times are indicative of the order of magnitude.",
        ]
    )


def write(args, runs, infos, loads, commands) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    failures = [r for r in runs if r["status"] != "ok"]
    fail_lines = ["## Failures", ""] + (
        [
            f"- {r['task']} seed {r['seed']} {r['method']}: {r.get('error', '')[:400]}"
            for r in failures
        ]
        or ["none"]
    )
    report = "\n\n".join(
        [header(args, loads, commands), tables(runs, infos), "\n".join(fail_lines),
         label_maps(infos)]
    )  # fmt: skip
    out.write_text(report + "\n")
    payload = {"commands": commands, "load_average": loads, "tasks": infos, "runs": runs}
    _runs_path(out).write_text(json.dumps(payload, indent=1) + "\n")


def _runs_path(out: Path) -> Path:
    return out.with_name(out.stem + "_runs.json")


def _previous(out: Path) -> tuple[list[dict], dict, list[dict], list[str]]:
    """Runs, task descriptions, load averages and commands already in ``out``'s JSON."""
    path = _runs_path(out)
    if not path.exists():
        return [], {}, [], []
    payload = json.loads(path.read_text())
    loads = payload["load_average"]
    commands = payload.get("commands") or [_command(payload["command"])]
    return (
        payload["runs"],
        payload["tasks"],
        loads if isinstance(loads, list) else [loads],
        commands,
    )


def _method_name(method: str, scvi_max_epochs: int | None) -> str:
    """The name a run is recorded under (``scanvi_e<N>`` when its epochs are capped)."""
    return f"scanvi_e{scvi_max_epochs}" if method == "scanvi" and scvi_max_epochs else method


def run_one(
    task: str, method: str, seed: int, cache_dir: str | None, timeout: int,
    scvi_python: str | None = None, scvi_max_epochs: int | None = None,
) -> list[dict]:  # fmt: skip
    cmd = [sys.executable, __file__, "--child", task, method, str(seed)]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    if method == "scanvi":
        cmd += ["--scvi-python", scvi_python or ""]
        if scvi_max_epochs:
            cmd += ["--scvi-max-epochs", str(scvi_max_epochs)]
    name = _method_name(method, scvi_max_epochs)
    # Own session, so a timeout also ends the child's own workers (the scvi worker).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return [{"method": name, "status": "failed", "error": f"timed out after {timeout} s"}]
    lines = stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return [{"method": name, "status": "failed",
                 "error": f"exit {proc.returncode}: {stderr.strip()[-1500:]}"}]  # fmt: skip
    return json.loads(lines[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--cache-dir", default=None, help="dataset cache (default benchmarks/.cache)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per method run")
    p.add_argument("--out", default=str(RESULTS / "transfer.md"))
    p.add_argument(
        "--append", action="store_true",
        help="keep the runs already in the results JSON and add these (e.g. more seeds)",
    )  # fmt: skip
    p.add_argument(
        "--report", action="store_true",
        help="only rewrite the markdown from the results JSON (no runs)",
    )  # fmt: skip
    p.add_argument(
        "--scvi-python", default="",
        help="Python of a venv with scvi-tools 1.4.2 for the scanvi method (empty: skipped)",
    )  # fmt: skip
    p.add_argument(
        "--scvi-max-epochs", type=int, default=None,
        help="cap SCVI's epochs (default: scvi-tools' heuristic); runs recorded as scanvi_e<N>",
    )  # fmt: skip
    p.add_argument("--scvi-worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child", nargs=3, metavar=("TASK", "METHOD", "SEED"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.scvi_worker is not None:
        scvi_worker(args.scvi_worker)
        return
    if args.child:
        task, method, seed = args.child
        try:
            rows = child(task, method, int(seed), args.cache_dir, args.scvi_python,
                         args.scvi_max_epochs)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - the parent records it as a failure
            traceback.print_exc()
            rows = [{"method": _method_name(method, args.scvi_max_epochs), "status": "failed",
                     "error": f"{type(err).__name__}: {err}"}]  # fmt: skip
        print(json.dumps(rows))
        return
    if args.report:
        runs, infos, loads, commands = _previous(Path(args.out))
        write(args, runs, infos, loads, commands)
        print(f"rewrote {args.out} from {_runs_path(Path(args.out))}")
        return
    load = {
        "start_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "start": [round(x, 2) for x in os.getloadavg()],
    }
    if "scanvi" in args.methods and not args.scvi_python:
        print("scanvi skipped: no --scvi-python given (a venv with scvi-tools 1.4.2; see the "
              "module docstring)", flush=True)  # fmt: skip
        args.methods = [m for m in args.methods if m != "scanvi"]
    elif "scanvi" in args.methods and not Path(args.scvi_python).exists():
        print(f"scanvi skipped: no {args.scvi_python}", flush=True)
        args.methods = [m for m in args.methods if m != "scanvi"]
    runs, infos, loads, commands = _previous(Path(args.out)) if args.append else ([], {}, [], [])
    loads.append(load)
    commands.append(_command(sys.argv))
    for name in args.tasks:
        _, _, infos[name] = prepare(TASKS[name], args.cache_dir)
        print(
            json.dumps(
                {
                    k: infos[name][k]
                    for k in ("task", "n_ref", "n_query", "shared_genes", "query_dropped")
                }
            ),
            flush=True,
        )
    for seed in args.seeds:
        for name in args.tasks:
            for method in args.methods:
                load["last"] = [round(x, 2) for x in os.getloadavg()]
                t0 = time.perf_counter()
                rows = run_one(name, method, seed, args.cache_dir, args.timeout,
                               args.scvi_python, args.scvi_max_epochs)  # fmt: skip
                for row in rows:
                    row.update(task=name, seed=seed, load_avg=load["last"],
                               n_ref=infos[name]["n_ref"], n_query=infos[name]["n_query"])  # fmt: skip
                    runs.append(row)
                    if row["status"] == "ok":
                        msg = (f"macro-F1 {row['macro_f1']:.3f} acc {row['accuracy']:.3f} "
                               f"ECE {row['ece']:.3f} train {row['train_s']:.1f}s "
                               f"(CPU {row['train_cpu_s']:.1f}s)")  # fmt: skip
                    else:
                        msg = "FAILED " + row.get("error", "")[:300]
                    print(f"[{name} | seed {seed} | {row['method']}] {msg} "
                          f"[{time.perf_counter() - t0:.0f}s, load {load['last']}]", flush=True)  # fmt: skip
                write(args, runs, infos, loads, commands)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
