"""Killed writes never lose the user's data: SIGKILL at many moments, then reopen.

Each case copies a real annotated-able file, starts ``classify(..., write=True)`` (or
``ginseng annotate --out``) in a subprocess and kills it with SIGKILL, either after a
delay or the moment a file beside the target appears (the staged copy), plus a small
delay. The file is then opened afresh and must be either byte-for-byte the original or
the complete annotated result; a later successful run on the same path must clean up
whatever the killed one left.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import ginseng as gs
from ginseng.data.io import save_model

pytestmark = pytest.mark.slow

CHILD = """
import sys
import ginseng as gs
gs.settings.progress_bar = False
if sys.argv[1] == "classify":
    gs.tl.classify(sys.argv[2], sys.argv[3], write=True)
else:
    from ginseng.cli import main
    sys.exit(main(sys.argv[2:]))
"""
# Kill moments: seconds after the child starts, and seconds after the first change
# beside or inside the target (a new sibling file, or the target's own files changing).
AFTER_START = [1.0]
AFTER_CHANGE = [0.0, 0.001, 0.004, 0.015, 0.05, 0.2, 0.6, 1.5]


@pytest.fixture(scope="module")
def files(tmp_path_factory, make_toy, toy_trained):
    """The model, an original .h5ad and .zarr (20k toy cells), and their annotated forms."""
    root = tmp_path_factory.mktemp("crash")
    model = save_model(toy_trained.state, root / "model.h5")
    adata = make_toy(n_cells=20_000, seed=3)
    adata.obs["note"] = "kept"  # a user column that must survive any kill
    originals = {"h5ad": root / "query.h5ad", "zarr": root / "query.zarr"}
    adata.write_h5ad(originals["h5ad"])
    adata.write_zarr(originals["zarr"])
    expected = {}
    for fmt, path in originals.items():
        done = root / f"done{path.suffix}"
        _copy(path, done)
        gs.tl.classify(done, model, write=True)
        expected[fmt] = _read(done)
    return model, originals, expected


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)


def _digest(path: Path) -> str:
    """sha256 over every file of ``path`` (a file or a folder), with relative names."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        h.update(str(file.relative_to(path.parent)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def _read(path: Path) -> ad.AnnData:
    return ad.read_h5ad(path) if path.suffix == ".h5ad" else ad.read_zarr(path)


def _is_complete(path: Path, expected: ad.AnnData) -> bool:
    adata = _read(path)
    if "ginseng_cell_type" not in adata.obs:
        return False
    np.testing.assert_array_equal(adata.obs["note"], expected.obs["note"])
    np.testing.assert_array_equal(adata.obs["ginseng_cell_type"], expected.obs["ginseng_cell_type"])
    np.testing.assert_array_equal(
        adata.obsm["ginseng_probabilities"], expected.obsm["ginseng_probabilities"]
    )
    assert (adata.X != expected.X).nnz == 0
    return True


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.glob(f".{path.name}.ginseng-*"))


def _snapshot(target: Path) -> tuple:
    """What a write would change first: the folder's listing and the target's stats.

    For a ``.zarr`` folder, its top-level entries and their ``obs`` / metadata files too.
    """
    watched = [target]
    if target.is_dir():
        watched += [target / "obs", target / ".zmetadata", target / "zarr.json"]
    stats = []
    for path in watched:
        try:
            st = path.stat()
            stats.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stats.append(None)
    return (tuple(sorted(p.name for p in target.parent.iterdir())), tuple(stats))


def _run_and_kill(args: list[str], target: Path, *, after_start=None, after_change=None):
    """Start the child and SIGKILL it at the requested moment."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    started = time.perf_counter()
    initial = _snapshot(target)
    while child.poll() is None:
        if after_start is not None and time.perf_counter() - started >= after_start:
            break
        if after_change is not None and _snapshot(target) != initial:
            time.sleep(after_change)
            break
        time.sleep(0.0002)
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.wait()


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_killed_write_back_leaves_old_or_new_file(files, fmt, tmp_path):
    model, originals, expected = files
    original = originals[fmt]
    before = _digest(original)
    outcomes = {"old": 0, "new": 0}
    moments = [("start", d) for d in AFTER_START] + [("change", d) for d in AFTER_CHANGE]
    for i, (kind, delay) in enumerate(moments):
        target = tmp_path / f"run{i}" / original.name
        target.parent.mkdir()
        _copy(original, target)
        _run_and_kill(
            ["classify", str(target), str(model)],
            target,
            after_start=delay if kind == "start" else None,
            after_change=delay if kind == "change" else None,
        )
        if _digest(target) == before:  # names are relative, so copies compare equal
            outcomes["old"] += 1
        else:
            assert _is_complete(target, expected[fmt]), f"{kind} + {delay}s: damaged file"
            outcomes["new"] += 1
        # The next run on the same path cleans up and completes.
        gs.tl.classify(target, model, write=True)
        assert _is_complete(target, expected[fmt])
        assert _leftovers(target) == []
    print(f"{fmt}: {len(moments)} kills, outcomes {outcomes}, damaged files 0")
    assert outcomes["old"] > 0, outcomes


def test_killed_annotate_out_leaves_nothing_or_a_complete_file(files, tmp_path):
    model, originals, expected = files
    query = originals["h5ad"]
    outcomes = {"none": 0, "complete": 0}
    for i, delay in enumerate([1.0, *AFTER_CHANGE]):
        out = tmp_path / f"run{i}" / "annotated.h5ad"
        out.parent.mkdir()
        _run_and_kill(
            ["cli", "annotate", str(query), "--model", str(model), "--out", str(out)],
            out,
            after_start=delay if i == 0 else None,
            after_change=None if i == 0 else delay,
        )
        if out.exists():
            assert _is_complete(out, expected["h5ad"]), f"kill {i}: partial --out file"
            outcomes["complete"] += 1
        else:
            outcomes["none"] += 1
        annotate = ["annotate", str(query), "--model", str(model), "--out", str(out)]
        result = subprocess.run(
            [sys.executable, "-m", "ginseng.cli", *annotate],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert _is_complete(out, expected["h5ad"])
        assert _leftovers(out) == []
    print(f"annotate --out: {1 + len(AFTER_CHANGE)} kills, outcomes {outcomes}, partial files 0")
    assert outcomes["none"] > 0, outcomes


def test_a_second_writer_gets_a_clear_error(files, tmp_path):
    """While one process updates a file, another's write=True is refused, file intact."""
    from ginseng.data._atomic import staged_update

    model, originals, _ = files
    target = tmp_path / originals["h5ad"].name
    _copy(originals["h5ad"], target)
    before = _digest(target)
    with staged_update(target, "a test holding the lock"):
        result = subprocess.run(
            [sys.executable, "-c", CHILD, "classify", str(target), str(model)],
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0
        assert "Another process is writing into" in result.stderr
        assert _digest(target) == before
