"""Scale-out: annotation in-process vs dask workers; training on 1 vs 2 devices.

The same backed synthetic ``.h5ad`` query (``gs.datasets.write_synthetic_h5ad``, seed 0)
is annotated by ``gs.tl.classify(path, model, store_probabilities=False)``:

- ``in-process``: no dask client: the serial loop reads the backed file chunk by chunk;
- ``dask N``: with a ``distributed.Client`` on a ``LocalCluster(n_workers=N,
  threads_per_worker=1, processes=True)`` active, the counts are read lazily by the
  workers (``read_elem_lazy``), each row block goes through the same kernel, and codes
  and confidence come back to this process. Each worker count runs in dask's default
  worker environment (the nanny sets ``MALLOC_TRIM_THRESHOLD_=65536``, which turns off
  glibc's dynamic mmap threshold) and in the one the CLI's ``--workers`` gives its
  workers (``ginseng.cli.WORKER_ENVIRON``: both malloc thresholds raised); see
  ``--worker-environ``;
- the machine's ceiling for two workers: the same in-process call in one child process
  alone, then in two child processes at once (they share nothing but the cores, caches
  and memory bandwidth); two workers cannot beat two independent jobs.

BLAS and OpenMP are pinned to one thread in every process (set below, before any import,
and inherited by the workers). XLA sizes its CPU thread pool from the process's CPU
affinity, not from flags (``--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`` changed nothing with jax 0.10: a jitted loop of
matrix products took 5.8 and 6.0 CPU-seconds for 3.0 and 3.1 s without and with
them), so each process's XLA may use every core. ``--pin`` pins each timed process to
a core of its own (``os.sched_setaffinity``): the workers, and the children of the
ceiling rows, so that N workers use N cores. Each configuration
runs ``--repeats`` times after one warm-up call (JAX compilation, worker imports); the
cluster start is not timed. The model (all genes, a few epochs) is trained on an
independent draw of the generator and cached. Run::

    python benchmarks/bench_scaleout.py --cells 200000 --genes 2000 --repeats 2

Training (``--parts training``): the same cached store (``--dp-cells`` synthetic cells x
``--genes``) is trained by :class:`~ginseng.train.GinsengClassifierTrainer` in a child
process per device count, with ``JAX_NUM_CPU_DEVICES=N`` (N forced CPU devices sharing
XLA's thread pool, which spans every core the process may use). Steps/s is measured over the
epochs after the first (which compiles), from the trainer's per-epoch seconds (a
training pass plus the holdout evaluation)::

    python benchmarks/bench_scaleout.py --parts training --dp-cells 50000 --genes 2000

Memory per cell (``--parts memory``): for each ``--memory-cells`` size, a synthetic
reference and query (``--memory-genes`` genes, ``mean_umis=70``: about 5% of the
genes are non-zero in a cell) are written chunk by chunk
(``gs.datasets.write_synthetic_h5ad``); then, each in a fresh child process so that its
peak RSS (VmHWM) is its own: the reference becomes a store
(``GinsengDataset.create(store, path, "cell_type", group_key="batch")``), the store is
streamed for one shuffled epoch (``ds.stream(batch_size=256)``), and the query is
annotated in its file (``gs.tl.classify(path, model, write=True)``, the model trained
on 20,000 independent cells). The slope between consecutive sizes is the peak RSS's
growth in bytes per cell. Files go to ``--workdir`` and are deleted after each size
(``--keep`` keeps them)::

    python benchmarks/bench_scaleout.py --parts memory --memory-cells 100000 400000 1000000
    python benchmarks/bench_scaleout.py --parts memory --memory-cells 10000000
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

try:
    from benchmarks._common import peak_rss_mb
except ImportError:  # run as a script
    from _common import peak_rss_mb

CACHE = Path(__file__).parent / ".cache"
RESULTS = Path(__file__).parent / "results" / "scaleout.md"
RESULTS_TRAINING = Path(__file__).parent / "results" / "scaleout_training.md"
RESULTS_MEMORY = Path(__file__).parent / "results" / "scaleout_memory.md"
MEMORY_UMIS = 70.0  # about 5% non-zero genes per cell at 1k-2k genes


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


def _independent(query: Path, model: Path, args: argparse.Namespace, copies: int) -> list[float]:
    """Per-call seconds of ``copies`` in-process classifications run at once, one per process.

    The machine's own ceiling for N workers: N independent jobs share nothing but the
    cores, caches and memory bandwidth.
    """
    command = [sys.executable, __file__, "--classify-child", str(query), str(model)]
    command += ["--repeats", str(args.repeats), "--batch-size", str(args.batch_size)]
    cores = _cores(copies) if args.pin else [None] * copies
    children = [
        subprocess.Popen(
            command + ([] if core is None else ["--core", str(core)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        for core in cores
    ]
    times: list[float] = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode:
            raise RuntimeError(f"classify child failed ({child.returncode})")
        times += json.loads(out.strip().splitlines()[-1])
    return times


def _cores(n: int) -> list[int]:
    """A core of its own for each of ``n`` processes (``--pin`` refuses more than the cores)."""
    cpus = sorted(os.sched_getaffinity(0))
    if n > len(cpus):
        raise SystemExit(f"--pin: {n} processes but only {len(cpus)} cores to pin them to")
    return cpus[:n]


def _pin_process(core: int) -> set[int]:
    """Pin every thread of this process to ``core``; return the affinity it then has.

    ``sched_setaffinity(0, ...)`` sets the calling thread's mask only; threads started
    afterwards inherit it, threads already running keep theirs, so each is set here.
    """
    for task in Path("/proc/self/task").iterdir():
        os.sched_setaffinity(int(task.name), {core})
    return os.sched_getaffinity(0)


def _pin_workers(client, n: int) -> None:
    """Pin each of the ``n`` workers of ``client`` to a core of its own, before XLA starts.

    XLA sizes its thread pool from the process's CPU affinity when it first runs (the
    workers have not run anything yet), so a pinned worker computes on its core alone.
    """
    client.wait_for_workers(n)
    workers = sorted(client.run(os.getpid))  # every worker's address
    for address, core in zip(workers, _cores(len(workers)), strict=True):
        seen = client.run(_pin_process, core, workers=[address])[address]
        if seen != {core}:
            raise RuntimeError(f"worker {address} pinned to {seen}, not core {core}")


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
        "device count with `JAX_NUM_CPU_DEVICES=N` (the devices share XLA's thread pool). "
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
    earlier = RESULTS_TRAINING.read_text() + "\n" if RESULTS_TRAINING.exists() else ""
    RESULTS_TRAINING.write_text(earlier + "\n".join(lines) + "\n")
    print("\n".join(lines))


def _memory_child(step: str, *paths: str) -> dict:
    """One step of ``--parts memory``, alone in this process; returns wall s and peak."""
    import ginseng as gs

    gs.settings.progress_bar = False
    start = time.perf_counter()
    if step == "generate":  # OUT CELLS GENES NOISE_SEED SORTED
        out, cells, genes, noise_seed, sort = paths
        gs.datasets.write_synthetic_h5ad(
            out,
            int(cells),
            int(genes),
            mean_umis=MEMORY_UMIS,
            seed=0,
            noise_seed=int(noise_seed),
            sorted_by_label=sort == "sorted",
        )
    elif step == "model":  # OUT GENES
        from ginseng.data.io import save_model

        out, genes = paths
        reference = gs.datasets.synthetic_counts(
            20_000, int(genes), mean_umis=MEMORY_UMIS, seed=0, noise_seed=3, sorted_by_label=False
        )
        save_model(gs.tl.train(reference, "cell_type", epochs=2, seed=0), out)
    elif step == "create":  # STORE H5AD
        from ginseng.data import GinsengDataset

        store, h5ad = paths
        GinsengDataset.create(store, h5ad, "cell_type", group_key="batch", overwrite=True)
    elif step == "stream":  # STORE
        from ginseng.data import GinsengDataset

        n = 0
        for _, y in GinsengDataset(paths[0]).stream(batch_size=256, split="all", seed=0):
            n += y.size
    elif step == "classify":  # H5AD MODEL
        h5ad, model = paths
        out = gs.tl.classify(h5ad, model, write=True)
        out.file.close()
    else:
        raise ValueError(step)
    return {"step": step, "wall_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def _run_memory_child(*args: str) -> dict:
    command = [sys.executable, __file__, "--memory-child", *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory(args: argparse.Namespace) -> None:
    import shutil

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"memory_model_{args.memory_genes}g.h5"
    if not model.exists():
        _run_memory_child("model", str(model), str(args.memory_genes))
    load_before = os.getloadavg()
    rows: list[dict] = []
    for cells in args.memory_cells:
        reference = work / f"memory_reference_{cells}.h5ad"
        query = work / f"memory_query_{cells}.h5ad"
        store = work / f"memory_store_{cells}.zarr"
        steps = [
            ("generate reference", ("generate", reference, cells, args.memory_genes, 1, "sorted")),
            ("generate query", ("generate", query, cells, args.memory_genes, 2, "unsorted")),
            ("create store", ("create", store, reference)),
            ("stream 1 epoch", ("stream", store)),
            ("classify, write=True", ("classify", query, model)),
        ]
        try:
            for name, child in steps:
                if args.memory_steps and child[0] not in args.memory_steps:
                    continue
                result = _run_memory_child(*map(str, child))
                row = result | {"cells": cells, "step": name}
                if name == "create store":
                    row["file_mb"] = (
                        sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 2**20
                    )
                elif name.startswith("generate"):
                    row["file_mb"] = Path(child[1]).stat().st_size / 2**20
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(store, ignore_errors=True)
                reference.unlink(missing_ok=True)
                query.unlink(missing_ok=True)
    load_after = os.getloadavg()

    command = "python benchmarks/bench_scaleout.py " + " ".join(sys.argv[1:])
    lines = [
        f"### Memory per cell ({datetime.now(UTC):%Y-%m-%d}, `{command}`)",
        "",
        f"Synthetic reference and query, {args.memory_genes:,} genes, mean {MEMORY_UMIS:.0f} "
        "counts per cell (about 5% of genes non-zero), written chunk by chunk. Each step "
        "in a fresh process; peak RSS is its VmHWM (interpreter, imports and JAX "
        "included). Slope: growth of the peak RSS per added cell from the previous size. "
        f"{os.cpu_count()} CPUs, shared with other jobs: load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in load_before)} before, "
        f"{'/'.join(f'{x:.1f}' for x in load_after)} after.",
        "",
        "| cells | step | wall s | cells/s | peak RSS MB | slope bytes/cell | file MB |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    previous: dict[str, dict] = {}
    for row in rows:
        before = previous.get(row["step"])
        slope = (
            f"{(row['peak_rss_mb'] - before['peak_rss_mb']) * 2**20 / (row['cells'] - before['cells']):.0f}"
            if before and row["cells"] != before["cells"]
            else ""
        )
        file_mb = f"{row['file_mb']:,.0f}" if "file_mb" in row else ""
        lines.append(
            f"| {row['cells']:,} | {row['step']} | {row['wall_s']:.1f} | "
            f"{row['cells'] / row['wall_s']:,.0f} | {row['peak_rss_mb']:,.0f} | {slope} | "
            f"{file_mb} |"
        )
        previous[row["step"]] = row
    with open(RESULTS_MEMORY, "a") as fh:
        fh.write("\n".join(lines) + "\n\n")
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
    parser.add_argument(
        "--worker-environ",
        nargs="+",
        choices=["dask", "ginseng"],
        default=["dask", "ginseng"],
        help="the workers' environment: dask's default, or the CLI's (ginseng.cli.WORKER_ENVIRON)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin each worker and each 'at once' child to a core of its own",
    )
    parser.add_argument("--parts", nargs="+", default=["annotation", "training"])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dp-cells", type=int, default=50_000)
    parser.add_argument("--dp-batch", type=int, default=512)
    parser.add_argument("--dp-epochs", type=int, default=3)
    parser.add_argument(
        "--memory-cells", type=int, nargs="+", default=[100_000, 400_000, 1_000_000]
    )
    parser.add_argument("--memory-genes", type=int, default=1_000)
    parser.add_argument("--workdir", default=str(CACHE / "memory"))
    parser.add_argument("--keep", action="store_true", help="keep the memory part's files")
    parser.add_argument(
        "--memory-steps",
        nargs="+",
        choices=["generate", "create", "stream", "classify"],
        help="run only these steps of --parts memory (their inputs must exist; see --keep)",
    )
    parser.add_argument("--train-child", metavar="STORE", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--classify-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pin and not hasattr(os, "sched_setaffinity"):
        parser.error("--pin needs os.sched_setaffinity (Linux)")
    if args.classify_child:
        if args.core is not None:  # before JAX starts: XLA's pool follows the affinity
            _pin_process(args.core)
        import ginseng as gs

        gs.settings.progress_bar = False
        query, model = map(Path, args.classify_child)
        print(json.dumps(_time(query, model, args.repeats, args.batch_size)))
        return
    if args.train_child:
        _train_child(args.train_child, args.dp_batch, args.dp_epochs)
        return
    if args.memory_child:
        print(json.dumps(_memory_child(*args.memory_child)))
        return
    if "memory" in args.parts:
        _memory(args)
    if "training" in args.parts:
        _training(args)
    if "annotation" not in args.parts:
        return

    import ginseng as gs

    gs.settings.progress_bar = False
    query, model = _query(args.cells, args.genes), _model(args.genes, args.train_cells, args.epochs)
    load_before = os.getloadavg()
    rows = []
    pinned = ", pinned" if args.pin else ""
    times = _time(query, model, args.repeats, args.batch_size)
    rows.append(("in-process (no dask, not pinned)" if args.pin else "in-process (no dask)", times))
    print(rows[-1], flush=True)
    for copies in (1, 2):
        times = _independent(query, model, args, copies)
        rows.append(
            (f"{copies} in-process run{'s' if copies > 1 else ''} at once{pinned} (per run)", times)
        )
        print(rows[-1], flush=True)

    from distributed import Client, LocalCluster

    from ginseng.cli import WORKER_ENVIRON

    for environ in args.worker_environ:
        # dask's nanny sets MALLOC_TRIM_THRESHOLD_ in each worker before it starts;
        # "ginseng" adds what the CLI's --workers sets (WORKER_ENVIRON). The nanny takes
        # this process's values first and writes them here: restored once started.
        for n in args.workers:
            saved = dict(os.environ)
            os.environ.update(WORKER_ENVIRON if environ == "ginseng" else {})
            with (
                LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
                ) as cluster,
                Client(cluster) as client,
            ):
                os.environ.clear()
                os.environ.update(saved)
                if args.pin:
                    _pin_workers(client, n)
                times = _time(query, model, args.repeats, args.batch_size)
            label = (
                f"dask, {n} worker{'s' if n > 1 else ''} x 1 thread{pinned}, {environ} environment"
            )
            rows.append((label, times))
            print(rows[-1], flush=True)
    load_after = os.getloadavg()

    command = "python benchmarks/bench_scaleout.py " + " ".join(sys.argv[1:])
    lines = [
        f"### Scale-out annotation ({datetime.now(UTC):%Y-%m-%d}, `{command}`)",
        "",
        f"Backed synthetic .h5ad query, {args.cells:,} cells x {args.genes:,} genes; a "
        f"{args.genes:,}-gene model ({args.epochs} epochs on {args.train_cells:,} independent "
        "cells). `gs.tl.classify(path, model, store_probabilities=False, "
        f"batch_size={args.batch_size})`; BLAS/OpenMP pinned to 1 thread per process; "
        + (
            "each worker and each child of the 'at once' rows pinned to a core of its own. "
            if args.pin
            else "XLA free to use every core in each process. "
        )
        + f"Median of {args.repeats} timed calls after a warm-up; cluster start not timed. "
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
    lines.append("")
    alone, pair = (medians[n] for n in medians if " at once" in n)
    lines.append(
        f"- The machine's ceiling: two independent in-process runs at once process "
        f"{2 * alone / pair:.2f}x the cells per second of one alone."
    )
    for environ in args.worker_environ:
        one = [m for n, m in medians.items() if n.startswith("dask, 1 worker ") and environ in n]
        two = [m for n, m in medians.items() if n.startswith("dask, 2 workers ") and environ in n]
        if one and two:
            lines.append(
                f"- 1 -> 2 workers, {environ} environment: {one[0] / two[0]:.2f}x (goal >= 1.6x)."
            )
    # Every run is kept: the new table goes below the earlier ones.
    earlier = RESULTS.read_text() + "\n" if RESULTS.exists() else ""
    RESULTS.write_text(earlier + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
