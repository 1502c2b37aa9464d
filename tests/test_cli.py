"""The console script: exit codes, messages and the documented effect of every option.

A few tests run ``python -m ginseng.cli`` in a subprocess, exactly as a user would; the
option tests call :func:`ginseng.cli.main` (the console script's entry point) in-process,
which saves the interpreter and JAX start-up of a subprocess per command. The toy data
are split into a reference (trained on) and held-out query cells (annotated and
compared with their true labels); models are trained once per module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import ginseng as gs
from ginseng.cli import main
from ginseng.data import GinsengDataset
from ginseng.data.io import load_model

# Held-out accuracy the CLI-trained toy model must reach (measured: 1.000 on the 200
# held-out cells); a constant predictor gets the largest class share, 0.265.
ACCURACY_FLOOR = 0.9


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ginseng.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def call(capsys, *args) -> tuple[int, str, str]:
    """Run ``ginseng ARGS`` in-process; return ``(exit code, stdout, stderr)``."""
    capsys.readouterr()  # drop what earlier steps printed
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The last line of stderr, where the CLI reports an error."""
    lines = err.strip().splitlines()
    return lines[-1] if lines else ""


def accuracy(predicted, truth) -> float:
    return float(np.mean(np.asarray(predicted, str) == np.asarray(truth, str)))


def constant_accuracy(truth) -> float:
    """The best accuracy of a predictor that outputs one label for every cell."""
    return float(pd.Series(np.asarray(truth, str)).value_counts(normalize=True).max())


def printed_counts(stdout: str) -> dict[str, int]:
    """The ``predicted cell types:`` lines of ``ginseng annotate``'s output."""
    lines = stdout.split("predicted cell types:\n", 1)[1].strip().splitlines()
    rows = [line.rsplit(None, 1) for line in lines]
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}


def expected_counts(table: pd.DataFrame) -> dict[str, int]:
    counts = table["ginseng_cell_type"].astype(str).value_counts()
    return {k: int(v) for k, v in counts.items() if v > 0}


def same_params(a, b) -> bool:
    return a.params.keys() == b.params.keys() and all(
        np.array_equal(a.params[k], b.params[k]) for k in a.params
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
    np.testing.assert_array_equal(state.genes, ds.gene_names)
    query = ad.read_h5ad(tmp_path / "query_annotated.h5ad")
    assert query.n_obs == 142 and "ginseng_cell_type" in query.obs
    accuracy = np.mean(
        query.obs["ginseng_cell_type"].astype(str) == query.obs["bulk_labels"].astype(str)
    )
    assert f"accuracy {accuracy:.3f}" in result.stdout
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- data and models shared by the module -------------------------------------------------


def _with_log_x(adata: ad.AnnData) -> ad.AnnData:
    """Counts in layers['counts'] and log-normalised values in X (scanpy's usual layout)."""
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    adata.layers["counts"] = counts
    adata.X = sp.csr_matrix(counts.multiply(1e4 / totals[:, None])).log1p().astype(np.float32)
    return adata


class Files:
    """Paths of the toy files: a reference and held-out query cells of the same data."""

    def __init__(self, root: Path, make_toy):
        self.root = root
        full = make_toy(n_cells=600)
        ref, query = _with_log_x(full[:400].copy()), _with_log_x(full[400:].copy())
        # --genes as a var column and as a file (names in an order unlike var's).
        ref.var["use"] = np.arange(ref.n_vars) < 30
        self.genes_file = root / "genes.txt"
        self.file_genes = [f"gene{j}" for j in (7, 41, 3, 22, 0, 19, 15, 36, 11, 28)]
        self.genes_file.write_text("\n".join(self.file_genes) + "\n\n")
        # Clusters for --majority-vote: the cell types, with every 8th cell in the
        # cluster of the next type (so the vote overrules its own prediction).
        codes = query.obs["cell_type"].cat.codes.to_numpy().copy()
        codes[::8] = (codes[::8] + 1) % 4
        query.obs["cluster"] = pd.Categorical([f"c{c}" for c in codes])
        self.ref, self.query = root / "ref.h5ad", root / "query.h5ad"
        ref.write_h5ad(self.ref)
        query.write_h5ad(self.query)
        self.ref_adata, self.query_adata = ref, query
        # The query with other var_names: the model's names in 'symbol', a permutation
        # of them (every name matches, at the wrong position) in 'decoy'.
        ids = query.copy()
        names = ids.var_names.to_numpy()
        ids.var["symbol"] = names
        ids.var["decoy"] = names[::-1]
        ids.var_names = [f"ENSG{j:011d}" for j in range(ids.n_vars)]
        self.query_ids = root / "query_ids.h5ad"
        ids.write_h5ad(self.query_ids)
        # The query with only 20 of the 50 genes (40 %).
        self.kept_genes = query.var_names[::5].union(query.var_names[1::5])
        self.query_partial = root / "query_partial.h5ad"
        query[:, self.kept_genes].copy().write_h5ad(self.query_partial)


@pytest.fixture(scope="module")
def files(tmp_path_factory, make_toy) -> Files:
    return Files(tmp_path_factory.mktemp("cli"), make_toy)


@pytest.fixture(scope="module")
def quiet():
    """Progress bars off while module fixtures train (the autouse fixture is per test)."""
    before = gs.settings.progress_bar
    gs.settings.progress_bar = False
    yield
    gs.settings.progress_bar = before


def _train(files: Files, name: str, *options: str) -> Path:
    """Train in-process with ``options``; return the model path."""
    out = files.root / f"{name}.h5"
    code = main(
        ["train", str(files.ref), "--labels", "cell_type", "--layer", "counts", "--epochs", "1",
         "--out", str(out), *options]
    )  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def main_model(files, quiet) -> tuple[Path, subprocess.CompletedProcess]:
    """The reference trained by the console script in a subprocess, as a user would."""
    out = files.root / "main.h5"
    result = run("train", str(files.ref), "--labels", "cell_type", "--layer", "counts",
                 "--epochs", "2", "--seed", "3", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result


# --- train ---------------------------------------------------------------------------------


def test_train_info_annotate_held_out_accuracy(files, main_model, tmp_path):
    model, result = main_model
    assert model.exists() and f"model written to {model}" in result.stdout
    state = load_model(model)
    assert str(state) in result.stdout  # the model card
    assert list(state.history["epoch"]) == [1, 2]  # --epochs 2

    info = run("info", str(model))
    assert info.returncode == 0 and info.stdout.strip() == str(state).strip()
    assert "labels (4): type_0, type_1, type_2, type_3" in info.stdout

    table, out = tmp_path / "preds.csv", tmp_path / "annotated.h5ad"
    result = run("annotate", str(files.query), "--model", str(model), "--layer", "counts",
                 "--table", str(table), "--out", str(out), "--threshold", "0.3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    preds = pd.read_csv(table, index_col=0)
    annotated = ad.read_h5ad(out)
    assert list(preds.index) == list(annotated.obs_names) == list(files.query_adata.obs_names)
    assert list(preds["ginseng_cell_type"]) == list(annotated.obs["ginseng_cell_type"].astype(str))
    np.testing.assert_allclose(
        preds["ginseng_confidence"], annotated.obs["ginseng_confidence"], rtol=1e-6
    )
    assert annotated.uns["ginseng"]["classify"]["params"]["unassigned_threshold"] == 0.3
    assert (preds["ginseng_cell_type"] == "Unassigned").sum() == (
        preds["ginseng_confidence"] < 0.3
    ).sum()
    # Held-out cells: the predictions match the truth far better than any constant label.
    truth = files.query_adata.obs["cell_type"]
    baseline = constant_accuracy(truth)
    assert baseline < 0.4 and ACCURACY_FLOOR > baseline + 0.5
    assert accuracy(preds["ginseng_cell_type"], truth) >= ACCURACY_FLOOR
    assert printed_counts(result.stdout) == preds["ginseng_cell_type"].value_counts().to_dict()
    source = ad.read_h5ad(files.query)
    assert "ginseng_cell_type" not in source.obs  # the input file is left alone
    assert (annotated.layers["counts"] != source.layers["counts"]).nnz == 0


def test_train_hierarchy_and_annotate_its_levels(files, capsys, tmp_path):
    ref = files.ref_adata.copy()
    ref.obs["group"] = ref.obs["cell_type"].map(
        {"type_0": "AB", "type_1": "AB", "type_2": "CD", "type_3": "CD"}
    )
    ids = {"type_0": "CL:0000624", "type_1": "CL:0000625", "type_2": "CL:0000236",
           "type_3": "CL:0000860"}  # fmt: skip
    ref.obs["cl"] = ref.obs["cell_type"].astype(str).map(ids)
    path, model, table = tmp_path / "ref.h5ad", tmp_path / "tree.h5", tmp_path / "p.csv"
    ref.write_h5ad(path)
    code, out, _ = call(capsys, "train", path, "--labels", "cell_type", "--layer", "counts",
                        "--hierarchy", "group", "--ontology-key", "cl", "--epochs", "1",
                        "--out", model)  # fmt: skip
    assert code == 0 and "hierarchy: group (2) > cell_type (4)" in out
    assert load_model(model).hierarchy.levels == ("group", "cell_type")
    assert {k: v for k, v in load_model(model).ontology.ids.items() if k in ids} == ids
    code, _, _ = call(capsys, "annotate", files.query, "--model", model, "--layer", "counts",
                      "--table", table)  # fmt: skip
    preds = pd.read_csv(table, index_col=0)
    parent = {"type_0": "AB", "type_1": "AB", "type_2": "CD", "type_3": "CD"}
    assert code == 0
    assert (
        preds["ginseng_cell_type_cell_type"].map(parent) == preds["ginseng_cell_type_group"]
    ).all()
    # A column that does not nest the labels is refused, naming it.
    code, _, err = call(capsys, "train", files.ref, "--labels", "cell_type", "--layer", "counts",
                        "--hierarchy", "batch", "--out", tmp_path / "bad.h5")  # fmt: skip
    assert code == 1 and "obs['batch']" in error_line(err)


def test_annotate_gene_map_and_only_labels(files, main_model, capsys, tmp_path):
    model, _ = main_model
    query = files.query_adata.copy()
    original = list(query.var_names)
    query.var_names = [f"m_{g}" for g in original]
    path, genes = tmp_path / "renamed.h5ad", tmp_path / "map.csv"
    query.write_h5ad(path)
    pd.DataFrame({"mouse": query.var_names, "human": original}).to_csv(genes, index=False)
    table = tmp_path / "p.csv"
    code, _, err = call(capsys, "annotate", path, "--model", model, "--layer", "counts",
                        "--gene-map", genes, "--only-labels", "type_0", "type_1",
                        "--table", table)  # fmt: skip
    assert code == 0, err
    preds = pd.read_csv(table, index_col=0)
    expected = gs.tl.classify(files.query_adata, load_model(model), layer="counts",
                              labels=["type_0", "type_1"], return_table=True)  # fmt: skip
    assert list(preds["ginseng_cell_type"]) == list(expected["ginseng_cell_type"].astype(str))
    assert {"type_0", "type_1"} <= set(preds.columns) and "type_2" not in preds.columns
    code, _, err = call(capsys, "annotate", path, "--model", model, "--gene-map",
                        tmp_path / "none.csv", "--table", table)  # fmt: skip
    assert code == 1 and "none.csv" in error_line(err)


def test_seed_gives_identical_models(files, main_model, quiet):
    # The same seed in-process reproduces the subprocess's model bit for bit, and the
    # model records that seed (the default is 0).
    model, _ = main_model
    twin = load_model(_train(files, "twin", "--epochs", "2", "--seed", "3"))
    state = load_model(model)
    assert state.settings.seed == twin.settings.seed == 3
    assert same_params(state, twin)


def _log_normalised_mean(matrix) -> np.ndarray:
    """Per-gene mean of log1p(counts normalised to 10,000 per cell), as the model computes."""
    x = np.asarray(matrix.toarray(), np.float64)
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4).mean(axis=0)


def test_train_layer_reads_the_counts(files, main_model, capsys):
    # The model's standardisation means (from its 360 training cells) match the counts
    # layer's log-normalised means on all 400 cells, not those of the values in X.
    gene_mean = load_model(main_model[0]).params["gene_mean"]
    from_counts = _log_normalised_mean(files.ref_adata.layers["counts"])
    from_x = _log_normalised_mean(files.ref_adata.X)
    error = np.abs(gene_mean - from_counts).max()
    assert error < 0.05 and np.abs(gene_mean - from_x).max() > 10 * error
    code, _, err = call(capsys, "train", files.ref, "--labels", "cell_type", "--layer", "raw")
    assert code == 1
    assert error_line(err) == (
        "ginseng: error: Layer 'raw' not found in adata.layers (available: 'counts')."
    )


def test_genes_from_a_file(files, quiet, capsys, tmp_path):
    state = load_model(_train(files, "genes_file", "--genes", str(files.genes_file)))
    assert state.settings.seed == 0  # --seed's default
    # Exactly the file's genes, in the reference's column order.
    var_names = list(files.ref_adata.var_names)
    assert sorted(state.genes) == sorted(files.file_genes)
    assert list(state.genes) == sorted(files.file_genes, key=var_names.index)
    bad = tmp_path / "bad.txt"
    bad.write_text("gene1\nno_such_gene\n")
    code, _, err = call(capsys, "train", files.ref, "--labels", "cell_type", "--layer", "counts",
                        "--genes", bad)  # fmt: skip
    assert code == 1
    assert "1 of 2 requested genes are not in adata.var_names" in error_line(err)
    assert "no_such_gene" in error_line(err)
    code, _, err = call(capsys, "train", files.ref, "--labels", "cell_type", "--genes", "nothing")
    assert code == 1
    assert error_line(err) == (
        "ginseng: error: --genes 'nothing' is neither a column of var (use) nor a file of "
        "gene names."
    )


def test_genes_column_and_group_holdout(files, quiet):
    state = load_model(_train(files, "use_group", "--genes", "use", "--group", "batch"))
    ref = files.ref_adata
    assert list(state.genes) == list(ref.var_names[ref.var["use"]])
    # --group holds out whole batches: the holdout is one or more complete batches
    # (a batch has ~100 of the 400 cells), not the 10 % of cells of a stratified split.
    assert state.settings.group_level is True
    sizes = ref.obs["batch"].value_counts().to_numpy()
    subset_sums = {
        int(sizes[[bool(m >> i & 1) for i in range(sizes.size)]].sum())
        for m in range(1, 2**sizes.size - 1)
    }
    n_holdout = int(state.metrics["n_cells"])
    assert n_holdout == state.provenance["n_holdout"]
    assert n_holdout in subset_sums and n_holdout > 60
    assert f"holdout ({n_holdout} cells" in str(state)


def test_group_must_be_a_column(files, capsys):
    code, _, err = call(capsys, "train", files.ref, "--labels", "cell_type", "--layer", "counts",
                        "--group", "donor")  # fmt: skip
    assert code == 1
    assert error_line(err) == (
        "ginseng: error: group_key='donor' is not a column of adata.obs "
        "(columns: ['cell_type', 'batch'])."
    )


def test_n_top_genes_selects_scanpy_hvgs(files, quiet, capsys):
    sc = pytest.importorskip("scanpy")
    state = load_model(_train(files, "hvg", "--n-top-genes", "20"))
    ref = files.ref_adata.copy()
    expected = sc.pp.highly_variable_genes(
        ref, flavor="seurat_v3", n_top_genes=20, layer="counts", inplace=False
    )
    assert list(state.genes) == list(ref.var_names[expected["highly_variable"].to_numpy()])
    code, _, err = call(capsys, "train", files.ref, "--labels", "cell_type", "--n-top-genes", "51")
    assert code == 1
    assert error_line(err) == (
        "ginseng: error: n_top_genes=51 must be between 1 and the number of genes (50)."
    )


def test_n_top_genes_among_the_query_genes(files, quiet):
    """--query with --n-top-genes: the N most variable of the reference genes the query has."""
    state = load_model(
        _train(files, "hvgq", "--n-top-genes", "10", "--query", str(files.query_partial))
    )
    partial = ad.read_h5ad(files.query_partial)
    ref = files.ref_adata
    shared = ref[:, ref.var_names.isin(partial.var_names)].copy()
    table = gs.pp.select_hvgs(shared, n_top_genes=10, layer="counts", inplace=False)
    expected = shared.var_names[table["selected"].to_numpy()]
    assert state.n_genes == 10 and set(state.genes) == set(expected)
    assert set(state.genes) <= set(partial.var_names)


# --- annotate ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_table(files, main_model) -> pd.DataFrame:
    """The main model's predictions for the held-out query, through the Python API."""
    return gs.tl.classify(files.query_adata.copy(), main_model[0], layer="counts",
                          return_table=True)  # fmt: skip


def annotate_table(capsys, files, model, query=None, *options) -> pd.DataFrame:
    table = files.root / "table.csv"
    table.unlink(missing_ok=True)
    code, _, err = call(capsys, "annotate", query or files.query, "--model", model,
                          "--layer", "counts", "--table", table, *options)  # fmt: skip
    assert code == 0, err
    return pd.read_csv(table, index_col=0)


def test_novelty_and_prediction_sets(files, main_model, capsys):
    """--novelty-threshold and --prediction-sets give the Python API's columns."""
    model = main_model[0]
    preds = annotate_table(
        capsys, files, model, None, "--novelty-threshold", "0.9", "--prediction-sets", "0.1"
    )
    query = ad.read_h5ad(files.query)
    expected = gs.tl.classify(
        query, model, layer="counts", novelty_threshold=0.9, prediction_sets=0.1,
        return_table=True,
    )  # fmt: skip
    for column in ("ginseng_cell_type", "ginseng_prediction_set", "ginseng_prediction_set_size"):
        assert list(preds[column].fillna("").astype(str)) == list(
            expected[column].astype(str).replace("nan", "")
        ), column
    np.testing.assert_allclose(preds["ginseng_novelty"], expected["ginseng_novelty"], rtol=1e-5)
    assert (preds["ginseng_prediction_set_size"] > 0).any()
    assert (preds["ginseng_cell_type"] == "Novel").any()  # the threshold reached the CLI


def test_annotate_with_only_table(files, main_model, reference_table, capsys, tmp_path):
    before = files.query.read_bytes()
    table = tmp_path / "predictions.csv"
    code, out, _ = call(capsys, "annotate", files.query, "--model", main_model[0],
                        "--layer", "counts", "--table", table)  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]
    assert files.query.read_bytes() == before
    preds = pd.read_csv(table, index_col=0)
    assert list(preds.columns) == list(reference_table.columns)
    assert list(preds["ginseng_cell_type"]) == list(reference_table["ginseng_cell_type"])
    np.testing.assert_allclose(preds.iloc[:, 1:], reference_table.iloc[:, 1:], rtol=1e-5, atol=1e-7)
    assert f"predictions for {files.query_adata.n_obs} cells written to {table}" in out
    assert "annotated data written" not in out
    assert printed_counts(out) == expected_counts(reference_table)


def test_annotate_with_only_out(files, main_model, reference_table, capsys, tmp_path):
    out_path = tmp_path / "annotated.h5ad"
    code, out, _ = call(capsys, "annotate", files.query, "--model", main_model[0],
                        "--layer", "counts", "--out", out_path)  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.h5ad"]
    assert f"annotated data written to {out_path}" in out and "predictions for" not in out
    annotated = ad.read_h5ad(out_path)
    assert list(annotated.obs["ginseng_cell_type"].astype(str)) == list(
        reference_table["ginseng_cell_type"]
    )
    labels = annotated.uns["ginseng"]["classify"]["labels"]
    np.testing.assert_allclose(
        annotated.obsm["ginseng_probabilities"], reference_table[labels].to_numpy(), rtol=1e-6
    )
    assert annotated.uns["ginseng"]["classify"]["params"]["layer"] == "counts"
    assert printed_counts(out) == expected_counts(reference_table)


def test_annotate_layer(files, main_model, capsys):
    code, _, err = call(capsys, "annotate", files.query, "--model", main_model[0],
                        "--table", files.root / "x.csv")  # fmt: skip
    assert code == 1 and not (files.root / "x.csv").exists()
    assert error_line(err).startswith("ginseng: error: adata.X does not hold raw counts")
    assert 'Use layer="counts"' in err


def test_majority_vote(files, main_model, reference_table, capsys):
    preds = annotate_table(capsys, files, main_model[0], None, "--majority-vote", "cluster")
    clusters = files.query_adata.obs["cluster"].astype(str).to_numpy()
    # Each cluster gets its most frequent prediction (7 in 8 of its cells are one type).
    predicted = reference_table["ginseng_cell_type"].astype(str)
    modes = predicted.groupby(clusters).agg(lambda s: s.value_counts().idxmax())
    assert list(preds["ginseng_majority_vote"]) == list(modes[clusters])
    assert list(preds["ginseng_cell_type"]) == list(predicted)
    assert (preds["ginseng_majority_vote"] != predicted).sum() >= 10  # the vote overrules
    code, _, err = call(capsys, "annotate", files.query, "--model", main_model[0], "--layer",
                        "counts", "--table", files.root / "t.csv", "--majority-vote", "leiden")  # fmt: skip
    assert code == 1
    assert error_line(err).startswith(
        "ginseng: error: majority_vote_key='leiden' is not a column of adata.obs"
    )


def test_gene_key(files, main_model, reference_table, capsys):
    # var_names are ids unknown to the model: the names come from the column given.
    by_symbol = annotate_table(capsys, files, main_model[0], files.query_ids,
                               "--gene-key", "symbol")  # fmt: skip
    assert list(by_symbol["ginseng_cell_type"]) == list(reference_table["ginseng_cell_type"])
    np.testing.assert_allclose(
        by_symbol.iloc[:, 1:], reference_table.iloc[:, 1:], rtol=1e-5, atol=1e-7
    )
    # The decoy column also names every model gene, but each at the wrong column: the
    # predictions are then read from the wrong genes.
    by_decoy = annotate_table(capsys, files, main_model[0], files.query_ids,
                              "--gene-key", "decoy")  # fmt: skip
    truth = files.query_adata.obs["cell_type"]
    assert (
        accuracy(by_decoy["ginseng_cell_type"], truth)
        < 0.7
        <= accuracy(by_symbol["ginseng_cell_type"], truth)
    )
    code, _, err = call(capsys, "annotate", files.query_ids, "--model", main_model[0],
                        "--layer", "counts", "--table", files.root / "t.csv",
                        "--gene-key", "gene_symbols")  # fmt: skip
    assert code == 1 and "'gene_symbols'" in error_line(err)


def test_min_gene_overlap(files, main_model, reference_table, capsys, tmp_path):
    model = main_model[0]
    table = tmp_path / "t.csv"
    # 20 of the model's 50 genes: refused at the default 0.5 ...
    code, _, err = call(capsys, "annotate", files.query_partial, "--model", model,
                        "--layer", "counts", "--table", table)  # fmt: skip
    assert code == 1 and not table.exists()
    line = error_line(err)
    assert line.startswith(
        "ginseng: error: Only 20 of the model's 50 genes (40.0%) were found in the query"
    )
    assert "at least 50% are required" in line
    code, _, err = call(capsys, "annotate", files.query_partial, "--model", model,
                        "--layer", "counts", "--table", table, "--min-gene-overlap", "0.45")  # fmt: skip
    assert code == 1 and "at least 45% are required" in error_line(err)
    # ... accepted at 0.4: the same table as the Python API on that file, where the 30
    # missing genes are read as unknown (not as zero counts, which differs).
    preds = annotate_table(capsys, files, model, files.query_partial, "--min-gene-overlap", "0.4")
    partial = ad.read_h5ad(files.query_partial)
    expected = gs.tl.classify(
        partial, model, layer="counts", min_gene_overlap=0.4, return_table=True
    )
    assert list(preds["ginseng_cell_type"]) == list(expected["ginseng_cell_type"])
    np.testing.assert_allclose(preds.iloc[:, 1:], expected.iloc[:, 1:], rtol=1e-5, atol=1e-7)
    zeroed = files.query_adata.copy()
    missing = ~zeroed.var_names.isin(files.kept_genes)
    counts = zeroed.layers["counts"].toarray()
    counts[:, missing] = 0
    zeroed.layers["counts"] = sp.csr_matrix(counts)
    zero_filled = gs.tl.classify(zeroed, model, layer="counts", return_table=True)
    # Compared in log space: the toy types are so distinct that both are ~0 or ~1.
    log_preds = np.log(preds.iloc[:, 2:].to_numpy() + 1e-45)
    log_zero = np.log(zero_filled.iloc[:, 2:].to_numpy() + 1e-45)
    assert not np.allclose(log_preds, log_zero, atol=1.0)
    code, _, err = call(capsys, "annotate", files.query, "--model", model, "--layer", "counts",
                        "--table", table, "--min-gene-overlap", "1.5")  # fmt: skip
    assert code == 1
    assert (
        error_line(err) == "ginseng: error: min_gene_overlap must be a number in [0, 1], got 1.5."
    )


def test_batch_size(files, main_model, reference_table, capsys, tmp_path):
    out = tmp_path / "a.h5ad"
    preds = annotate_table(capsys, files, main_model[0], None, "--batch-size", "7",
                           "--out", out)  # fmt: skip
    assert ad.read_h5ad(out).uns["ginseng"]["classify"]["params"]["batch_size"] == 7
    assert list(preds["ginseng_cell_type"]) == list(reference_table["ginseng_cell_type"])
    np.testing.assert_allclose(preds.iloc[:, 1:], reference_table.iloc[:, 1:], rtol=1e-5, atol=1e-7)
    code, _, err = call(capsys, "annotate", files.query, "--model", main_model[0],
                        "--layer", "counts", "--table", tmp_path / "t.csv", "--batch-size", "0")  # fmt: skip
    assert code == 1 and not (tmp_path / "t.csv").exists()
    assert error_line(err) == "ginseng: error: batch_size must be a positive integer, got 0."


# --- errors --------------------------------------------------------------------------------


def test_debug_shows_the_traceback(files, main_model, capsys):
    args = ("annotate", str(files.query_partial), "--model", str(main_model[0]),
            "--layer", "counts", "--table", str(files.root / "t.csv"))  # fmt: skip
    plain = run(*args)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ginseng: error: Only 20 of the model's 50 genes")
    debug = run("--debug", *args)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert error_line(debug.stderr).startswith(
        "ginseng._errors.GeneMismatchError: Only 20 of the model's 50 genes"
    )
    # In-process, --debug lets the exception itself through.
    with pytest.raises(gs.GeneMismatchError, match="Only 20 of the model's 50 genes"):
        main(["--debug", *args])


def test_usage_errors_exit_2(files, capsys):
    for args, message in [
        ((), "ginseng: error: the following arguments are required: command"),
        (("no-such-command",), "ginseng: error: argument command: invalid choice: 'no-such-command'"),
        (("demo", "--n-genes", "many"), "ginseng demo: error: argument --n-genes: invalid int value: 'many'"),
        (("train", files.ref), "ginseng train: error: the following arguments are required: --labels"),
        (("annotate", files.ref, "--model", "m.h5"), "ginseng: error: annotate: give --out annotated.h5ad and/or --table predictions.csv"),
        (("annotate", files.ref, "--model", "m.h5", "--table", "t.csv", "--batch-size", "1.5"), "ginseng annotate: error: argument --batch-size: invalid int value: '1.5'"),
    ]:  # fmt: skip
        code, out, err = call(capsys, *args)
        assert code == 2, args
        assert error_line(err).startswith(message), (args, err)
        assert err.startswith("usage: ginseng") and out == "", args
    # The same through the console script.
    result = run("annotate", str(files.ref), "--model", "m.h5")
    assert result.returncode == 2
    assert error_line(result.stderr) == (
        "ginseng: error: annotate: give --out annotated.h5ad and/or --table predictions.csv"
    )


def test_errors_exit_1_with_one_line(tmp_path, files, main_model, capsys):
    model = main_model[0]
    missing = tmp_path / "missing.h5ad"
    for args, message in [
        (("train", files.ref, "--labels", "no_such_column"),
         "label_key='no_such_column' is not a column of adata.obs (columns: ['cell_type', 'batch'])."),
        (("info", files.ref),
         f"{str(files.ref)!r} is an HDF5 file but not a ginseng model (format attribute None, "
         "expected 'ginseng-model')."),
        (("info", tmp_path / "nothing.h5"), f"No model file at {str(tmp_path / 'nothing.h5')!r}."),
        (("annotate", missing, "--model", model, "--table", tmp_path / "p.csv"),
         f"{missing} does not exist."),
        (("annotate", files.query, "--model", tmp_path / "nothing.h5", "--table", tmp_path / "p.csv"),
         f"No model file at {str(tmp_path / 'nothing.h5')!r}."),
    ]:  # fmt: skip
        code, _, err = call(capsys, *args)
        assert code == 1, args
        assert err.strip().splitlines() == [f"ginseng: error: {message}"], (args, err)
    assert not (tmp_path / "p.csv").exists()
    # Output paths in missing directories are refused before any training or annotating.
    nowhere = tmp_path / "no" / "dir"
    for args, option in [
        (("train", files.ref, "--labels", "cell_type", "--out", nowhere / "m.h5"), "--out"),
        (("annotate", files.query, "--model", model, "--table", nowhere / "p.csv"), "--table"),
        (("annotate", files.query, "--model", model, "--layer", "counts",
          "--table", tmp_path / "p.csv", "--out", nowhere / "a.h5ad"), "--out"),
    ]:  # fmt: skip
        code, out, err = call(capsys, *args)
        assert code == 1 and out == "", args
        assert error_line(err) == (
            f"ginseng: error: {option} {str(args[-1])!r}: directory {str(nowhere)!r} does not "
            "exist."
        )
    assert not (tmp_path / "p.csv").exists()
    # The console script's own exit code and stderr, for one of them.
    result = run("demo", "--out", str(tmp_path), "--n-genes", "100000")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert error_line(result.stderr) == (
        "ginseng: error: n_top_genes=100000 must be between 1 and the number of genes (765)."
    )
