"""GinsengDataset: round trips, splits, streaming and refusal of bad input."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import ginseng as gs
from ginseng import InputError, StoreError
from ginseng.data import GinsengDataset


@pytest.fixture(autouse=True)
def _quiet():
    gs.settings.progress_bar = False
    yield
    gs.settings.progress_bar = True


def make_counts(n_cells=1200, n_genes=40, n_types=4, seed=0, proportions=None):
    """Label-sorted counts whose column 0 is the cell's number, so every row is unique."""
    rng = np.random.default_rng(seed)
    p = proportions if proportions is not None else np.full(n_types, 1 / n_types)
    labels = np.sort(rng.choice(len(p), size=n_cells, p=p))
    means = rng.gamma(0.5, 2.0, size=(len(p), n_genes))
    X = rng.poisson(means[labels]).astype(np.float32)
    X[:, 0] = np.arange(n_cells)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type {i}" for i in labels]),
            "batch": pd.Categorical(rng.choice(["b1", "b2", "b3", "b4", "b5"], n_cells)),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"hvg": np.arange(n_genes) % 3 != 1}, index=[f"gene{j}" for j in range(n_genes)]
    )
    return ad.AnnData(sp.csr_matrix(X), obs=obs, var=var)


def read_all(ds: GinsengDataset, split="all"):
    """Every cell of a split in store order, via the public stream."""
    parts = list(ds.stream(batch_size=97, split=split, shuffle=False))
    return np.vstack([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def assert_same_counts(ds, source_dense, gene_idx=None):
    X, y = read_all(ds)
    expected = source_dense[ds.cell_index]
    if gene_idx is not None:
        expected = expected[:, gene_idx]
    np.testing.assert_array_equal(X, expected)
    return X, y


@pytest.mark.parametrize("storage", ["dense", "csr", "csc"])
def test_round_trip_in_memory(tmp_path, storage):
    adata = make_counts()
    dense = adata.X.toarray()
    adata.X = {"dense": dense, "csr": sp.csr_matrix(dense), "csc": sp.csc_matrix(dense)}[storage]
    before = adata.copy()
    ds = GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", chunk_size=250)
    _, y = assert_same_counts(ds, dense)
    # labels follow their cells through the shuffle
    names = ds.label_names[y]
    np.testing.assert_array_equal(names, adata.obs["cell_type"].to_numpy()[ds.cell_index])
    assert sorted(ds.cell_index) == list(range(adata.n_obs))
    assert ds.counts_dtype == np.uint16
    # the user's AnnData is untouched
    np.testing.assert_array_equal(
        np.asarray(adata.X.todense() if sp.issparse(adata.X) else adata.X), dense
    )
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    pd.testing.assert_frame_equal(adata.var, before.var)


def test_round_trip_backed_layer_and_gene_mask(tmp_path):
    adata = make_counts()
    counts = adata.X.toarray()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(counts))  # log data in X, as after scanpy preprocessing
    adata.write_h5ad(tmp_path / "in.h5ad")
    backed = ad.read_h5ad(tmp_path / "in.h5ad", backed="r")
    ds = GinsengDataset.create(
        tmp_path / "s.zarr", backed, "cell_type", layer="counts", genes="hvg", chunk_size=128
    )
    mask = adata.var["hvg"].to_numpy()
    assert_same_counts(ds, counts, np.flatnonzero(mask))
    np.testing.assert_array_equal(ds.gene_names, adata.var_names[mask])
    assert ds.attrs["layer"] == "counts"
    assert ds.attrs["source"].endswith("in.h5ad")


def test_round_trip_from_h5ad_path_backed_x(tmp_path):
    adata = make_counts(n_cells=300)
    adata.write_h5ad(tmp_path / "in.h5ad")
    ds = GinsengDataset.create(tmp_path / "s.zarr", tmp_path / "in.h5ad", "cell_type")
    assert_same_counts(ds, adata.X.toarray())


def _store_contents(ds: GinsengDataset) -> dict:
    X, y = read_all(ds)
    attrs = {k: v for k, v in ds.attrs.items() if k not in ("created", "source")}
    groups = ds.groups if ds.has_groups else None
    return {"X": X, "y": y, "cell_index": ds.cell_index, "groups": groups, "attrs": attrs}


@pytest.mark.parametrize("layout", ["csr X", "dense X, string labels", "csr layer, genes"])
def test_store_from_h5ad_path_equals_store_from_anndata(tmp_path, layout):
    """A path is read without anndata's obs (names), yet gives the very same store."""
    adata = make_counts(n_cells=700, seed=3)
    kwargs: dict = {"group_key": "batch", "chunk_size": 128, "seed": 5}
    if layout == "dense X, string labels":
        adata.X = adata.X.toarray()
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)  # not categorical
    elif layout == "csr layer, genes":
        adata.layers["counts"] = adata.X.copy()
        adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
        kwargs |= {"layer": "counts", "genes": "hvg"}
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    from_path = GinsengDataset.create(tmp_path / "a.zarr", path, "cell_type", **kwargs)
    in_memory = GinsengDataset.create(tmp_path / "b.zarr", adata, "cell_type", **kwargs)
    a, b = _store_contents(from_path), _store_contents(in_memory)
    for key in ("X", "y", "cell_index", "groups"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["attrs"] == b["attrs"]
    assert from_path.attrs["source"] == str(path)
    # and against the source itself: counts, labels and groups follow their cells
    counts = (adata.layers["counts"] if "layer" in kwargs else adata.X)[from_path.cell_index]
    gene_idx = np.flatnonzero(adata.var["hvg"]) if "genes" in kwargs else slice(None)
    counts = counts.toarray() if sp.issparse(counts) else counts
    np.testing.assert_array_equal(a["X"], counts[:, gene_idx])
    np.testing.assert_array_equal(
        from_path.label_names[a["y"]],
        adata.obs["cell_type"].astype(str).to_numpy()[from_path.cell_index],
    )
    np.testing.assert_array_equal(
        from_path.group_names[a["groups"]],
        adata.obs["batch"].astype(str).to_numpy()[from_path.cell_index],
    )


def test_h5ad_path_refusals_name_the_column(tmp_path):
    adata = make_counts(n_cells=60)
    labels = adata.obs["cell_type"].astype(object)
    labels.iloc[[3, 5]] = np.nan
    adata.obs["with_nan"] = labels
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(InputError, match=r"label_key='celltype'.*'cell_type', 'batch'"):
        GinsengDataset.create(tmp_path / "s.zarr", path, "celltype")
    with pytest.raises(InputError, match="group_key='donor'"):
        GinsengDataset.create(tmp_path / "s.zarr", path, "cell_type", group_key="donor")
    with pytest.raises(InputError, match=r"adata.obs\['with_nan'\] has 2 missing"):
        GinsengDataset.create(tmp_path / "s.zarr", path, "with_nan")
    with pytest.raises(InputError, match="Layer 'counts' not found"):
        GinsengDataset.create(tmp_path / "s.zarr", path, "cell_type", layer="counts")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]
    # the file is closed again: it can be opened for writing
    import h5py

    with h5py.File(path, "r+"):
        pass


def test_gene_list_is_stored_in_source_order(tmp_path):
    adata = make_counts(n_cells=200)
    ds = GinsengDataset.create(
        tmp_path / "s.zarr", adata, "cell_type", genes=["gene7", "gene2", "gene30"]
    )
    np.testing.assert_array_equal(ds.gene_names, ["gene2", "gene7", "gene30"])
    assert_same_counts(ds, adata.X.toarray(), [2, 7, 30])


def test_counts_dtype_follows_values(tmp_path):
    adata = make_counts(n_cells=100)
    adata.X = adata.X.multiply(1000).tocsr()  # column 0 reaches 99,000 > uint16
    assert GinsengDataset.create(tmp_path / "a.zarr", adata, "cell_type").counts_dtype == np.uint32
    adata.X = adata.X.multiply(0.5).tocsr()
    adata.X.data += 0.25  # non-integers stay float32, exactly
    ds = GinsengDataset.create(tmp_path / "b.zarr", adata, "cell_type")
    assert ds.counts_dtype == np.float32
    assert_same_counts(ds, adata.X.toarray())


def test_reopen_and_repr(tmp_path):
    adata = make_counts(n_cells=300)
    GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", group_key="batch")
    ds = GinsengDataset(tmp_path / "s.zarr")
    assert (ds.n_cells, ds.n_genes) == (300, 40)
    assert list(ds.label_names) == ["type 0", "type 1", "type 2", "type 3"]
    assert sorted(ds.group_names) == ["b1", "b2", "b3", "b4", "b5"]
    text = repr(ds)
    assert "300 cells x 40 genes" in text and "type 0" in text and "batch" in text


def test_label_stratified_split_persists(tmp_path):
    adata = make_counts(n_cells=2000, proportions=[0.6, 0.3, 0.09, 0.01])
    ds = GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type")
    realised = ds.make_split(fraction=0.2, seed=3)
    train, test = ds.splits["train"], ds.splits["test"]
    assert np.intersect1d(train, test).size == 0
    assert train.size + test.size == ds.n_cells
    assert realised == pytest.approx(test.size / ds.n_cells)
    for code in range(4):
        n = (ds.labels == code).sum()
        assert (ds.labels[test] == code).sum() == pytest.approx(0.2 * n, abs=1)
    again = GinsengDataset(tmp_path / "s.zarr")
    np.testing.assert_array_equal(again.splits["test"], test)
    assert again.split_info["seed"] == 3
    # a different seed gives a different split, the same seed the same one
    ds.make_split(fraction=0.2, seed=4)
    assert not np.array_equal(ds.splits["test"], test)
    ds.make_split(fraction=0.2, seed=3)
    np.testing.assert_array_equal(ds.splits["test"], test)


@pytest.mark.parametrize("mode", ["fraction", "groups"])
def test_group_split_keeps_groups_whole(tmp_path, mode):
    adata = make_counts(n_cells=2000)
    ds = GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", group_key="batch")
    realised = ds.make_split(fraction=0.2, stratify_group=True, group_mode=mode, seed=0)
    groups = ds.groups
    test_groups = set(groups[ds.splits["test"]])
    train_groups = set(groups[ds.splits["train"]])
    assert test_groups and train_groups and not test_groups & train_groups
    # five groups of ~20% each: one group is the closest to 20% in both modes
    assert len(test_groups) == 1
    assert realised == pytest.approx(0.2, abs=0.05)


def _closest_reachable(sizes, target):
    """Brute force: the smallest |total - target| over proper, non-empty sets of groups."""
    best = np.inf
    for mask in range(1, 2 ** len(sizes) - 1):  # neither empty nor every group
        total = sum(s for i, s in enumerate(sizes) if mask >> i & 1)
        best = min(best, abs(total - target))
    return best


def _grouped_store(path, sizes):
    adata = make_counts(n_cells=sum(sizes))
    adata.obs["batch"] = pd.Categorical(np.repeat([f"g{i}" for i in range(len(sizes))], sizes))
    return GinsengDataset.create(path, adata, "cell_type", group_key="batch")


@pytest.mark.parametrize(
    "sizes",
    [
        [500, 200, 150, 100, 50],  # 250 = 200 + 50 = 150 + 100; the greedy search misses it
        [97, 89, 83, 61, 53, 41, 29, 17],  # primes: few sums coincide
        [300, 7, 7, 7, 7, 7, 110, 120, 130],
        [60, 40],
    ],
)
def test_group_split_fraction_mode_gets_closest(tmp_path, sizes):
    ds = _grouped_store(tmp_path / "s.zarr", sizes)
    n = sum(sizes)
    for fraction in np.arange(0.05, 1.0, 0.1):
        best = _closest_reachable(sizes, fraction * n)
        for seed in range(2):
            realised = ds.make_split(fraction, stratify_group=True, seed=seed)
            test_groups = set(ds.groups[ds.splits["test"]])
            assert test_groups and not test_groups & set(ds.groups[ds.splits["train"]])
            n_test = ds.splits["test"].size
            assert realised == n_test / n
            # the documented promise: no other split into whole groups is closer
            assert abs(n_test - fraction * n) == pytest.approx(best), (fraction, seed)


def test_group_split_fraction_mode_is_exact_for_many_groups():
    """Hundreds of groups (too many to enumerate): checked against a numpy subset-sum table."""
    from ginseng.data._split import train_test

    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 400, 300) * 3 + rng.integers(0, 2, 300)  # mostly multiples of 3
    groups = np.repeat(np.arange(sizes.size), sizes)
    labels = np.zeros(groups.size, np.int32)
    reachable = np.zeros(sizes.sum() + 1, bool)
    reachable[0] = True
    for s in sizes:
        reachable[s:] |= reachable[:-s].copy()
    totals = np.flatnonzero(reachable)[1:-1]  # neither empty nor every group
    for fraction in (0.013, 0.1, 0.3337, 0.5, 0.9):
        target = fraction * groups.size
        _, test = train_test(
            labels, groups, fraction, stratify_group=True, group_mode="fraction", seed=1
        )
        assert abs(test.size - target) == pytest.approx(np.abs(totals - target).min())
        assert np.isin(groups, groups[test]).sum() == test.size  # whole groups


def test_stream_covers_each_cell_once(tmp_path):
    adata = make_counts(n_cells=1500)
    ds = GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", chunk_size=300)
    ds.make_split(fraction=0.1)
    for split in ["train", "test", "all"]:
        expected = np.sort(ds.cell_index[ds._rows(split)])
        batches = list(
            ds.stream(
                batch_size=64,
                split=split,
                shuffle=True,
                seed=1,
                drop_last=False,
                block_size=100,
                buffer_size=300,
            )
        )
        assert all(x.shape == (64, 40) for x, _ in batches[:-1])
        assert all(x.dtype == np.float32 and y.dtype == np.int32 for x, y in batches)
        seen = np.concatenate([x[:, 0] for x, _ in batches]).astype(int)
        np.testing.assert_array_equal(np.sort(seen), expected)
    dropped = list(ds.stream(batch_size=64, split="train", seed=1))
    assert all(x.shape[0] == 64 for x, _ in dropped)
    assert len(dropped) == ds.splits["train"].size // 64


def _store_arrays(ds):
    import zarr

    group = zarr.open_group(ds.path, mode="r", zarr_format=3)
    names = ["X/data", "X/indices", "X/indptr", "cell_index", "labels", "groups", "genes"]
    return {name: group[name][:] for name in names}


def test_create_seed_sets_the_row_order(tmp_path):
    adata = make_counts(n_cells=500)
    dense = adata.X.toarray()
    kw = {"group_key": "batch", "chunk_size": 120}
    a = GinsengDataset.create(tmp_path / "a.zarr", adata, "cell_type", seed=1, **kw)
    again = GinsengDataset.create(tmp_path / "again.zarr", adata, "cell_type", seed=1, **kw)
    b = GinsengDataset.create(tmp_path / "b.zarr", adata, "cell_type", seed=2, **kw)
    assert (a.attrs["shuffle_seed"], b.attrs["shuffle_seed"]) == (1, 2)
    # the same seed writes an identical store, array for array
    first, second = _store_arrays(a), _store_arrays(again)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    # another seed another row order: a permutation of the same cells
    assert not np.array_equal(a.cell_index, b.cell_index)
    np.testing.assert_array_equal(np.sort(a.cell_index), np.arange(500))
    np.testing.assert_array_equal(np.sort(b.cell_index), np.arange(500))
    # cell_index still names each stored row's source row: counts, labels and groups
    source_labels = adata.obs["cell_type"].to_numpy()
    source_groups = adata.obs["batch"].to_numpy()
    for ds in (a, b):
        _, y = assert_same_counts(ds, dense)
        np.testing.assert_array_equal(ds.label_names[y], source_labels[ds.cell_index])
        np.testing.assert_array_equal(ds.group_names[ds.groups], source_groups[ds.cell_index])


@pytest.mark.parametrize(
    ("option", "value"),
    [("block_size", 0), ("block_size", -3), ("block_size", 2.5), ("buffer_size", 0),
     ("buffer_size", -100), ("buffer_size", True), ("batch_size", 0), ("batch_size", 1.5)],
)  # fmt: skip
def test_stream_refuses_non_positive_sizes_naming_the_value(tmp_path, option, value):
    ds = GinsengDataset.create(tmp_path / "s.zarr", make_counts(n_cells=60), "cell_type")
    with pytest.raises(InputError, match=rf"{option} must be a positive integer, got {value}\."):
        next(ds.stream(split="all", **{option: value}))


def test_stream_is_deterministic_given_seed(tmp_path):
    ds = GinsengDataset.create(tmp_path / "s.zarr", make_counts(), "cell_type")
    first = [x[:, 0] for x, _ in ds.stream(batch_size=50, split="all", seed=7)]
    again = [x[:, 0] for x, _ in ds.stream(batch_size=50, split="all", seed=7)]
    other = [x[:, 0] for x, _ in ds.stream(batch_size=50, split="all", seed=8)]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert not np.array_equal(np.concatenate(first), np.concatenate(other))


@pytest.mark.parametrize("balance_labels", [False, True])
def test_stream_batches_do_not_depend_on_reader_threads(tmp_path, monkeypatch, balance_labels):
    # Several reader threads read buffers concurrently; the shuffle and resampling
    # draws stay in buffer order, so every batch is the one a single thread gives.
    adata = make_counts(n_cells=1500, proportions=[0.6, 0.3, 0.1])
    ds = GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", chunk_size=300)
    ds.make_split(fraction=0.1)
    kw = {"batch_size": 64, "balance_labels": balance_labels, "seed": 3}
    kw |= {"drop_last": False, "block_size": 100, "buffer_size": 200}
    runs = {}
    for threads in (1, 2, 3):
        monkeypatch.setattr(gs.settings, "reader_threads", threads)
        runs[threads] = list(ds.stream(**kw))
    assert len(runs[1]) == -(-ds.splits["train"].size // 64)  # the last batch partial
    for threads in (2, 3):
        assert len(runs[threads]) == len(runs[1])
        for (x1, y1), (x, y) in zip(runs[1], runs[threads], strict=True):
            np.testing.assert_array_equal(x, x1)
            np.testing.assert_array_equal(y, y1)
    if not balance_labels:  # still each training cell once
        seen = np.concatenate([x[:, 0] for x, _ in runs[2]]).astype(int)
        np.testing.assert_array_equal(np.sort(seen), np.sort(ds.cell_index[ds._rows("train")]))


@pytest.mark.parametrize("value", [0, -1, 1.5, "2"])
def test_reader_threads_must_be_a_positive_integer(value):
    with pytest.raises(
        InputError, match=rf"reader_threads must be a positive integer, got {value!r}"
    ):
        gs.settings.reader_threads = value
    assert gs.settings.reader_threads == 1


def test_shuffled_batches_from_sorted_source_are_mixed(tmp_path):
    adata = make_counts(n_cells=4000, n_types=4)  # rows sorted by label
    ds = GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", chunk_size=500)
    overall = np.bincount(ds.labels, minlength=4) / ds.n_cells
    distances = []
    for _, y in ds.stream(batch_size=256, split="all", seed=0, block_size=128, buffer_size=512):
        hist = np.bincount(y, minlength=4) / y.size
        distances.append(0.5 * np.abs(hist - overall).sum())
    # iid batches of 256 from 4 equal classes have a total variation of ~0.04
    assert np.mean(distances) < 0.08
    assert max(distances) < 0.15


def test_balanced_stream_equalises_labels(tmp_path):
    adata = make_counts(n_cells=6000, proportions=[0.7, 0.2, 0.08, 0.02])
    ds = GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", chunk_size=1000)
    ds.make_split(fraction=0.1)
    ys = np.concatenate(
        [y for _, y in ds.stream(batch_size=128, balance_labels=True, seed=0, buffer_size=2048)]
    )
    freq = np.bincount(ys, minlength=4) / ys.size
    np.testing.assert_allclose(freq, 0.25, atol=0.03)
    # an epoch keeps the split's length
    assert ys.size == ds.splits["train"].size // 128 * 128


# ---------------------------------------------------------------- bad input
def test_missing_keys_are_named(tmp_path):
    adata = make_counts(n_cells=50)
    with pytest.raises(InputError, match="label_key='celltype'"):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "celltype")
    with pytest.raises(InputError, match="group_key='donor'"):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", group_key="donor")
    with pytest.raises(InputError, match="Layer 'counts' not found"):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", layer="counts")
    assert list(tmp_path.iterdir()) == []


def test_missing_and_empty_labels_are_counted(tmp_path):
    adata = make_counts(n_cells=50)
    labels = adata.obs["cell_type"].astype(object)
    labels.iloc[[3, 5, 8]] = np.nan
    adata.obs["with_nan"] = labels
    with pytest.raises(InputError, match="3 missing"):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "with_nan")
    adata.obs["with_empty"] = ["" if i < 2 else "T" for i in range(50)]
    with pytest.raises(InputError, match="2 empty"):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "with_empty")


def test_bad_gene_selection(tmp_path):
    adata = make_counts(n_cells=50)
    adata.var["score"] = np.arange(adata.n_vars, dtype=float)
    adata.var["none"] = False
    with pytest.raises(InputError, match="'ginseng_genes' is not a column"):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", genes="ginseng_genes")
    with pytest.raises(InputError, match="must be boolean"):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", genes="score")
    with pytest.raises(InputError, match="selects 0 genes"):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", genes="none")
    with pytest.raises(InputError, match="2 of 3 requested genes"):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", genes=["gene1", "x", "y"])


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_invalid_values_leave_no_store(tmp_path, bad):
    adata = make_counts(n_cells=1000)
    X = adata.X.toarray()
    X[990, 3] = bad  # in the last chunk: the failure comes after writing has started
    adata.X = sp.csr_matrix(X)
    message = "negative" if bad == -1.0 else "non-finite"
    with pytest.raises(InputError, match=message):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type", chunk_size=100)
    assert list(tmp_path.iterdir()) == []


def test_empty_anndata(tmp_path):
    adata = make_counts(n_cells=10)[:0].copy()
    with pytest.raises(InputError, match="empty AnnData"):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type")


def test_existing_path_needs_overwrite(tmp_path):
    adata = make_counts(n_cells=60)
    GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type")
    with pytest.raises(InputError, match="overwrite=True"):
        GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type")
    ds = GinsengDataset.create(tmp_path / "s.zarr", adata[:30], "cell_type", overwrite=True)
    assert ds.n_cells == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="refusing to delete"):
        GinsengDataset.create(precious, adata, "cell_type", overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_corrupt_stores_are_refused(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        GinsengDataset(tmp_path / "missing.zarr")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("a,b\n")
    with pytest.raises(StoreError, match="not a GinsengDataset store"):
        GinsengDataset(foreign)
    path = tmp_path / "s.zarr"
    GinsengDataset.create(path, make_counts(n_cells=60), "cell_type")
    newer = tmp_path / "newer.zarr"
    shutil.copytree(path, newer)
    meta = json.loads((newer / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99
    (newer / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="version 99"):
        GinsengDataset(newer)
    shutil.rmtree(path / "X" / "indices")
    with pytest.raises(StoreError, match="truncated"):
        GinsengDataset(path)


def test_split_errors(tmp_path):
    ds = GinsengDataset.create(tmp_path / "s.zarr", make_counts(n_cells=60), "cell_type")
    with pytest.raises(InputError, match="make_split"):
        next(ds.stream(split="train"))
    with pytest.raises(InputError, match="group_key"):
        ds.make_split(0.1, stratify_group=True)
    with pytest.raises(InputError, match="fraction"):
        ds.make_split(1.5)
    with pytest.raises(InputError, match="group_mode"):
        ds.make_split(0.1, group_mode="cells")


def test_direct_chunk_reads_equal_zarr(tmp_path):
    import zarr

    from ginseng.data._chunks import FlatArray

    ds = GinsengDataset.create(tmp_path / "s.zarr", make_counts(n_cells=3000), "cell_type")
    rng = np.random.default_rng(0)
    for name in ["X/data", "X/indices"]:  # written chunk by chunk, bypassing zarr
        array = ds._group[name]
        flat = FlatArray(array)
        assert flat._layout is not None  # the store's own layout is read directly
        np.testing.assert_array_equal(flat[0 : array.shape[0]], array[:])  # zarr reads it
        for _ in range(20):
            lo = int(rng.integers(0, array.shape[0] - 1))
            hi = int(rng.integers(lo + 1, array.shape[0] + 1))
            np.testing.assert_array_equal(flat[lo:hi], array[lo:hi])
    # a chunk holding only the fill value is not written by zarr, and reads as zeros
    group = zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=3)
    values = np.zeros(70_000, dtype=np.uint16)
    values[:10] = 7
    blosc = [zarr.codecs.BloscCodec(cname="lz4", shuffle="bitshuffle")]
    sparse = group.create_array("v", data=values, chunks=(16_384,), compressors=blosc)
    assert FlatArray(sparse)._layout is not None
    assert not (tmp_path / "other.zarr" / "v" / "c" / "2").exists()
    np.testing.assert_array_equal(FlatArray(sparse)[5:70_000], values[5:])
    # anything else goes through zarr's own slicing
    other = group.create_array("w", data=np.arange(10.0), chunks=(4,), compressors=None)
    assert FlatArray(other)._layout is None
    np.testing.assert_array_equal(FlatArray(other)[2:9], np.arange(2.0, 9.0))
