"""Helpers shared by the benchmark scripts: child processes, peak memory, result files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"


def peak_rss_mb() -> float:
    """Peak resident memory of this process image in MB.

    VmHWM is reset by exec, whereas ``ru_maxrss`` would carry a parent's peak across
    fork and exec and inflate a child's figure.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def synthetic_h5ad(n_cells: int, n_genes: int) -> Path:
    """The cached label-sorted synthetic count file the benchmarks share (made if missing).

    It is generated in its own process, so a benchmark's parent stays small.
    """
    path = CACHE / f"synthetic_{n_cells}x{n_genes}.h5ad"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"generating {path.name} ...", file=sys.stderr)
        command = [sys.executable, str(HERE / "synthetic.py"), str(path)]
        command += ["--cells", str(n_cells), "--genes", str(n_genes)]
        subprocess.run(command, check=True, stdout=sys.stderr)
    return path


def synthetic_zarr(n_cells: int, n_genes: int) -> Path:
    """The same cells as :func:`synthetic_h5ad` in an AnnData ``.zarr`` store (made if missing).

    Copied chunk by chunk (anndata's ``write_elem`` for obs/var and the first rows,
    ``sparse_dataset(...).append`` for the rest), so memory holds one chunk; zarr's
    default codecs compress the counts.
    """
    path = CACHE / f"synthetic_{n_cells}x{n_genes}.zarr"
    if path.exists():
        return path
    import anndata as ad
    import zarr
    from anndata.io import sparse_dataset, write_elem

    source = ad.read_h5ad(synthetic_h5ad(n_cells, n_genes), backed="r")
    print(f"copying {source.filename} to {path.name} ...", file=sys.stderr)
    partial = path.with_suffix(".zarr.partial")
    group = zarr.open_group(partial, mode="w")
    write_elem(group, "obs", source.obs)
    write_elem(group, "var", source.var)
    step = 50_000
    write_elem(group, "X", source.X[:step])
    matrix = sparse_dataset(group["X"])
    for start in range(step, n_cells, step):
        matrix.append(source.X[start : start + step])
    group.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    partial.rename(path)
    return path


def rss_mb() -> float:
    """Current resident memory of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def run_child(script: str, *args: str) -> dict:
    """Run ``python script *args`` and return the JSON object on its last stdout line."""
    out = subprocess.run(
        [sys.executable, script, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def publish(table: str, name: str) -> None:
    """Print a markdown result table and append it to ``benchmarks/results/<name>``."""
    print(table)
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / name, "a") as fh:
        fh.write(table + "\n\n")
