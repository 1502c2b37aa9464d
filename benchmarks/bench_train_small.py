"""Fixed cost of a default ``gs.tl.train`` on a small reference: XLA compilations and CPU time.

On a reference of a few hundred cells the network computes little; what a default
``gs.tl.train(ref, "bulk_labels")`` spends is mostly fixed overhead, above all XLA
compilations (each ~0.05-1 s on CPU). Each run is a fresh process (nothing compiled
yet, as for a user) on ``gs.datasets.pbmc68k_counts()`` (700 cells, 10 labels) and
records:

- the XLA compilations: their number, names and seconds (``jax.monitoring`` duration
  events, ``/jax/core/compile/backend_compile_duration``, with the name taken from the
  ``jax_log_compiles`` log record that follows each), and the tracing/lowering seconds;
- the CPU seconds (``time.process_time``, all threads) and wall seconds of the call,
  after the imports it would make on first use (jax, flax, optax: timed apart, as
  "import CPU s", since a peer's imports are not counted either);
- the seconds of its stages (gene selection, store, fit, uncertainty) via cProfile
  when ``--profile`` is given (slower; not used for the table).

CPU seconds and the compile count are the robust figures on a shared machine; wall
seconds follow the load. ``--runs`` fresh processes are run and the medians reported.
``--cache-dir DIR`` measures what JAX's persistent compilation cache
(``jax_compilation_cache_dir``, which ginseng does not enable) would give: the first
run fills it, the others read it. ``--dump FILE`` writes the first run's metrics and
calibrated probabilities on the reference (for before/after comparisons).

Run::

    python benchmarks/bench_train_small.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime

from _common import publish, run_child


def child(cache_dir: str, dump: str, profile: str) -> dict:
    import logging

    import jax

    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_log_compiles", True)

    compiles: list[dict] = []
    names: list[str] = []
    durations: dict[str, float] = {}

    class Names(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if msg.startswith("Finished XLA compilation of "):
                names.append(msg.removeprefix("Finished XLA compilation of ").split(" in ")[0])
            elif msg.startswith("Persistent compilation cache hit for "):
                names.append("(cache hit) " + msg.split("for ", 1)[1].split("'")[1])

    handler = Names(logging.DEBUG)
    for name in ("jax._src.dispatch", "jax._src.interpreters.pxla", "jax._src.compiler"):
        log = logging.getLogger(name)
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        log.propagate = False

    def on_duration(event: str, seconds: float, **kwargs) -> None:
        durations[event] = durations.get(event, 0.0) + seconds
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append({"seconds": seconds})

    jax.monitoring.register_event_duration_secs_listener(on_duration)

    import ginseng as gs

    cpu = time.process_time()
    import ginseng.data.dataset
    import ginseng.train.trainer  # jax, flax, optax: imported on first use

    import_cpu = time.process_time() - cpu
    gs.settings.progress_bar = False
    ref = gs.datasets.pbmc68k_counts()
    before = len(compiles)
    start, cpu = time.perf_counter(), time.process_time()
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        state = profiler.runcall(gs.tl.train, ref, "bulk_labels")
        profiler.dump_stats(profile)
    else:
        state = gs.tl.train(ref, "bulk_labels")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ours, n_names = compiles[before:], len(names)
    if dump:
        import numpy as np

        X = ref[:, state.genes].X
        np.savez(
            dump,
            metrics=json.dumps(state.metrics, sort_keys=True),
            history=json.dumps({k: v for k, v in state.history.items() if k != "seconds"}),
            proba=state.predict_proba(X),
            temperature=state.temperature,
            **{f"param:{k}": v for k, v in state.params.items()},
            **{f"uncertainty:{k}": v for k, v in state.uncertainty.arrays().items()},
        )
    return {
        "import_cpu_s": import_cpu,
        "wall_s": wall,
        "cpu_s": cpu,
        "n_compiles": len(ours),
        "compile_s": sum(c["seconds"] for c in ours),
        "trace_s": durations.get("/jax/core/compile/jaxpr_trace_duration", 0.0),
        "lower_s": durations.get("/jax/core/compile/jaxpr_to_mlir_module_duration", 0.0),
        "names": names[n_names - len(ours) : n_names],
        "all_names": names,
        "macro_f1": state.metrics["macro_f1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--label", default="", help="what is measured (e.g. a commit)")
    parser.add_argument("--cache-dir", default="")
    parser.add_argument("--dump", default="")
    parser.add_argument("--profile", default="", help="write a cProfile of run 1 here")
    parser.add_argument("--no-publish", action="store_true")
    args = parser.parse_args()

    runs = []
    for i in range(args.runs):
        load = os.getloadavg()[0]
        r = run_child(
            __file__, "_child", args.cache_dir, args.dump if i == 0 else "",
            args.profile if i == 0 else "",
        )  # fmt: skip
        r["load"] = load
        runs.append(r)
        print(
            f"run {i + 1}: {r['n_compiles']} compiles, {r['compile_s']:.2f} s compiling, "
            f"CPU {r['cpu_s']:.2f} s, wall {r['wall_s']:.2f} s, load {load:.1f}",
            file=sys.stderr,
        )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    counts: dict[str, int] = {}
    for name in runs[-1]["names"]:
        counts[name] = counts.get(name, 0) + 1
    command = shlex.join(["python", "benchmarks/bench_train_small.py", *sys.argv[1:]])
    lines = [
        f"### Default `gs.tl.train` on pbmc68k_counts ({datetime.now(UTC):%Y-%m-%d}"
        f"{', ' + args.label if args.label else ''}, `{command}`)",
        "",
        "700 cells, 10 labels, default settings, fresh process per run; medians of "
        f"{args.runs} runs (load average {min(r['load'] for r in runs):.1f}-"
        f"{max(r['load'] for r in runs):.1f} on a shared 2-core machine).",
        "",
        "| XLA compilations | compile s | trace s | lower s | train CPU s | train wall s "
        "| import CPU s | macro-F1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {med('n_compiles'):.0f} | {med('compile_s'):.2f} | {med('trace_s'):.2f} "
        f"| {med('lower_s'):.2f} | {med('cpu_s'):.2f} | {med('wall_s'):.2f} "
        f"| {med('import_cpu_s'):.2f} | {runs[0]['macro_f1']:.3f} |",
        "",
        "Per run (compilations, CPU s, wall s): "
        + "; ".join(f"{r['n_compiles']}, {r['cpu_s']:.2f}, {r['wall_s']:.2f}" for r in runs)
        + ".",
        "",
        "Compilations (last run): "
        + ", ".join(f"`{n}`" + (f" x{c}" if c > 1 else "") for n, c in counts.items()),
    ]
    table = "\n".join(lines)
    if args.no_publish:
        print(table)
    else:
        publish(table, "train_small.md")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(child(*sys.argv[2:5])))
    else:
        main()
