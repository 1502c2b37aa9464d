"""The console script, run as a user would: a subprocess with exit codes."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np

from ginseng.data import GinsengDataset
from ginseng.data.io import load_model


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ginseng.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_demo_round_trip(tmp_path):
    result = run("demo", "--out", str(tmp_path), "--n-genes", "200", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert "round trip exact for all 700 cells: True" in result.stdout
    assert "calibration: T =" in result.stdout  # the model card of the saved model
    ds = GinsengDataset(tmp_path / "pbmc68k.zarr")
    assert (ds.n_cells, ds.n_genes) == (700, 200)
    source = ad.read_h5ad(tmp_path / "pbmc68k_counts.h5ad")
    assert int(source.var["ginseng_genes"].sum()) == 200
    np.testing.assert_array_equal(ds.gene_names, source.var_names[source.var["ginseng_genes"]])
    state = load_model(tmp_path / "pbmc68k_model.h5")
    np.testing.assert_array_equal(state.gene_names, ds.gene_names)
    assert list(state.label_names) == list(ds.label_names)


def test_usage_errors_exit_2():
    assert run().returncode == 2
    assert run("no-such-command").returncode == 2
    assert run("demo", "--n-genes", "many").returncode == 2


def test_errors_exit_1_with_one_line(tmp_path):
    result = run("demo", "--out", str(tmp_path), "--n-genes", "100000")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ginseng: error:")
    assert "Traceback" not in result.stderr
