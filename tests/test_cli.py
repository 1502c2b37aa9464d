"""The console script, run as a user would: a subprocess with exit codes."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from ginseng.data import GinsengDataset
from ginseng.data.io import load_model


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ginseng.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def test_demo_end_to_end(tmp_path):
    result = run("demo", "--out", str(tmp_path), "--n-genes", "200", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert "round trip exact for all 558 cells: True" in result.stdout
    assert "calibration: T =" in result.stdout  # the model card of the reloaded model
    assert "held-out query (142 cells): accuracy" in result.stdout
    ds = GinsengDataset(tmp_path / "reference.zarr")
    assert (ds.n_cells, ds.n_genes) == (558, 200)
    reference = ad.read_h5ad(tmp_path / "reference.h5ad")
    np.testing.assert_array_equal(
        ds.gene_names, reference.var_names[reference.var["ginseng_genes"]]
    )
    state = load_model(tmp_path / "model.h5")
    np.testing.assert_array_equal(state.gene_names, ds.gene_names)
    query = ad.read_h5ad(tmp_path / "query_annotated.h5ad")
    assert query.n_obs == 142 and "ginseng_cell_type" in query.obs
    accuracy = np.mean(
        query.obs["ginseng_cell_type"].astype(str) == query.obs["bulk_labels"].astype(str)
    )
    assert f"accuracy {accuracy:.3f}" in result.stdout
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def toy_h5ad(tmp_path_factory, make_toy):
    path = tmp_path_factory.mktemp("cli") / "toy.h5ad"
    make_toy(n_cells=400).write_h5ad(path)
    return path


def test_train_info_annotate(toy_h5ad, tmp_path):
    model = tmp_path / "toy_model.h5"
    result = run(
        "train", str(toy_h5ad), "--labels", "cell_type", "--epochs", "2", "--out", str(model)
    )
    assert result.returncode == 0, result.stderr
    assert model.exists() and f"model written to {model}" in result.stdout

    info = run("info", str(model))
    assert info.returncode == 0 and info.stdout.startswith("GinsengModelState")
    assert "labels (4): type_0, type_1, type_2, type_3" in info.stdout

    table, out = tmp_path / "preds.csv", tmp_path / "annotated.h5ad"
    result = run("annotate", str(toy_h5ad), "--model", str(model), "--table", str(table),
                 "--out", str(out), "--threshold", "0.3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    preds = pd.read_csv(table, index_col=0)
    annotated = ad.read_h5ad(out)
    assert list(preds.index) == list(annotated.obs_names)
    assert list(preds["ginseng_cell_type"]) == list(annotated.obs["ginseng_cell_type"].astype(str))
    np.testing.assert_allclose(
        preds["ginseng_confidence"], annotated.obs["ginseng_confidence"], rtol=1e-6
    )
    assert annotated.uns["ginseng"]["classify"]["params"]["unassigned_threshold"] == 0.3
    source = ad.read_h5ad(toy_h5ad)
    assert "ginseng_cell_type" not in source.obs  # the input file is left alone
    assert (annotated.X != source.X).nnz == 0


def test_usage_errors_exit_2(toy_h5ad):
    assert run().returncode == 2
    assert run("no-such-command").returncode == 2
    assert run("demo", "--n-genes", "many").returncode == 2
    assert run("train", str(toy_h5ad)).returncode == 2  # --labels missing
    result = run("annotate", str(toy_h5ad), "--model", "m.h5")  # no --out / --table
    assert result.returncode == 2 and "--table" in result.stderr


def test_errors_exit_1_with_one_line(tmp_path, toy_h5ad):
    for args in (
        ("demo", "--out", str(tmp_path), "--n-genes", "100000"),
        ("train", str(toy_h5ad), "--labels", "no_such_column"),
        ("info", str(toy_h5ad)),
        ("annotate", str(tmp_path / "missing.h5ad"), "--model", "m.h5", "--table", "p.csv"),
    ):
        result = run(*args)
        assert result.returncode == 1, args
        assert result.stderr.strip().splitlines()[-1].startswith("ginseng: error:"), args
        assert "Traceback" not in result.stderr, args
