"""gs.tl.classify on dask arrays: the same numbers as the serial path, computed by workers."""

from __future__ import annotations

import logging
import os
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import ginseng as gs
from ginseng import GeneMismatchError, InputError, ModelFormatError, StoreError

distributed = pytest.importorskip("distributed")
pytest.importorskip("dask.array")

from anndata.experimental import read_elem_lazy  # noqa: E402
from anndata.io import read_elem  # noqa: E402

ROWS = 100  # cells per block, in both paths


@pytest.fixture(scope="module")
def client():
    """One LocalCluster of 2 single-threaded worker processes for the module."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def query(make_toy):
    return make_toy(n_cells=650, seed=3)


def _open(path):
    if str(path).endswith(".h5ad"):
        import h5py

        return h5py.File(path, "r")
    import zarr

    return zarr.open_group(path, mode="r")


def _lazy(path, key="X"):
    """An AnnData with obs/var in memory and the counts as a lazy dask array."""
    group = _open(path)
    n_vars = len(read_elem(group["var"]))
    matrix = read_elem_lazy(group[key], chunks=(ROWS, n_vars))
    return ad.AnnData(X=matrix, obs=read_elem(group["obs"]), var=read_elem(group["var"]))


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_lazy_file_gives_serial_labels_and_probabilities(client, toy_trained, query, tmp_path, fmt):
    path = tmp_path / f"query.{fmt}"
    getattr(query, f"write_{fmt}")(path)
    serial = query.copy()
    gs.tl.classify(serial, toy_trained.state, batch_size=ROWS)
    lazy = _lazy(path)
    import dask.array as da

    assert isinstance(lazy.X, da.Array) and lazy.X.numblocks[0] == 7
    gs.tl.classify(lazy, toy_trained.state)
    pd.testing.assert_series_equal(lazy.obs["ginseng_cell_type"], serial.obs["ginseng_cell_type"])
    pd.testing.assert_series_equal(lazy.obs["ginseng_confidence"], serial.obs["ginseng_confidence"])
    proba = lazy.obsm["ginseng_probabilities"]
    assert isinstance(proba, da.Array)  # stays lazy
    np.testing.assert_array_equal(proba.compute(), serial.obsm["ginseng_probabilities"])
    record, serial_record = lazy.uns["ginseng"]["classify"], serial.uns["ginseng"]["classify"]
    for key in ("labels", "gene_overlap", "model"):
        assert record[key] == serial_record[key], key
    # Independent check: the labels are the argmax of the probabilities.
    labels = np.asarray(lazy.uns["ginseng"]["classify"]["labels"])
    np.testing.assert_array_equal(
        labels[proba.compute().argmax(axis=1)], lazy.obs["ginseng_cell_type"].astype(str)
    )


def test_majority_vote_per_block_equals_serial(client, toy_trained, query, tmp_path):
    path = tmp_path / "query.zarr"
    query.write_zarr(path)
    options = {"unassigned_threshold": 0.9, "majority_vote_key": "batch", "min_prop": 0.6}
    serial = gs.tl.classify(
        query.copy(), toy_trained.state, batch_size=ROWS, return_table=True, **options
    )
    table = gs.tl.classify(_lazy(path), toy_trained.state, return_table=True, **options)
    pd.testing.assert_frame_equal(table, serial)
    # Independent truth: pandas' crosstab of the predicted labels per batch.
    counts = pd.crosstab(query.obs["batch"], serial["ginseng_cell_type"])
    share = counts.max(axis=1) / counts.sum(axis=1)
    expected = np.where(share < 0.6, "Heterogeneous", counts.idxmax(axis=1))
    expected = pd.Series(expected, index=counts.index)
    truth = query.obs["batch"].map(expected).astype(str)
    np.testing.assert_array_equal(table["ginseng_majority_vote"].astype(str), truth.to_numpy())


def test_hierarchy_levels_and_votes_equal_serial(client, toy_trained, query, tmp_path):
    """A model with a label hierarchy: level columns and backed-off votes per block."""
    import copy

    from ginseng.model.hierarchy import Hierarchy

    state = copy.copy(toy_trained.state)
    coarse = {"type_0": "AB", "type_1": "AB", "type_2": "CD", "type_3": "CD"}
    state.hierarchy = Hierarchy.from_mapping(coarse, state.labels, "cell_type")
    path = tmp_path / "query.zarr"
    query.write_zarr(path)
    options = {"unassigned_threshold": 0.999, "majority_vote_key": "batch"}
    serial = gs.tl.classify(query.copy(), state, batch_size=ROWS, return_table=True, **options)
    table = gs.tl.classify(_lazy(path), state, return_table=True, **options)
    pd.testing.assert_frame_equal(table, serial)
    assert {"ginseng_cell_type_level_0", "ginseng_confidence_cell_type"} <= set(table.columns)


def test_model_state_is_pickled_once_not_per_block(client, toy_trained, query, monkeypatch):
    import dask.array as da

    cls = type(toy_trained.state)
    original = cls.__reduce_ex__
    calls = []

    def counting(self, protocol):
        calls.append(protocol)
        return original(self, protocol)

    monkeypatch.setattr(cls, "__reduce_ex__", counting, raising=False)
    lazy = query.copy()
    lazy.X = da.from_array(query.X, chunks=(25, query.n_vars))
    table = gs.tl.classify(lazy, toy_trained.state, return_table=True)
    assert len(table) == query.n_obs
    assert lazy.X.numblocks[0] == 26
    # Pickled in this process (client and LocalCluster scheduler): when the graph is
    # sent, and when the scheduler hands the model's key to a worker; never per block.
    n_workers = len(client.scheduler_info()["workers"])
    assert 1 <= len(calls) <= 2 + 2 * n_workers < lazy.X.numblocks[0], calls


def test_worker_errors_reach_the_user_as_ginseng_errors(client, toy_trained, query):
    import dask.array as da

    bad = query.copy()
    X = bad.X.toarray()
    X[512, 3] = -2.0  # in the 6th block: raised inside a worker
    bad.X = da.from_array(X, chunks=(ROWS, bad.n_vars))
    with pytest.raises(InputError, match="negative") as caught:
        gs.tl.classify(bad, toy_trained.state)
    assert type(caught.value) is InputError
    serial = query.copy()
    serial.X = X
    with pytest.raises(InputError) as caught_serial:
        gs.tl.classify(serial, toy_trained.state, batch_size=ROWS)
    assert str(caught.value) == str(caught_serial.value)


def test_gene_mismatch_on_dask_is_the_serial_error(client, toy_trained, query):
    import dask.array as da

    lazy = query.copy()
    lazy.var_names = [f"other{i}" for i in range(lazy.n_vars)]
    lazy.X = da.from_array(lazy.X, chunks=(ROWS, lazy.n_vars))
    with pytest.raises(GeneMismatchError, match="0 of"):
        gs.tl.classify(lazy, toy_trained.state)


@pytest.mark.parametrize(
    "error", [InputError, GeneMismatchError, StoreError, ModelFormatError, gs.GinsengError]
)
def test_ginseng_errors_survive_pickling(error):
    raised = error("adata.X: 3 negative value(s) in 'counts'")
    back = pickle.loads(pickle.dumps(raised))
    assert type(back) is error and str(back) == str(raised)


def test_workers_write_the_probabilities_into_zarr(client, toy_trained, query, tmp_path, caplog):
    path = tmp_path / "query.zarr"
    query.write_zarr(path)
    serial = query.copy()
    gs.tl.classify(serial, toy_trained.state, batch_size=ROWS)
    with caplog.at_level(logging.DEBUG, logger="ginseng"):
        out = gs.tl.classify(path, toy_trained.state, write=True, batch_size=ROWS)
    writers = [r.args[0] for r in caplog.records if "written by processes" in r.getMessage()]
    assert len(writers) == 1
    worker_pids = set(client.run(os.getpid).values())
    assert set(writers[0]) and set(writers[0]) <= worker_pids
    assert os.getpid() not in writers[0]
    back = ad.read_zarr(path)
    np.testing.assert_array_equal(
        back.obsm["ginseng_probabilities"], serial.obsm["ginseng_probabilities"]
    )
    pd.testing.assert_series_equal(back.obs["ginseng_cell_type"], serial.obs["ginseng_cell_type"])
    np.testing.assert_array_equal(
        np.asarray(out.obsm["ginseng_probabilities"]), serial.obsm["ginseng_probabilities"]
    )
    np.testing.assert_array_equal(back.X.toarray(), query.X.toarray())  # counts untouched
    leftovers = [p.name for p in tmp_path.iterdir() if "ginseng-" in p.name]
    assert leftovers == []


def test_cli_annotate_with_workers(toy_trained, query, tmp_path, capsys):
    from ginseng.cli import main
    from ginseng.data.io import save_model

    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    model = save_model(toy_trained.state, tmp_path / "model.h5")
    table_path = tmp_path / "table.csv"
    args = ["annotate", str(path), "--model", str(model), "--table", str(table_path)]
    code = main([*args, "--workers", "2", "--batch-size", str(ROWS)])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(table_path, index_col=0)
    serial = gs.tl.classify(query.copy(), toy_trained.state, batch_size=ROWS, return_table=True)
    np.testing.assert_array_equal(table["ginseng_cell_type"], serial["ginseng_cell_type"])
    # The CSV holds the floats rounded to text.
    np.testing.assert_allclose(table.iloc[:, 2:], serial.iloc[:, 2:], rtol=1e-6, atol=1e-30)


def _environ(names):
    return {name: os.environ.get(name) for name in names}


def test_cli_workers_start_with_the_allocator_environment():
    """``--workers`` workers get both malloc thresholds from the start, the rest as it was.

    dask's own default (MALLOC_TRIM_THRESHOLD_ alone) doubles the kernel's time per block.
    """
    from distributed import default_client

    from ginseng.cli import WORKER_ENVIRON, _dask_client

    user_flags = "--xla_force_host_platform_device_count=1"  # the user's own, passed on as is
    names = [*WORKER_ENVIRON, "XLA_FLAGS"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XLA_FLAGS", user_flags)
        with _dask_client(2, None):
            seen = default_client().run(_environ, names)
        assert os.environ["XLA_FLAGS"] == user_flags
    assert len(seen) == 2
    assert all(env == {**WORKER_ENVIRON, "XLA_FLAGS": user_flags} for env in seen.values()), seen
    # This process's own environment is restored.
    assert os.environ.get("MALLOC_MMAP_THRESHOLD_") != WORKER_ENVIRON["MALLOC_MMAP_THRESHOLD_"]


def test_workers_with_dasks_malloc_setting_alone_are_named_once(
    client, toy_trained, query, tmp_path, monkeypatch
):
    """dask's default worker environment doubles the kernel's time: say so, once."""
    import warnings

    from ginseng.tl import _dask_workers

    monkeypatch.setattr(_dask_workers, "_ALLOCATOR_CHECKED", set())
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    with pytest.warns(
        UserWarning, match=r"2 of 2 dask workers run with MALLOC_TRIM_THRESHOLD_"
    ) as record:
        gs.tl.classify(path, toy_trained.state, batch_size=ROWS).file.close()
    # The fix it suggests is what the CLI's own workers start with.
    from ginseng.cli import WORKER_ENVIRON

    # Other libraries warn too (pandas on Python 3.12): take ginseng's warning.
    message = next(str(w.message) for w in record if "dask workers run with" in str(w.message))
    for name, value in WORKER_ENVIRON.items():
        assert f"'distributed.nanny.pre-spawn-environ.{name}': {value}" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # not again for this scheduler
        gs.tl.classify(path, toy_trained.state, batch_size=ROWS).file.close()


def test_workers_started_as_the_cli_does_get_no_allocator_warning(
    toy_trained, query, tmp_path, monkeypatch
):
    import warnings

    from ginseng.cli import _dask_client
    from ginseng.tl import _dask_workers

    monkeypatch.setattr(_dask_workers, "_ALLOCATOR_CHECKED", set())
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    with _dask_client(1, None), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = gs.tl.classify(path, toy_trained.state, batch_size=ROWS)
        out.file.close()
    assert len(_dask_workers._ALLOCATOR_CHECKED) == 1


@pytest.mark.parametrize(
    ("environ", "slow"),
    [
        ({}, False),  # glibc's dynamic threshold
        ({"MALLOC_TRIM_THRESHOLD_": "65536"}, True),  # dask's default
        ({"MALLOC_TOP_PAD_": "0"}, True),
        ({"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_MMAP_THRESHOLD_": "131072"}, True),
        ({"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_MMAP_THRESHOLD_": "268435456"}, False),
        ({"MALLOC_MMAP_THRESHOLD_": "not a number"}, False),
    ],
)
def test_which_malloc_settings_unmap_every_block(environ, slow):
    from ginseng.tl._dask_workers import _unmaps_blocks

    assert _unmaps_blocks(environ) is slow


def test_importing_ginseng_does_not_import_dask():
    """``import ginseng`` imports no dask; ginseng.tl none beyond what anndata imports."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "def daskish(): return {m for m in sys.modules if m.split('.')[0] in "
        "('dask', 'distributed')}\n"
        "import ginseng\n"
        "print(len(daskish()))\n"
        "import anndata\n"
        "before = daskish()\n"
        "import ginseng.tl, ginseng.tl.kernel, ginseng.cli\n"
        "print(sorted(daskish() - before), 'distributed' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["0", "[] False"]


def test_seed_api_classify_on_a_lazy_layer(client, toy_trained, query, tmp_path):
    import ginseng

    path = tmp_path / "query.zarr"
    with_layer = query.copy()
    with_layer.layers["counts"] = with_layer.X.copy()
    with_layer.X = with_layer.X * 0.5  # not counts: classify must read the layer
    with_layer.write_zarr(path)
    lazy = _lazy(path)
    lazy.layers["counts"] = _lazy(path, "layers/counts").X
    table = ginseng.classify(lazy, toy_trained.state, return_table=True)
    serial = ginseng.classify(query.copy(), toy_trained.state, return_table=True, batch_size=ROWS)
    pd.testing.assert_frame_equal(table, serial)


def test_h5ad_path_write_with_an_active_client(client, toy_trained, query, tmp_path, caplog):
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    serial = query.copy()
    gs.tl.classify(serial, toy_trained.state, batch_size=ROWS, majority_vote_key="batch")
    with caplog.at_level(logging.DEBUG, logger="ginseng"):
        out = gs.tl.classify(
            path, toy_trained.state, write=True, batch_size=ROWS, majority_vote_key="batch"
        )
    out.file.close()
    assert any("on dask" in r.getMessage() for r in caplog.records)  # the path went lazy
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(
        back.obsm["ginseng_probabilities"], serial.obsm["ginseng_probabilities"]
    )
    for key in ("ginseng_cell_type", "ginseng_confidence", "ginseng_majority_vote"):
        pd.testing.assert_series_equal(back.obs[key], serial.obs[key])


def test_failed_worker_write_leaves_the_store_as_it_was(client, toy_trained, query, tmp_path):
    import zarr

    bad = query.copy()
    X = bad.X.toarray()
    X[420, 0] = -1.0  # a worker fails after others wrote their blocks into the staged copy
    bad.X = X
    path = tmp_path / "query.zarr"
    bad.write_zarr(path)
    before = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
    with pytest.raises(InputError, match="negative"):
        gs.tl.classify(path, toy_trained.state, write=True, batch_size=ROWS)
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == before
    assert "ginseng_probabilities" not in zarr.open_group(path, mode="r").get("obsm", {})
    assert [p.name for p in tmp_path.iterdir() if "ginseng-" in p.name] == []


@pytest.mark.parametrize("one_collection", [False, True])
@pytest.mark.parametrize("scheduler", ["threads", "distributed"])
def test_an_error_is_raised_only_once_no_task_still_runs(
    scheduler, one_collection, request, tmp_path
):
    """A task still writing when another fails finishes before the error reaches us.

    Otherwise a worker could write into a staged copy that the failed update has
    already removed (test_failed_worker_write_leaves_the_store_as_it_was, under load).
    """
    import time

    import dask

    from ginseng.tl._dask_io import compute_settled

    marker, started = tmp_path / "written", tmp_path / "started"

    def write_late(path: str) -> int:
        open(str(started), "w").close()
        time.sleep(0.5)  # still running when the other task fails
        with open(path, "w") as fh:
            fh.write("late")
        return 1

    def fail_now(_: int) -> int:
        for _ in range(500):  # fail only once the writer runs (two task slots)
            if started.exists():
                break
            time.sleep(0.01)
        raise InputError("block 0 failed")

    collections: tuple = (dask.delayed(write_late)(str(marker)), dask.delayed(fail_now)(0))
    if one_collection:
        # As classify's blocks: one array whose blocks are the late and the failing task.
        import dask.array as da

        blocks = [da.from_delayed(task, (1,), int) for task in collections]
        collections = (da.concatenate(blocks),)
    if scheduler == "distributed":
        request.getfixturevalue("client")
        context = dask.config.set(scheduler="dask.distributed")
    else:
        context = dask.config.set(scheduler="threads")
    with context, pytest.raises(InputError, match="block 0 failed"):
        compute_settled(*collections)
    assert marker.read_text() == "late"
    # Without errors it is dask.compute.
    with context:
        assert compute_settled(dask.delayed(sum)([1, 2])) == (3,)
