"""Reading ahead in classify: a backed query annotated with and without the background fetch.

``gs.tl.classify`` reads the next chunk of a backed file on a background thread while it
classifies the current one (``ginseng.data.read_ahead``). This benchmark times
``gs.tl.classify(path, model, return_table=True)`` on a synthetic backed ``.h5ad``
with that fetch, and with the chunks read one after the other in the calling thread
(the loop as it was before), interleaved (a, b, a, b, ...) so that both see the same
load; the first pair is a warm-up. Reported: every run's wall and CPU seconds, the
medians and the per-pair ratio.

Examples
--------
    python benchmarks/bench_read_ahead.py --cells 200000 --genes 5000 --repeats 4
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

try:
    from benchmarks._common import CACHE, publish
except ImportError:  # run as a script
    from _common import CACHE, publish


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--genes", type=int, default=5000)
    p.add_argument("--model-genes", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--workdir", default=str(CACHE / "read_ahead"))
    args = p.parse_args(argv)

    import ginseng as gs
    import ginseng.tl.kernel as kernel

    gs.settings.progress_bar = False
    gs.settings.verbosity = 0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    query = work / f"query_{args.cells}x{args.genes}.h5ad"
    if not query.exists():
        gs.datasets.write_synthetic_h5ad(
            query, args.cells, args.genes, seed=0, noise_seed=1, sorted_by_label=False
        )
    ref = gs.datasets.synthetic_counts(5000, args.genes, seed=0, noise_seed=2)
    state = gs.tl.train(ref, "cell_type", epochs=1, n_top_genes=args.model_genes)

    background = kernel.read_ahead
    variants = {"read_ahead": background, "serial": lambda items: items}
    runs = []
    try:
        for rep in range(args.repeats + 1):
            for name, fetch in variants.items():
                kernel.read_ahead = fetch
                t0, c0 = time.perf_counter(), time.process_time()
                gs.tl.classify(str(query), state, return_table=True)
                row = {
                    "variant": name,
                    "repeat": rep,
                    "wall_s": time.perf_counter() - t0,
                    "cpu_s": time.process_time() - c0,
                    "load": os.getloadavg()[0],
                }
                print(json.dumps(row), flush=True)
                runs.append(row)
    finally:
        kernel.read_ahead = background
    timed = [r for r in runs if r["repeat"] > 0]  # repeat 0 warms up
    wall = {v: [r["wall_s"] for r in timed if r["variant"] == v] for v in variants}
    cpu = {v: [r["cpu_s"] for r in timed if r["variant"] == v] for v in variants}
    ratios = [s / a for a, s in zip(wall["read_ahead"], wall["serial"], strict=True)]
    lines = [
        f"### Read-ahead in classify ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"`python benchmarks/bench_read_ahead.py --cells {args.cells} --genes {args.genes} "
        f"--repeats {args.repeats}`)",
        "",
        f"Backed synthetic `.h5ad` of {args.cells:,} cells x {args.genes:,} genes, a "
        f"{args.model_genes:,}-gene model, chunk size {gs.settings.chunk_size:,}; "
        f"{os.cpu_count()} CPUs, load average {np.mean([r['load'] for r in runs]):.1f} "
        "during the runs (shared machine).",
        "",
        "| variant | wall s (each run) | median wall s | median CPU s |",
        "|---|---|---:|---:|",
    ]
    for v in variants:
        each = ", ".join(f"{x:.1f}" for x in wall[v])
        lines.append(f"| {v} | {each} | {np.median(wall[v]):.1f} | {np.median(cpu[v]):.1f} |")
    lines += [
        "",
        "Serial / read-ahead wall time per interleaved pair: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f" (median {np.median(ratios):.2f}).",
    ]
    publish("\n".join(lines), "read_ahead.md")


if __name__ == "__main__":
    main()
