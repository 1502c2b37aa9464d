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

Next to the real run, each in its own fresh process too (issue 13, "training within
1.5x of the arithmetic"):

- floor: the time XLA takes for the same network (the real run's config and
  settings) to take the same number of optimiser steps on batches of the same shape,
  inside one jitted ``jax.lax.scan``: the trainer's own step (loss, dropout, AdamW and
  its schedule) without augmentation, on a pool of 8 random Poisson count batches with
  the training file's density (no store, no Python loop). Compilation (``.lower()
  .compile()``) is timed apart. The same with the step's augmentation is reported too;
- the real fit's split: ``fit`` wall time with the one-off compilation taken out
  (the time spans jax reports for tracing, lowering and compiling, through
  ``jax.monitoring``), the store creation, and the seconds the training loop waited
  for its next batch (the history's ``data_wait_seconds``);
- stream: cells/s of the store's training stream alone (the trainer's batch size,
  buffers and label balancing), with ``gs.settings.reader_threads`` 1 and 2 (best
  of two passes each).

With ``--repeats N`` ginseng, the floor and the stream run N times (alternating) and
the tables give medians; CellTypist runs once (its ratio is to ginseng's median).

Run with the bench environment (CellTypist needs scikit-learn < 1.8)::

    pip install -e ".[bench]"
    python benchmarks/bench_train.py --cells 100000 --genes 3000 --epochs 10
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _common import CACHE, peak_rss_mb, publish, run_child


def _macro_f1(y_true, y_pred) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro"))


# jax's monitoring events of a compilation: tracing to a jaxpr, lowering, XLA compiling.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileSpans:
    """The (start, end) wall-clock spans of every compilation jax reports.

    A jit traced inside another is reported inside the outer span, so spans are merged
    before they are added up.
    """

    def __init__(self) -> None:
        import jax

        self.spans: list[tuple[float, float]] = []
        jax.monitoring.register_event_time_span_listener(self._record)

    def _record(self, event: str, start: float, end: float, **_: object) -> None:
        if event in COMPILE_EVENTS:
            self.spans.append((start, end))

    def seconds(self, lo: float, hi: float) -> float:
        """Seconds within ``[lo, hi]`` (``time.time()``) covered by a compilation."""
        total, reach = 0.0, lo
        for start, end in sorted(self.spans):
            start, end = max(start, reach), min(end, hi)
            if end > start:
                total += end - start
                reach = end
        return total


def _time_calls(owner: object, name: str, into: dict) -> None:
    """Append to ``into[name]`` the wall span and CPU seconds of each call of ``owner.name``.

    ``owner`` is a class (its method is wrapped) or a module (its function is).
    """
    original = getattr(owner, name)
    static = inspect.getattr_static(owner, name) if isinstance(owner, type) else None

    @functools.wraps(original)
    def timed(*args, **kwargs):
        start, cpu = time.time(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            into.setdefault(name, []).append((start, time.time(), time.process_time() - cpu))

    setattr(owner, name, staticmethod(timed) if isinstance(static, classmethod) else timed)


def child_ginseng(train_h5ad: str, query_h5ad: str, epochs: str) -> dict:
    import anndata as ad

    import ginseng as gs
    from ginseng.data import GinsengDataset
    from ginseng.tl.kernel import iter_row_chunks
    from ginseng.train import GinsengClassifierTrainer
    from ginseng.train import trainer as trainer_module

    gs.settings.progress_bar = False
    compiles, calls = CompileSpans(), {}
    _time_calls(GinsengDataset, "create", calls)
    _time_calls(GinsengClassifierTrainer, "fit", calls)
    # The fit's parts (private names: a benchmark's view, not an API).
    _time_calls(GinsengClassifierTrainer, "_init_model", calls)  # gene statistics
    for part in ("train_epoch", "evaluate", "fit_reference_uncertainty"):
        _time_calls(trainer_module, part, calls)
    start, cpu = time.perf_counter(), time.process_time()
    state = gs.tl.train(ad.read_h5ad(train_h5ad, backed="r"), "cell_type", epochs=int(epochs))
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    [(fit_start, fit_end, fit_cpu_s)] = calls["fit"]
    [(store_start, store_end, _)] = calls["create"]
    compile_s = compiles.seconds(fit_start, fit_end)
    fit_s = fit_end - fit_start - compile_s
    data_wait_s = float(sum(state.history["data_wait_seconds"]))
    # Each part's wall seconds, its compilations taken out.
    parts = {
        part: sum(end - start - compiles.seconds(start, end) for start, end, _ in calls[part])
        for part in ("_init_model", "train_epoch", "evaluate", "fit_reference_uncertainty")
    }
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
        "store_s": store_end - store_start,
        "fit_s": fit_s,  # without compilation
        "fit_cpu_s": fit_cpu_s,  # the whole fit, compilation included
        "compile_s": compile_s,
        "epochs_s": float(sum(state.history["seconds"])),
        "data_wait_s": data_wait_s,
        "wait_fraction": data_wait_s / fit_s,
        "statistics_s": parts["_init_model"],
        "train_epochs_s": parts["train_epoch"],
        "evaluate_s": parts["evaluate"],
        "uncertainty_s": parts["fit_reference_uncertainty"],
        "rest_s": fit_s - sum(parts.values()),
        "steps": int(state.provenance["steps"]),
        "batch_size": int(state.provenance["batch_size"]),
        "config": state.config,
        "settings": state.settings.to_json(),
    }


def _scan_steps(train_step, key, pool: int):
    """``run(params, opt_state, rest, xs, ys, index)``: ``train_step`` once per ``index``."""
    import jax

    def run(params, opt_state, rest, xs, ys, index):
        def body(carry, i):
            params, opt_state, loss = train_step(*carry, rest, xs[i % pool], ys[i % pool], key, i)
            return (params, opt_state), loss

        return jax.lax.scan(body, (params, opt_state), index)

    return run


def child_floor(config_json: str, settings_json: str, batch: str, steps: str, density: str) -> dict:
    """The same network's optimiser steps on random batches, in one jitted scan."""
    import jax
    import jax.numpy as jnp

    from ginseng.model.network import build_model
    from ginseng.train import GinsengClassifierTrainerSettings
    from ginseng.train._loop import compile_steps, optimizer, schedule, split_params
    from ginseng.train.augment import Augmentation

    config = json.loads(config_json)
    settings = GinsengClassifierTrainerSettings.from_json(settings_json)
    batch, steps, pool = int(batch), int(steps), 8
    tx = optimizer(settings, schedule(settings, steps))  # the trainer's own
    rng = np.random.default_rng(0)
    lam = -np.log1p(-float(density))  # Poisson counts non-zero with the data's density
    xs = jax.device_put(rng.poisson(lam, (pool, batch, config["n_genes"])).astype(np.float32))
    ys = jax.device_put(rng.integers(0, config["n_labels"], (pool, batch)).astype(np.int32))
    key, index = jax.random.key(settings.seed), jnp.arange(steps, dtype=jnp.int32)

    result = {}
    for name, augment in [
        ("floor", Augmentation()),
        ("floor_aug", Augmentation.from_settings(settings)),
    ]:
        graphdef, params, rest = split_params(build_model(config))
        train_step = compile_steps(graphdef, tx, augment).train_step
        run = _scan_steps(train_step, key, pool)
        opt_state = jax.jit(tx.init)(params)
        start = time.perf_counter()
        compiled = jax.jit(run).lower(params, opt_state, rest, xs, ys, index).compile()
        result[f"{name}_compile_s"] = time.perf_counter() - start
        start, cpu = time.perf_counter(), time.process_time()
        losses = jax.block_until_ready(compiled(params, opt_state, rest, xs, ys, index)[1])
        result[f"{name}_s"] = time.perf_counter() - start
        result[f"{name}_cpu_s"] = time.process_time() - cpu
        assert np.isfinite(float(losses[-1]))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def child_stream(train_h5ad: str, settings_json: str, batch: str) -> dict:
    """Cells/s of the trainer's training stream alone, with 1 and 2 reader threads."""
    import anndata as ad

    import ginseng as gs
    from ginseng.data import GinsengDataset
    from ginseng.train import GinsengClassifierTrainerSettings
    from ginseng.train.trainer import STREAM_BUFFERS

    gs.settings.progress_bar = False
    s = GinsengClassifierTrainerSettings.from_json(settings_json)
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        start = time.perf_counter()
        ds = GinsengDataset.create(
            f"{tmp}/store.zarr", ad.read_h5ad(train_h5ad, backed="r"), "cell_type", seed=s.seed
        )
        result["store_s"] = time.perf_counter() - start
        ds.make_split(s.holdout_fraction, seed=s.seed)
        for attempt in range(2):
            for threads in (1, 2):
                gs.settings.reader_threads = threads
                start, cells = time.perf_counter(), 0
                for _, y in ds.stream(
                    int(batch), "train", shuffle=True, balance_labels=s.balance_train,
                    seed=attempt, drop_last=True, **STREAM_BUFFERS,
                ):  # fmt: skip
                    cells += y.size
                rate = cells / (time.perf_counter() - start)
                key = f"stream_{threads}_cells_s"
                result[key] = max(result.get(key, 0.0), rate)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


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


def _density(h5ad: Path) -> float:
    """Share of non-zero values of the file's ``X`` (CSR, as ``synthetic.py`` writes it)."""
    import h5py

    with h5py.File(h5ad, "r") as f:
        n_cells, n_genes = f["X"].attrs["shape"]
        return f["X/data"].shape[0] / (n_cells * n_genes)


def _median(runs: list[dict]) -> dict:
    """Per key, the median over ``runs`` of numbers (else the first run's value)."""
    out = {}
    for key, value in runs[0].items():
        numbers = isinstance(value, (int, float)) and not isinstance(value, bool)
        out[key] = statistics.median(r[key] for r in runs) if numbers else value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=3000)
    parser.add_argument("--query", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--methods", nargs="+", default=["ginseng", "floor", "stream", "celltypist"]
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="fresh processes per method (CellTypist: 1)"
    )
    args = parser.parse_args()
    if {"floor", "stream"} & set(args.methods) and "ginseng" not in args.methods:
        parser.error("floor and stream take the real ginseng run's network and settings")

    train, query = _files(args.cells, args.genes, args.query)
    runs: dict[str, list[dict]] = {method: [] for method in args.methods}
    for repeat in range(args.repeats):
        for method in args.methods:
            if method == "celltypist" and repeat > 0:
                continue
            load_before = os.getloadavg()[0]
            if method == "floor":
                g = runs["ginseng"][-1]
                child_args = [json.dumps(g["config"]), g["settings"], str(g["batch_size"])]
                child_args += [str(g["steps"]), str(_density(train))]
            elif method == "stream":
                g = runs["ginseng"][-1]
                child_args = [str(train), g["settings"], str(g["batch_size"])]
            else:
                child_args = [str(train), str(query), str(args.epochs)]
            result = run_child(__file__, f"_{method}", *child_args)
            # Wall times on 2 shared cores scale with the load: record it around each child.
            result["load"] = (load_before, os.getloadavg()[0])
            runs[method].append(result)
            print(method, json.dumps(result), file=sys.stderr)
    results = {method: _median(r) for method, r in runs.items()}
    for method, r in results.items():
        loads = [x for run in runs[method] for x in run["load"]]
        r["load"] = f"{min(loads):.1f}-{max(loads):.1f}"

    command = "python benchmarks/bench_train.py " + " ".join(sys.argv[1:])
    medians = (
        f", medians of {args.repeats} fresh processes (CellTypist: one)" if args.repeats > 1 else ""
    )
    lines = [
        f"### Training ({datetime.now(UTC):%Y-%m-%d}, `{command}`)",
        "",
        f"{args.cells:,} training cells x {args.genes:,} genes, {args.epochs} epochs, "
        f"{args.query:,} held-out query cells{medians}.",
        "",
        "| method | train wall s | train CPU s | predict wall s | peak RSS | macro-F1 "
        "| load average |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in ("ginseng", "celltypist"):
        if method in results:
            r = results[method]
            lines.append(
                f"| {method} | {r['train_s']:.1f} | {r['train_cpu_s']:.1f} "
                f"| {r['predict_s']:.1f} | {r['peak_rss_mb']:,.0f} MB | {r['macro_f1']:.3f} "
                f"| {r['load']} |"
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
    if {"ginseng", "floor"} <= set(results):
        g, f = results["ginseng"], results["floor"]
        lines += [
            "",
            f"Against the arithmetic ({int(g['steps']):,} steps of {int(g['batch_size'])} cells, "
            "one jitted scan on random counts):",
            "",
            "| floor s (CPU s) | floor with augmentation s | fit s, no compile (CPU s, with it) "
            "| fit / floor | compile s (floor's) | store creation s | waiting for data "
            "| macro-F1 | load average (ginseng; floor) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {f['floor_s']:.1f} ({f['floor_cpu_s']:.1f}) | {f['floor_aug_s']:.1f} "
            f"| {g['fit_s']:.1f} ({g['fit_cpu_s']:.1f}) | {g['fit_s'] / f['floor_s']:.2f}x "
            f"| {g['compile_s']:.1f} ({f['floor_compile_s']:.1f}) | {g['store_s']:.1f} "
            f"| {g['data_wait_s']:.1f} s ({g['wait_fraction']:.0%}) | {g['macro_f1']:.3f} "
            f"| {g['load']}; {f['load']} |",
            "",
            f"The fit's parts, compilation taken out: training steps {g['train_epochs_s']:.1f} s "
            f"(of which waiting for data {g['data_wait_s']:.1f} s), holdout evaluation "
            f"{g['evaluate_s']:.1f} s, uncertainty pass {g['uncertainty_s']:.1f} s, "
            f"model and gene statistics {g['statistics_s']:.1f} s, the rest "
            f"{g['rest_s']:.1f} s.",
        ]
    if "stream" in results:
        r = results["stream"]
        lines += [
            "",
            f"Training stream alone (best of 2 passes): {r['stream_1_cells_s']:,.0f} cells/s "
            f"with 1 reader thread, {r['stream_2_cells_s']:,.0f} with 2 "
            f"(store creation {r['store_s']:.1f} s; load average {r['load']}).",
        ]
    table = "\n".join(lines)
    publish(table, "train.md")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        step = {
            "_ginseng": child_ginseng,
            "_celltypist": child_celltypist,
            "_floor": child_floor,
            "_stream": child_stream,
        }
        print(json.dumps(step[sys.argv[1]](*sys.argv[2:])))
    else:
        main()
