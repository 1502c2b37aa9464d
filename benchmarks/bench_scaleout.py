"""Scale-out: annotation in-process vs dask workers; training on 1 vs 2 devices.

The same backed synthetic ``.h5ad`` query (``gs.datasets.write_synthetic_h5ad``, seed 0)
is annotated by ``gs.tl.classify(path, model, store_probabilities=False)``:

- ``in-process``: no dask client: the serial loop reads the backed file chunk by chunk;
- ``dask N``: with a ``distributed.Client`` on a ``LocalCluster(n_workers=N,
  threads_per_worker=1, processes=True)`` active, the counts are read lazily by the
  workers (``read_elem_lazy``), each row block goes through the same kernel, and codes
  and confidence come back to this process.

BLAS, OpenMP and XLA are pinned to one thread in every process (set below, before any
import, and inherited by the workers), so N workers use N cores. Each configuration
runs ``--repeats`` times after one warm-up call (JAX compilation, worker imports); the
cluster start is not timed. The model (all genes, a few epochs) is trained on an
independent draw of the generator and cached. Run::

    python benchmarks/bench_scaleout.py --cells 200000 --genes 2000 --repeats 2

Training (``--parts training``): the same cached store (``--dp-cells`` synthetic cells x
``--genes``) is trained by :class:`~ginseng.train.GinsengClassifierTrainer` in a child
process per device count, with ``JAX_NUM_CPU_DEVICES=N`` (N forced CPU devices, XLA
pinned to one thread each, so N devices may use N cores). Steps/s is measured over the
epochs after the first (which compiles), from the trainer's per-epoch seconds (a
training pass plus the holdout evaluation)::

    python benchmarks/bench_scaleout.py --parts training --dp-cells 50000 --genes 2000
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
).strip()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

CACHE = Path(__file__).parent / ".cache"
RESULTS = Path(__file__).parent / "results" / "scaleout.md"
RESULTS_TRAINING = Path(__file__).parent / "results" / "scaleout_training.md"


def _model(genes: int, train_cells: int, epochs: int) -> Path:
    import ginseng as gs
    from ginseng.data.io import save_model

    path = CACHE / f"scaleout_model_{genes}g_{train_cells}c_{epochs}e.h5"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        reference = gs.datasets.synthetic_counts(
            train_cells, genes, seed=0, noise_seed=1, sorted_by_label=False
        )
        state = gs.tl.train(reference, "cell_type", epochs=epochs, seed=0)
        save_model(state, path)
    return path


def _query(cells: int, genes: int) -> Path:
    import ginseng as gs

    path = CACHE / f"synthetic_{cells}x{genes}.h5ad"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        gs.datasets.write_synthetic_h5ad(path, cells, genes, seed=0)
    return path


def _time(query: Path, model: Path, repeats: int, batch_size: int) -> list[float]:
    import ginseng as gs

    def once() -> float:
        start = time.perf_counter()
        out = gs.tl.classify(query, model, store_probabilities=False, batch_size=batch_size)
        elapsed = time.perf_counter() - start
        out.file.close() if out.isbacked else None
        return elapsed

    once()  # warm-up: compilation, worker imports, page cache
    return [once() for _ in range(repeats)]


def _store(cells: int, genes: int) -> Path:
    import ginseng as gs
    from ginseng.data import GinsengDataset

    path = CACHE / f"scaleout_store_{cells}x{genes}.zarr"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        adata = gs.datasets.synthetic_counts(cells, genes, seed=2, sorted_by_label=False)
        GinsengDataset.create(path, adata, "cell_type")
    return path


def _train_child(store: str, batch_size: int, epochs: int) -> None:
    """In a child with JAX_NUM_CPU_DEVICES set: train, print one JSON line."""
    import jax

    import ginseng as gs
    from ginseng.data import GinsengDataset
    from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings

    gs.settings.progress_bar = False
    settings = GinsengClassifierTrainerSettings(batch_size=batch_size, seed=0, min_steps=1)
    trainer = GinsengClassifierTrainer(GinsengDataset(store), settings)
    _, state = trainer.fit(epochs)
    seconds = state.history["seconds"][1:]  # the first epoch compiles
    steps = state.provenance["steps"] // epochs * len(seconds)
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "steps_per_s": steps / sum(seconds),
                "epoch_s": seconds,
                "accuracy": state.metrics["accuracy"],
                "batch_size": state.provenance["batch_size"],
                "provenance_devices": state.provenance["devices"],
            }
        )
    )


def _training(args: argparse.Namespace) -> None:
    store = _store(args.dp_cells, args.genes)
    load_before = os.getloadavg()
    runs = []
    for n in args.devices:
        env = os.environ | {"JAX_NUM_CPU_DEVICES": str(n)}
        command = [sys.executable, __file__, "--train-child", str(store)]
        command += ["--dp-batch", str(args.dp_batch), "--dp-epochs", str(args.dp_epochs)]
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    load_after = os.getloadavg()
    command = "python benchmarks/bench_scaleout.py " + " ".join(sys.argv[1:])
    lines = [
        f"### Data-parallel training ({datetime.now(UTC):%Y-%m-%d}, `{command}`)",
        "",
        f"Synthetic store, {args.dp_cells:,} cells x {args.genes:,} genes (10 types); "
        f"default network, batch_size={args.dp_batch}, {args.dp_epochs} epochs, steps/s "
        "over epochs 2+ (training pass plus holdout evaluation). One child process per "
        "device count with `JAX_NUM_CPU_DEVICES=N`, XLA pinned to 1 thread per device. "
        f"{os.cpu_count()} CPUs, shared with other jobs: load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in load_before)} before, "
        f"{'/'.join(f'{x:.1f}' for x in load_after)} after.",
        "",
        "| devices | steps/s | epoch s | holdout accuracy | vs 1 device |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        lines.append(
            f"| {run['devices']} | {run['steps_per_s']:.1f} | "
            f"{', '.join(f'{t:.1f}' for t in run['epoch_s'])} | {run['accuracy']:.3f} | "
            f"{run['steps_per_s'] / runs[0]['steps_per_s']:.2f}x |"
        )
    RESULTS_TRAINING.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--train-cells", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--parts", nargs="+", default=["annotation", "training"])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dp-cells", type=int, default=50_000)
    parser.add_argument("--dp-batch", type=int, default=512)
    parser.add_argument("--dp-epochs", type=int, default=3)
    parser.add_argument("--train-child", metavar="STORE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_child:
        _train_child(args.train_child, args.dp_batch, args.dp_epochs)
        return
    if "training" in args.parts:
        _training(args)
    if "annotation" not in args.parts:
        return

    import ginseng as gs

    gs.settings.progress_bar = False
    query, model = _query(args.cells, args.genes), _model(args.genes, args.train_cells, args.epochs)
    load_before = os.getloadavg()
    rows = []
    times = _time(query, model, args.repeats, args.batch_size)
    rows.append(("in-process (no dask)", times))
    print(rows[-1], flush=True)

    from distributed import Client, LocalCluster

    for n in args.workers:
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster),
        ):
            times = _time(query, model, args.repeats, args.batch_size)
        rows.append((f"dask, {n} worker{'s' if n > 1 else ''} x 1 thread", times))
        print(rows[-1], flush=True)
    load_after = os.getloadavg()

    command = "python benchmarks/bench_scaleout.py " + " ".join(sys.argv[1:])
    lines = [
        f"### Scale-out annotation ({datetime.now(UTC):%Y-%m-%d}, `{command}`)",
        "",
        f"Backed synthetic .h5ad query, {args.cells:,} cells x {args.genes:,} genes; a "
        f"{args.genes:,}-gene model ({args.epochs} epochs on {args.train_cells:,} independent "
        "cells). `gs.tl.classify(path, model, store_probabilities=False, "
        f"batch_size={args.batch_size})`; BLAS/OpenMP/XLA pinned to 1 thread per process. "
        f"Median of {args.repeats} timed calls after a warm-up; cluster start not timed. "
        f"{os.cpu_count()} CPUs, shared with other jobs: load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in load_before)} before, "
        f"{'/'.join(f'{x:.1f}' for x in load_after)} after.",
        "",
        "| configuration | call s (min-max) | cells/s | vs in-process |",
        "| --- | ---: | ---: | ---: |",
    ]
    base = statistics.median(rows[0][1])
    for name, times in rows:
        med = statistics.median(times)
        lines.append(
            f"| {name} | {med:.1f} ({min(times):.1f}-{max(times):.1f}) | "
            f"{args.cells / med:,.0f} | {base / med:.2f}x |"
        )
    medians = {name: statistics.median(t) for name, t in rows}
    one, two = [medians[n] for n in medians if n.startswith("dask")][:2] or (None, None)
    if one and two:
        lines += ["", f"- 1 -> 2 workers: {one / two:.2f}x (goal >= 1.6x)."]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
