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


def labelled(n=300, seed=0) -> ad.AnnData:
    """Cells with a truth and a prediction column, for the layout rules of the confusion
    matrix (any two obs columns); the real classify -> plot hand-off is tested below."""
    rng = np.random.default_rng(seed)
    true = rng.choice(TRUE, n, p=[0.4, 0.3, 0.2, 0.1])
    pred = np.where(rng.random(n) < 0.7, true, rng.choice(MODEL, n)).astype(object)
    pred[pred == "D"] = "E"
    pred[rng.random(n) < 0.15] = "Unassigned"
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(true, categories=TRUE),
            "ginseng_cell_type": pd.Categorical(pred, categories=[*MODEL, "Unassigned"]),
        },
        index=[f"c{i}" for i in range(n)],
    )
    return ad.AnnData(np.zeros((n, 2), np.float32), obs=obs)


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


# --- the real hand-off: gs.tl.classify's output, plotted ----------------------------------


@pytest.fixture
def pbmc(_doctest_data):
    """Held-out PBMCs (odd cells, raw counts in layers['counts'], truth in
    obs['bulk_labels']) and a small model trained on the even cells: the session's
    doctest model (root conftest.py), so the suite trains it once."""
    _adata, _reference, query, state = _doctest_data
    return query.copy(), state


def classified(pbmc, **options) -> ad.AnnData:
    query, state = pbmc
    assert gs.tl.classify(query, state, layer="counts", **options) is None
    return query


@pytest.mark.parametrize("normalize", ["true", None])
def test_confusion_of_classify_output(pbmc, normalize):
    pytest.importorskip("sklearn")
    query = classified(pbmc, unassigned_threshold=0.5, majority_vote_key="louvain", min_prop=0.6)
    truth, pred = query.obs["bulk_labels"], query.obs["ginseng_cell_type"]
    assert (pred == "Unassigned").any()  # the threshold leaves some cells unassigned
    ax = gs.pl.confusion(query, "bulk_labels", normalize=normalize, show=False)
    rows, cols = tick_texts(ax.get_yticklabels()), tick_texts(ax.get_xticklabels())
    # Every true label is also a model label (the plot reads the model's labels from
    # classify's record): all rows are shared, in the truth's order; columns are the
    # model's labels (also those never predicted), then Unassigned.
    present = [c for c in truth.cat.categories if (truth == c).any()]
    assert rows == present
    assert cols == [*present, "Unassigned"]
    assert set(query.uns["ginseng"]["classify"]["labels"]) == set(present)
    want = expected_confusion(truth, pred, rows, cols, normalize)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), want, rtol=1e-12)
    # The majority vote, with Heterogeneous clusters, through pred_key.
    votes = query.obs["ginseng_majority_vote"]
    ax = gs.pl.confusion(query, "bulk_labels", "ginseng_majority_vote", normalize=normalize,
                         show=False)  # fmt: skip
    rows, cols = tick_texts(ax.get_yticklabels()), tick_texts(ax.get_xticklabels())
    assert ax.get_xlabel() == "predicted (ginseng_majority_vote)"
    assert "Heterogeneous" in cols and set(cols) >= set(votes.astype(str))
    want = expected_confusion(truth, votes, rows, cols, normalize)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), want, rtol=1e-12)


def violin_colors(ax, n: int) -> dict[int, tuple]:
    """Face colour (RGB) of the violin drawn at each x position (group index)."""
    colors = {}
    for body in ax.collections[:-2]:  # the last two are the quartile bars and the medians
        x = body.get_paths()[0].vertices[:, 0].mean()
        i = round(x)
        assert abs(x - i) < 0.05 and 0 <= i < n
        colors[i] = tuple(body.get_facecolor()[0][:3])
    return colors


def test_confidence_of_classify_output(pbmc):
    from matplotlib.colors import to_rgb

    query = classified(pbmc, unassigned_threshold=0.5)
    before_obs, before_uns = query.obs.copy(), json.dumps(query.uns, default=str)
    ax = gs.pl.confidence(query, show=False)
    pred, conf = query.obs["ginseng_cell_type"], query.obs["ginseng_confidence"]
    present = [c for c in pred.cat.categories if (pred == c).any()]
    counts = [int((pred == c).sum()) for c in present]
    ticks = [f"{c} (n={n})" for c, n in zip(present, counts, strict=True)]
    assert tick_texts(ax.get_xticklabels()) == ticks
    # classify keeps only the labels some cell received as categories.
    assert "Unassigned" in present and present == list(pred.cat.categories)
    medians = [np.median(conf[pred == c]) for c in present]
    dots = ax.collections[-1].get_offsets()
    np.testing.assert_allclose(dots[:, 0], np.arange(len(present)))
    np.testing.assert_allclose(dots[:, 1], medians, rtol=1e-6)
    # The threshold classify recorded, drawn and named.
    threshold_lines = [line for line in ax.lines if list(line.get_ydata()) == [0.5, 0.5]]
    assert len(threshold_lines) == 1
    assert ax.get_legend().get_texts()[0].get_text() == "Unassigned below 0.5"
    # Each violin has the colour classify gave its label (Unassigned grey).
    palette = dict(zip(pred.cat.categories, query.uns["ginseng_cell_type_colors"], strict=True))
    drawn = violin_colors(ax, len(present))
    assert len(drawn) >= len(present) - 2  # labels of one cell get no violin
    for i, color in drawn.items():
        want = "lightgray" if present[i] == "Unassigned" else palette[present[i]]
        np.testing.assert_allclose(color, to_rgb(want), atol=1e-6)
    assert ax.get_ylabel() == "calibrated confidence"
    # Plotting never writes into the AnnData.
    pd.testing.assert_frame_equal(query.obs, before_obs)
    assert json.dumps(query.uns, default=str) == before_uns


def test_confidence_by_truth_after_h5ad_round_trip(pbmc, tmp_path):
    query = classified(pbmc, unassigned_threshold=0.4, key_added="pred")
    query.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    ax = gs.pl.confidence(back, key_added="pred", groupby="bulk_labels", show=False)
    truth = back.obs["bulk_labels"]
    present = [c for c in truth.cat.categories if (truth == c).any()]
    assert [t.get_text().rsplit(" (n=", 1)[0] for t in ax.get_xticklabels()] == present
    medians = [np.median(back.obs["pred_confidence"][truth == c]) for c in present]
    np.testing.assert_allclose(ax.collections[-1].get_offsets()[:, 1], medians, rtol=1e-6)
    assert ax.get_xlabel() == "bulk_labels"
    assert [list(line.get_ydata()) for line in ax.lines] == [[0.4, 0.4]]


def test_confidence_without_threshold_and_errors(pbmc):
    query = classified(pbmc)
    ax = gs.pl.confidence(query, show=False)
    assert not ax.lines and ax.get_legend() is None
    assert "Unassigned" not in " ".join(tick_texts(ax.get_xticklabels()))
    with pytest.raises(gs.InputError, match="'x_cell_type'"):
        gs.pl.confidence(query, key_added="x", show=False)
    with pytest.raises(gs.InputError, match="'leiden'"):
        gs.pl.confidence(query, groupby="leiden", show=False)
    del query.obs["ginseng_confidence"]
    with pytest.raises(gs.InputError, match="'ginseng_confidence'"):
        gs.pl.confidence(query, show=False)


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


def test_save_writes_png_for_every_plot(pbmc, tmp_path):
    query, state = classified(pbmc, unassigned_threshold=0.5), pbmc[1]
    for name, draw in [
        ("confusion", lambda p: gs.pl.confusion(query, "bulk_labels", show=False, save=p)),
        ("confidence", lambda p: gs.pl.confidence(query, show=False, save=p)),
        ("history", lambda p: gs.pl.history(state, show=False, save=p)),
    ]:
        path = tmp_path / f"{name}.png"
        draw(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(gs.InputError, match="no such directory"):
        gs.pl.confusion(query, "bulk_labels", show=False, save=tmp_path / "no" / "x.png")
    with pytest.raises(gs.InputError, match="file path"):
        gs.pl.confusion(query, "bulk_labels", show=False, save=True)


def test_drawing_into_given_axes_uses_that_figure(pbmc):
    query = classified(pbmc, unassigned_threshold=0.5)
    _fig, (left, right) = plt.subplots(1, 2)
    assert gs.pl.confusion(query, "bulk_labels", ax=left) is left
    assert gs.pl.confidence(query, ax=right) is right
    assert len(plt.get_fignums()) == 1


def test_confusion_cmap():
    from matplotlib import colormaps

    adata = labelled()
    assert gs.pl.confusion(adata, "cell_type", show=False).images[0].get_cmap().name == "Blues"
    for normalize, vmax in [("true", 1.0), (None, None)]:
        ax = gs.pl.confusion(adata, "cell_type", normalize=normalize, cmap="viridis", show=False)
        image = ax.images[0]
        values = np.asarray(image.get_array(), float)
        vmax = values.max() if vmax is None else vmax
        assert image.get_cmap().name == "viridis"
        # The pixels are viridis of the values scaled to [0, vmax].
        np.testing.assert_allclose(image.to_rgba(values), colormaps["viridis"](values / vmax))


def square_labels(n_true: int, n_pred: int) -> ad.AnnData:
    """Every true label predicted, plus ``n_pred - n_true`` extra predicted labels."""
    true = [f"L{i:02d}" for i in range(n_true)]
    extra = [f"X{i:02d}" for i in range(n_pred - n_true)]
    truth = np.resize(np.repeat(true, 4), max(4 * n_true, 4 * len(extra) + 4))
    pred = truth.copy().astype(object)
    pred[1::4] = np.roll(truth, 4)[1::4]  # one in four cells gets the next label
    for k, label in enumerate(extra):
        pred[4 * k + 2] = label
    obs = pd.DataFrame({"truth": truth, "pred": pred}, index=[f"c{i}" for i in range(truth.size)])
    return ad.AnnData(np.zeros((truth.size, 1), np.float32), obs=obs)


def test_confusion_annotation_cutoff():
    # The values are written in the cells when neither side has more than 20 labels.
    ax = gs.pl.confusion(square_labels(20, 20), "truth", "pred", normalize=None, show=False)
    values = np.asarray(ax.images[0].get_array())
    assert values.shape == (20, 20) and len(ax.texts) == 400
    for text in ax.texts:
        x, y = text.get_position()
        assert text.get_text() == str(int(values[round(y), round(x)]))
    for n_true, n_pred in [(21, 21), (20, 21), (3, 21)]:
        ax = gs.pl.confusion(square_labels(n_true, n_pred), "truth", "pred", show=False)
        assert max(np.asarray(ax.images[0].get_array()).shape) == 21
        assert len(ax.texts) == 0, (n_true, n_pred)
    # annotate=True overrides the cut-off.
    ax = gs.pl.confusion(square_labels(21, 21), "truth", "pred", annotate=True, show=False)
    assert len(ax.texts) == 21 * 21


@pytest.fixture
def shown(monkeypatch) -> list:
    """The figures passed to plt.show (recorded instead of shown)."""
    calls = []
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: calls.append(plt.gcf()))
    return calls


def draw_each(query, state, **kwargs) -> list:
    return [
        gs.pl.confusion(query, "bulk_labels", **kwargs),
        gs.pl.confidence(query, **kwargs),
        gs.pl.history(state, **kwargs),
    ]


def test_show_true_and_false(pbmc, shown):
    from matplotlib.axes import Axes

    query, state = classified(pbmc), pbmc[1]
    # show=True shows each figure and still returns the Axes (unlike scanpy's None).
    results = draw_each(query, state, show=True)
    assert len(shown) == 3
    assert isinstance(results[0], Axes) and isinstance(results[1], Axes)
    assert all(isinstance(a, Axes) for a in results[2])
    assert shown == [results[0].figure, results[1].figure, results[2][0].figure]
    # Also into Axes of one's own figure.
    _fig, ax = plt.subplots()
    assert gs.pl.confusion(query, "bulk_labels", ax=ax, show=True) is ax
    assert len(shown) == 4
    results = draw_each(query, state, show=False)
    assert len(shown) == 4 and isinstance(results[0], Axes)


@pytest.fixture
def autoshow():
    """scanpy's settings.autoshow, restored after the test."""
    sc = pytest.importorskip("scanpy")
    before = sc.settings.autoshow
    yield sc.settings
    sc.settings.autoshow = before


def test_show_none_follows_scanpy_autoshow(pbmc, shown, autoshow):
    query, state = classified(pbmc), pbmc[1]
    autoshow.autoshow = True
    results = draw_each(query, state)
    assert len(shown) == 3 and results[0] is not None
    # A figure the caller made is never shown by default.
    _fig, ax = plt.subplots()
    assert gs.pl.confidence(query, ax=ax) is ax
    assert len(shown) == 3
    autoshow.autoshow = False
    results = draw_each(query, state)
    assert len(shown) == 3 and results[1] is not None


def test_show_none_without_scanpy_shows_new_figures():
    code = """
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import anndata as ad
import numpy as np
import ginseng as gs
calls = []
plt.show = lambda *args, **kwargs: calls.append(1)
adata = ad.AnnData(np.zeros((4, 1)), obs={"t": list("abab"), "p": list("abba")})
ax = gs.pl.confusion(adata, "t", "p")
print("scanpy" in sys.modules, len(calls), type(ax).__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "1", "Axes"]


def test_import_does_not_load_matplotlib():
    code = "import sys, json, ginseng as gs; gs.pl; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "matplotlib" not in json.loads(out.stdout)
