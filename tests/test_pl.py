"""Plots draw real figures (Agg) whose data match independently computed values."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import ginseng as gs
from ginseng.model.state import GinsengModelState

TRUE = ["A", "B", "C", "D"]  # D is unknown to the "model"
MODEL = ["A", "B", "C", "E"]  # E never occurs in the truth


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def labelled(n=300, seed=0, threshold=0.4) -> ad.AnnData:
    """Cells with true labels and classify-style predictions, confidence and uns record."""
    rng = np.random.default_rng(seed)
    true = rng.choice(TRUE, n, p=[0.4, 0.3, 0.2, 0.1])
    pred = np.where(rng.random(n) < 0.7, true, rng.choice(MODEL, n)).astype(object)
    pred[pred == "D"] = "E"
    conf = rng.beta(5, 2, n).astype(np.float32)
    pred[conf < threshold] = "Unassigned"
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(true, categories=TRUE),
            "ginseng_cell_type": pd.Categorical(pred, categories=[*MODEL, "Unassigned"]),
            "ginseng_confidence": conf,
        },
        index=[f"c{i}" for i in range(n)],
    )
    adata = ad.AnnData(np.zeros((n, 2), np.float32), obs=obs)
    adata.uns["ginseng"] = {
        "classify": {"params": {"unassigned_threshold": threshold}, "labels": MODEL}
    }
    adata.uns["ginseng_cell_type_colors"] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#d3d3d3"]
    return adata


def expected_confusion(true, pred, rows, cols, normalize):
    from sklearn.metrics import confusion_matrix

    labels = sorted(set(rows) | set(cols))
    full = pd.DataFrame(
        confusion_matrix(np.asarray(true, str), np.asarray(pred, str), labels=labels),
        index=labels,
        columns=labels,
    )
    counts = full.loc[rows, cols].to_numpy().astype(float)
    if normalize == "true":
        return counts / counts.sum(axis=1, keepdims=True)
    if normalize == "pred":
        total = counts.sum(axis=0, keepdims=True)
        return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    if normalize == "all":
        return counts / counts.sum()
    return counts


def tick_texts(ticks) -> list[str]:
    return [t.get_text() for t in ticks]


@pytest.mark.parametrize("normalize", ["true", "pred", "all", None])
def test_confusion_matrix_values_and_labels(normalize):
    pytest.importorskip("sklearn")
    adata = labelled()
    ax = gs.pl.confusion(adata, "cell_type", normalize=normalize, show=False)
    rows, cols = tick_texts(ax.get_yticklabels()), tick_texts(ax.get_xticklabels())
    # Shared labels on the diagonal first; D (unknown to the model) last among rows;
    # E (never true) then Unassigned last among columns.
    assert rows == ["A", "B", "C", "D"]
    assert cols == ["A", "B", "C", "E", "Unassigned"]
    want = expected_confusion(adata.obs["cell_type"], adata.obs["ginseng_cell_type"], rows, cols, normalize)  # fmt: skip
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), want, rtol=1e-12)
    assert "cell_type" in ax.get_ylabel() and "ginseng_cell_type" in ax.get_xlabel()
    assert ax.images[0].colorbar is not None
    assert len(ax.texts) == len(rows) * len(cols)  # small matrix: annotated by default


def test_confusion_true_label_never_predicted_keeps_its_column():
    adata = labelled()
    # The model could output C, but no cell is predicted C: its column stays, all zeros.
    pred = adata.obs["ginseng_cell_type"].copy()
    pred[pred == "C"] = "A"
    adata.obs["ginseng_cell_type"] = pred
    ax = gs.pl.confusion(adata, "cell_type", normalize=None, annotate=False, show=False)
    cols = tick_texts(ax.get_xticklabels())
    assert cols[:3] == ["A", "B", "C"]
    assert np.asarray(ax.images[0].get_array())[:, 2].sum() == 0
    assert len(ax.texts) == 0


def test_confusion_plain_string_columns_and_missing_labels(caplog):
    adata = labelled()
    adata.obs["truth"] = adata.obs["cell_type"].astype(str).astype(object)
    adata.obs.iloc[:5, adata.obs.columns.get_loc("truth")] = np.nan
    adata.obs["pred"] = adata.obs["ginseng_cell_type"].astype(str).astype(object)
    ax = gs.pl.confusion(adata, "truth", "pred", normalize=None, show=False)
    assert np.asarray(ax.images[0].get_array()).sum() == adata.n_obs - 5
    assert "5 cell(s) without a label" in caplog.text


def test_confusion_errors():
    adata = labelled()
    with pytest.raises(gs.InputError, match="'rows'"):
        gs.pl.confusion(adata, "cell_type", normalize="rows", show=False)
    with pytest.raises(gs.InputError, match="'celltype'"):
        gs.pl.confusion(adata, "celltype", show=False)
    with pytest.raises(gs.InputError, match="'other_cell_type'"):
        gs.pl.confusion(adata, "cell_type", "other_cell_type", show=False)
    with pytest.raises(gs.InputError, match="true_key"):
        gs.pl.confusion(adata, show=False)
    with pytest.raises(gs.InputError, match="DataFrame"):
        gs.pl.confusion(adata.obs, "cell_type", show=False)


def test_confusion_of_a_model_holdout(toy_trained, tmp_path):
    from ginseng.data.io import save_model

    state = toy_trained.state
    counts = np.asarray(state.metrics["confusion"], float)
    ax = gs.pl.confusion(state, normalize="true", show=False)
    np.testing.assert_allclose(
        np.asarray(ax.images[0].get_array()), counts / counts.sum(axis=1, keepdims=True)
    )
    assert tick_texts(ax.get_xticklabels()) == list(state.labels)
    assert f"{int(counts.sum())} cells" in ax.get_title()
    path = save_model(state, tmp_path / "model.h5")
    ax = gs.pl.confusion(path, normalize=None, show=False)
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), counts)
    bare = GinsengModelState(params={}, config={}, genes=["g"], labels=["x", "y"])
    with pytest.raises(gs.InputError, match="confusion matrix"):
        gs.pl.confusion(bare, show=False)


def classified(toy_trained, threshold=0.9, key_added="ginseng") -> ad.AnnData:
    """The toy data with probabilities from the trained model, written as classify does."""
    state = toy_trained.state
    adata = toy_trained.adata.copy()
    proba = state.predict_proba(adata[:, state.genes].X)
    conf = proba.max(axis=1)
    pred = state.labels[proba.argmax(axis=1)].astype(object)
    pred[conf < threshold] = "Unassigned"
    adata.obs[f"{key_added}_cell_type"] = pd.Categorical(
        pred, categories=[*state.labels, "Unassigned"]
    )
    adata.obs[f"{key_added}_confidence"] = conf
    adata.obsm[f"{key_added}_probabilities"] = proba
    adata.uns[key_added] = {
        "classify": {
            "params": {"unassigned_threshold": threshold},
            "labels": list(state.labels),
        }
    }
    adata.uns[f"{key_added}_cell_type_colors"] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#d3d3d3"]  # fmt: skip
    return adata


def test_confidence_per_label():
    adata = labelled(threshold=0.5)
    before_obs, before_uns = adata.obs.copy(), json.dumps(adata.uns, default=str)
    ax = gs.pl.confidence(adata, show=False)
    groups = adata.obs["ginseng_cell_type"]
    present = [c for c in groups.cat.categories if (groups == c).any()]
    ticks = tick_texts(ax.get_xticklabels())
    assert [t.rsplit(" (n=", 1)[0] for t in ticks] == present
    counts = [int((groups == c).sum()) for c in present]
    assert ticks == [f"{c} (n={n})" for c, n in zip(present, counts, strict=True)]
    medians = [np.median(adata.obs["ginseng_confidence"][groups == c]) for c in present]
    dots = ax.collections[-1].get_offsets()
    np.testing.assert_allclose(dots[:, 0], np.arange(len(present)))
    np.testing.assert_allclose(dots[:, 1], medians, rtol=1e-6)
    threshold_lines = [line for line in ax.lines if list(line.get_ydata()) == [0.5, 0.5]]
    assert len(threshold_lines) == 1
    assert "0.5" in ax.get_legend().get_texts()[0].get_text()
    assert ax.get_ylabel() == "calibrated confidence"
    # Plotting never writes into the AnnData.
    pd.testing.assert_frame_equal(adata.obs, before_obs)
    assert json.dumps(adata.uns, default=str) == before_uns


def test_confidence_on_model_predictions_after_h5ad_round_trip(toy_trained, tmp_path):
    adata = classified(toy_trained, threshold=0.9, key_added="pred")
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    ax = gs.pl.confidence(back, key_added="pred", groupby="cell_type", show=False)
    assert [t.get_text().split(" ")[0] for t in ax.get_xticklabels()] == list(
        back.obs["cell_type"].cat.categories
    )
    assert ax.get_xlabel() == "cell_type"
    assert any(list(line.get_ydata()) == [0.9, 0.9] for line in ax.lines)


def test_confidence_without_threshold_and_errors():
    adata = labelled()
    del adata.uns["ginseng"]
    ax = gs.pl.confidence(adata, show=False)
    assert not ax.lines and ax.get_legend() is None
    with pytest.raises(gs.InputError, match="'x_cell_type'"):
        gs.pl.confidence(adata, key_added="x", show=False)
    with pytest.raises(gs.InputError, match="'leiden'"):
        gs.pl.confidence(adata, groupby="leiden", show=False)
    del adata.obs["ginseng_confidence"]
    with pytest.raises(gs.InputError, match="'ginseng_confidence'"):
        gs.pl.confidence(adata, show=False)


def test_history_curves_match_the_record(toy_trained, tmp_path):
    from ginseng.data.io import save_model

    state = toy_trained.state
    axes = gs.pl.history(state, show=False)
    assert len(axes) == 2 and axes[0] is not axes[1]
    lines = {line.get_label(): line for a in axes for line in a.lines}
    for key, label in [
        ("train_loss", "train loss"),
        ("holdout_loss", "holdout loss"),
        ("holdout_accuracy", "holdout accuracy"),
        ("holdout_macro_f1", "holdout macro-F1"),
    ]:
        np.testing.assert_allclose(lines[label].get_ydata(), state.history[key])
        np.testing.assert_allclose(lines[label].get_xdata(), state.history["epoch"])
    best = state.metrics["best_epoch"]
    assert list(lines[f"best epoch ({best})"].get_xdata()) == [best, best]
    assert axes[0].get_xlabel() == "epoch"
    # From a file, into one Axes: the metrics go on a twin y-axis.
    fig, ax = plt.subplots()
    path = save_model(state, tmp_path / "model.h5")
    loss_ax, metric_ax = gs.pl.history(path, ax=ax, show=False)
    assert loss_ax is ax and metric_ax.figure is fig and metric_ax is not ax
    np.testing.assert_allclose(metric_ax.lines[0].get_ydata(), state.history["holdout_accuracy"])
    fig, pair = plt.subplots(1, 2)
    assert gs.pl.history(state, ax=pair, show=False) == list(pair)


def test_history_errors(tmp_path):
    bare = GinsengModelState(params={}, config={}, genes=["g"], labels=["x"])
    with pytest.raises(gs.InputError, match="no training history"):
        gs.pl.history(bare, show=False)
    with pytest.raises(gs.ModelFormatError, match=r"nothing\.h5"):
        gs.pl.history(tmp_path / "nothing.h5", show=False)
    with pytest.raises(gs.InputError, match="GinsengModelState"):
        gs.pl.history(42, show=False)


def test_history_rejects_a_bad_ax(toy_trained):
    with pytest.raises(gs.InputError, match="ax="):
        gs.pl.history(toy_trained.state, ax="left", show=False)


def test_save_writes_png_for_every_plot(toy_trained, tmp_path):
    adata = labelled()
    for name, draw in [
        ("confusion", lambda p: gs.pl.confusion(adata, "cell_type", show=False, save=p)),
        ("confidence", lambda p: gs.pl.confidence(adata, show=False, save=p)),
        ("history", lambda p: gs.pl.history(toy_trained.state, show=False, save=p)),
    ]:
        path = tmp_path / f"{name}.png"
        draw(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(gs.InputError, match="no such directory"):
        gs.pl.confusion(adata, "cell_type", show=False, save=tmp_path / "no" / "x.png")
    with pytest.raises(gs.InputError, match="file path"):
        gs.pl.confusion(adata, "cell_type", show=False, save=True)


def test_drawing_into_given_axes_uses_that_figure():
    adata = labelled()
    _fig, (left, right) = plt.subplots(1, 2)
    assert gs.pl.confusion(adata, "cell_type", ax=left) is left
    assert gs.pl.confidence(adata, ax=right) is right
    assert len(plt.get_fignums()) == 1


def test_import_does_not_load_matplotlib():
    code = "import sys, json, ginseng as gs; gs.pl; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "matplotlib" not in json.loads(out.stdout)
