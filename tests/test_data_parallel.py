"""Data-parallel training: several forced CPU devices, and two processes on localhost.

JAX reads the device count when it initialises, so the runs with other device counts or
several processes happen in child processes (``JAX_NUM_CPU_DEVICES``,
``ginseng.train.init_distributed``); the one-device reference runs in this process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import ginseng
from ginseng import InputError
from ginseng.data import GinsengDataset, block_share
from ginseng.data.io import load_model
from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings

SETTINGS = {"hidden_dim": 16, "upper": 5, "seed": 3, "min_steps": 40}
EPOCHS = 2
# Rows per block of the training stream (the trainer's STREAM_BUFFERS["block_size"]).
BLOCK_ROWS = 2048

CHILD = textwrap.dedent(
    """
    import json, sys

    import ginseng as gs
    from ginseng.data import GinsengDataset, block_share
    from ginseng.data.io import save_model
    from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings

    store, out, settings, epochs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    if len(sys.argv) > 5:  # coordinator port and process id: a two-process run
        info = gs.train.init_distributed(
            coordinator_address=f"127.0.0.1:{sys.argv[5]}", num_processes=2,
            process_id=int(sys.argv[6]),
        )
    gs.settings.progress_bar = False
    trainer = GinsengClassifierTrainer(
        GinsengDataset(store), GinsengClassifierTrainerSettings(**settings)
    )
    model, state = trainer.fit(epochs)
    save_model(state, out + ".h5")
    import numpy as np
    np.save(out + ".rows.npy", trainer.stream_rows)
    print(json.dumps(state.provenance["devices"]))
    """
)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    # The ginseng under test, whether installed or on PYTHONPATH.
    src = str(Path(ginseng.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env["JAX_PLATFORMS"] = "cpu"
    return env | extra


def start_child(tmp_path, store, out, settings, *extra: str, **env: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    command = [sys.executable, str(script), str(store), str(out), json.dumps(settings)]
    return subprocess.Popen(
        [*command, str(EPOCHS), *extra],
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(child: subprocess.Popen, timeout: float = 300) -> dict:
    stdout, stderr = child.communicate(timeout=timeout)
    assert child.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def store(tmp_path_factory, make_toy):
    adata = make_toy(n_cells=400, n_genes=30, n_types=3, seed=11)
    return adata, GinsengDataset.create(
        tmp_path_factory.mktemp("dp") / "s.zarr", adata, "cell_type"
    )


def test_two_devices_train_as_one(store, tmp_path):
    """2 forced CPU devices: the same parameters and predictions as one, up to rounding.

    The two-device run asks for batch_size=33, which it rounds down to 32 (a multiple
    of the device count); the reference asks for 32 on one device.
    """
    adata, ds = store
    child = start_child(
        tmp_path, ds.path, tmp_path / "two", SETTINGS | {"batch_size": 33}, JAX_NUM_CPU_DEVICES="2"
    )
    settings = GinsengClassifierTrainerSettings(**SETTINGS, batch_size=32)
    _, one = GinsengClassifierTrainer(ds, settings).fit(EPOCHS)
    assert finish(child) == {"platform": "cpu", "count": 2, "processes": 1}

    two = load_model(tmp_path / "two.h5")
    assert two.provenance["devices"] == {"platform": "cpu", "count": 2, "processes": 1}
    assert two.provenance["batch_size"] == one.provenance["batch_size"] == 32
    assert two.provenance["steps"] == one.provenance["steps"]
    assert one.provenance["devices"] == {
        "platform": jax.devices()[0].platform,
        "count": jax.device_count(),
        "processes": 1,
    }
    assert two.params.keys() == one.params.keys()
    for name in one.params:
        np.testing.assert_allclose(two.params[name], one.params[name], rtol=1e-4, atol=1e-5)
    X = adata.X.toarray()
    np.testing.assert_allclose(two.predict_logits(X), one.predict_logits(X), rtol=1e-4, atol=1e-4)
    assert (two.predict(X) == one.predict(X)).all()
    assert two.history["epoch"] == one.history["epoch"]
    np.testing.assert_allclose(two.history["train_loss"], one.history["train_loss"], rtol=1e-4)


def test_stream_shards_are_disjoint_whole_blocks_covering_the_split(make_toy, tmp_path):
    """``stream(shard=(i, n))`` reads the blocks ``b % n == i`` of the split, nothing else."""
    adata = make_toy(n_cells=700, n_genes=20, n_types=3, seed=13)
    ds = GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type")
    ds.make_split(0.2, seed=0)
    train, block = ds.splits["train"], 64
    dense = adata.X.toarray()
    seen = []
    for i in range(3):
        batches = list(ds.stream(50, "train", shuffle=False, block_size=block, shard=(i, 3)))
        X, y = [b[0] for b in batches], [b[1] for b in batches]
        expected = train[(train // block) % 3 == i]  # the documented rule
        np.testing.assert_array_equal(np.concatenate(X), dense[ds.cell_index[expected]])
        np.testing.assert_array_equal(np.concatenate(y), ds.labels[expected])
        np.testing.assert_array_equal(block_share(train, block, i, 3), expected)
        seen.append(expected)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), train)
    # shuffled and balanced streams stay within the share
    stream = ds.stream(16, "train", balance_labels=True, seed=1, block_size=block, shard=(1, 3))
    share = {tuple(row) for row in dense[ds.cell_index[seen[1]]]}
    assert {tuple(row) for X, _ in stream for row in X} <= share
    for bad in [(3, 3), (-1, 2), (0,), "01"]:
        with pytest.raises(InputError, match="shard"):
            next(ds.stream(16, "train", shard=bad))


def test_init_distributed_after_jax_started_is_refused():
    jax.devices()  # JAX is in use in this process
    with pytest.raises(InputError, match="before anything in this process uses JAX"):
        import ginseng as gs

        gs.train.init_distributed(coordinator_address="127.0.0.1:1", num_processes=2, process_id=0)


def test_init_distributed_without_cluster_or_arguments_is_refused():
    """Outside Slurm and Open MPI, a missing process count is an InputError naming it."""
    code = (
        "import ginseng as gs\n"
        "try:\n"
        "    gs.train.init_distributed(coordinator_address='127.0.0.1:1', process_id=0)\n"
        "except gs.InputError as err:\n"
        "    print('InputError:', err)\n"
    )
    env = {k: v for k, v in child_env().items() if not k.startswith(("SLURM_", "OMPI_", "PMI"))}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "InputError: init_distributed(" in out.stdout
    assert "num_processes=None" in out.stdout and "Number of processes" in out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_share_blocks_and_agree(make_toy, tmp_path):
    """Two processes on localhost (one CPU device each) train one model together.

    Each streams a disjoint share of the store's blocks; the gradients are summed
    across processes, so both end with the same parameters (they would drift apart on
    their different shares if they were not).
    """
    adata = make_toy(n_cells=2600, n_genes=30, n_types=3, seed=12)
    ds = GinsengDataset.create(tmp_path / "s.zarr", adata, "cell_type")
    port = str(free_port())
    settings = SETTINGS | {"batch_size": 32, "min_steps": 80}
    children = [
        start_child(tmp_path, ds.path, tmp_path / f"p{i}", settings, port, str(i)) for i in (0, 1)
    ]
    devices = [finish(child) for child in children]
    assert devices == [{"platform": "cpu", "count": 2, "processes": 2}] * 2

    states = [load_model(tmp_path / f"p{i}.h5") for i in (0, 1)]
    for name in states[0].params:
        np.testing.assert_array_equal(states[0].params[name], states[1].params[name])
    assert states[0].metrics["accuracy"] > 0.9  # both shares' cells were learned from

    rows = [np.load(tmp_path / f"p{i}.rows.npy") for i in (0, 1)]
    train = ds.splits["train"]  # the split process 0 wrote
    assert np.intersect1d(rows[0], rows[1]).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate(rows)), train)
    blocks = [set((r // BLOCK_ROWS).tolist()) for r in rows]
    assert blocks[0] and blocks[1] and not blocks[0] & blocks[1]  # whole blocks each
