"""The examples of README.md, docs/cli.md and docs/index.md run as written.

The examples are read from the documents themselves, so an edit there is tested. Each
document's examples run in an empty temporary directory holding files with the names
they use: toy counts (2000 genes, so ``n_top_genes=2000`` is valid) of a reference and of
held-out query cells, cell types in ``obs["cell_type"]``, raw counts in
``layers["counts"]``. Shell commands run in a subprocess, ``ginseng`` being this
interpreter's ``python -m ginseng.cli``; Python blocks are executed unchanged. Only
installation and test commands (``pip``, ``pytest``) are skipped.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
# The toy types are well separated: a model must label the held-out cells this well (a
# constant label gets about 0.3).
ACCURACY_FLOOR = 0.9


def code_blocks(document: str, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in a document of the repository."""
    text = (ROOT / document).read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def ginseng_commands(text: str) -> list[str]:
    """The ``ginseng ...`` commands in shell text (``a && ginseng b`` gives ``ginseng b``)."""
    commands = []
    for line in text.splitlines():
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith("ginseng "):
                commands.append(part)
    return commands


def run_command(command: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "ginseng"
    result = subprocess.run(
        [sys.executable, "-m", "ginseng.cli", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    return result


def accuracy(predicted, truth) -> float:
    """Accuracy on held-out cells, checked to be far above any constant label's."""
    truth = np.asarray(truth, str)
    constant = pd.Series(truth).value_counts(normalize=True).max()
    assert constant + 0.4 < ACCURACY_FLOOR
    return float(np.mean(np.asarray(predicted, str) == truth))


def split(full: ad.AnnData, n_reference: int) -> tuple[ad.AnnData, ad.AnnData]:
    """Reference and held-out query cells in scanpy's usual layout (X log-normalised,
    counts in layers['counts'])."""
    counts = sp.csr_matrix(full.X, dtype=np.float32)
    full.layers["counts"] = counts
    totals = np.asarray(counts.sum(axis=1)).ravel()
    full.X = sp.csr_matrix(counts.multiply(1e4 / totals[:, None])).log1p().astype(np.float32)
    return full[:n_reference].copy(), full[n_reference:].copy()


@pytest.fixture(scope="module")
def toy(make_toy) -> dict[str, ad.AnnData]:
    """Few cells (training time grows with genes x cells per step), 2000 genes."""
    reference, query = split(make_toy(n_cells=140, n_genes=2000), 80)
    return {"reference": reference, "query": query}


def write(directory: Path, **files: ad.AnnData) -> None:
    for name, adata in files.items():
        adata.write_h5ad(directory / name)


def test_readme_shell_examples(make_toy, tmp_path):
    text = (ROOT / "README.md").read_text()
    inline = re.findall(r"`(ginseng [^`]+)`", text)
    assert [command.split()[1] for command in inline] == ["train", "annotate"]
    # No --n-top-genes here: 50 genes do.
    reference, query = split(make_toy(n_cells=140), 80)
    write(tmp_path, **{"ref.h5ad": reference, "query.h5ad": query})
    for command in inline:
        run_command(command, tmp_path)
    annotated = ad.read_h5ad(tmp_path / "annotated.h5ad")
    truth = annotated.obs["cell_type"]
    assert accuracy(annotated.obs["ginseng_cell_type"], truth) >= ACCURACY_FLOOR


def test_readme_python_example(toy):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    (block,) = code_blocks("README.md", "python")
    # The query lacks 200 of the reference's genes: query_genes= leaves them out.
    query = toy["query"][:, 200:].copy()
    namespace = {"ref": toy["reference"].copy(), "query": query}
    try:
        exec(compile(block, "README.md", "exec"), namespace)
    finally:
        plt.close("all")
    ref, query, state = namespace["ref"], namespace["query"], namespace["state"]
    assert list(state.genes) == list(query.var_names)  # 1,800 (< n_top_genes=3000)
    assert "ginseng_genes" not in ref.var  # training chose genes without writing var
    assert query.uns["ginseng"]["classify"]["gene_overlap"]["n_missing"] == 0
    assert accuracy(query.obs["ginseng_cell_type"], query.obs["cell_type"]) >= ACCURACY_FLOOR


def test_cli_doc_examples(toy, tmp_path):
    from ginseng.data.io import load_model

    (block,) = code_blocks("docs/cli.md", "bash")
    commands = ginseng_commands(block)
    assert [c.split()[1] for c in commands] == ["train", "info", "annotate", "demo"]
    query = toy["query"][:, 100:].copy()  # lacks 100 of the reference's genes
    write(tmp_path, **{"reference.h5ad": toy["reference"], "query.h5ad": query})
    outputs = [run_command(command, tmp_path).stdout for command in commands]
    state = load_model(tmp_path / "model.h5")
    assert list(state.genes) == list(query.var_names)  # --query query.h5ad: its 1,900 genes
    assert outputs[1].strip() == str(state).strip()  # ginseng info prints the model card
    preds = pd.read_csv(tmp_path / "predictions.csv", index_col=0)
    truth = query.obs["cell_type"]
    assert list(preds.index) == list(truth.index)
    assert (
        (preds["ginseng_confidence"] < 0.5) == (preds["ginseng_cell_type"] == "Unassigned")
    ).all()
    assert accuracy(preds["ginseng_cell_type"], truth) >= ACCURACY_FLOOR
    # ginseng demo writes its results into ./ginseng-demo.
    demo = tmp_path / "ginseng-demo"
    assert {"model.h5", "query_annotated.h5ad", "confusion.png"} <= {p.name for p in demo.iterdir()}
    assert "held-out query (142 cells): accuracy" in outputs[3]


def test_readme_demo_command():
    # README.md runs the demo after installing: the same command as in docs/cli.md.
    (block, *_) = code_blocks("README.md", "bash")
    assert ginseng_commands(block) == ["ginseng demo"]
    assert "ginseng demo" in ginseng_commands(code_blocks("docs/cli.md", "bash")[0])


def test_index_quick_start(toy, tmp_path, monkeypatch):
    blocks = code_blocks("docs/index.md", "python")
    assert len(blocks) == 1
    query = toy["query"][:, 300:].copy()  # lacks 300 of the reference's genes
    write(tmp_path, **{"reference.h5ad": toy["reference"], "query.h5ad": query})
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "docs/index.md", "exec"), namespace)
    query = namespace["query"]
    assert list(namespace["model"].genes) == list(query.var_names)  # query_genes=
    assert query.isbacked  # read backed, annotated out of core
    assert (tmp_path / "model.h5").exists()
    assert accuracy(query.obs["ginseng_cell_type"], query.obs["cell_type"]) >= ACCURACY_FLOOR
    query.file.close()
    # Nothing else of the shell: the install line is the only other code block.
    (install,) = code_blocks("docs/index.md", "bash")
    assert install.strip().startswith("pip install")
