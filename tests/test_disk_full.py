"""Writes onto a full disk: a real small tmpfs, so the kernel itself says ENOSPC.

Mounting needs root (CI runs as root); elsewhere these tests are skipped.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import ginseng as gs
from ginseng.data import GinsengDataset
from ginseng.data.io import load_model, save_model


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)`` mounts a tmpfs of ``size`` (e.g. "2m") and returns its folder."""
    mounted = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def _reference(n_cells: int, n_genes: int = 500, density: float = 0.1) -> ad.AnnData:
    """Sparse random counts with labels, about ``density`` non-zero."""
    rng = np.random.default_rng(0)
    X = sp.random(n_cells, n_genes, density=density, format="csr", random_state=rng)
    X.data = rng.integers(1, 200, X.nnz).astype(np.float32)
    labels = pd.Categorical(rng.choice(["a", "b", "c"], n_cells))
    return ad.AnnData(X, obs=pd.DataFrame({"cell_type": labels}, index=map(str, range(n_cells))))


def _fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as err:
                assert err.errno == errno.ENOSPC


def test_store_creation_refused_up_front_when_space_is_clearly_short(small_disk):
    disk = small_disk("2m")
    adata = _reference(20_000)  # 1M values: ~8 MB of shuffle files, ~16 MB estimated peak
    target = disk / "ref.zarr"
    with pytest.raises(gs.WriteError, match="Not enough free space") as info:
        GinsengDataset.create(target, adata, "cell_type")
    message = str(info.value)
    assert str(disk) in message and "needs about" in message and "MiB" in message
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value, OSError)
    assert list(disk.iterdir()) == []  # nothing was started


def test_store_creation_running_out_mid_write_names_the_store(small_disk):
    # Enough to pass the up-front check (half the estimate) but not the real peak.
    disk = small_disk("9m")
    adata = _reference(20_000)
    target = disk / "ref.zarr"
    with pytest.raises(gs.WriteError) as info:
        GinsengDataset.create(target, adata, "cell_type")
    message = str(info.value)
    assert repr(str(target)) in message
    assert "GinsengDataset store" in message
    assert "disk is full" in message and "needs about" in message
    assert info.value.errno == errno.ENOSPC
    assert list(disk.iterdir()) == []  # the temporary store was removed


def test_store_fits_in_the_estimate(small_disk):
    """The estimate is not a guess too low: a disk of that size holds the creation."""
    disk = small_disk("17m")  # the estimated peak for these cells, rounded up
    adata = _reference(20_000)
    ds = GinsengDataset.create(disk / "ref.zarr", adata, "cell_type")
    assert ds.n_cells == 20_000
    assert sorted(p.name for p in disk.iterdir()) == ["ref.zarr"]


def test_save_model_on_a_full_disk_keeps_the_old_model(small_disk, toy_trained):
    disk = small_disk("1m")
    path = disk / "model.h5"
    save_model(toy_trained.state, path)
    before = path.read_bytes()
    _fill(disk)
    with pytest.raises(gs.WriteError) as info:
        save_model(toy_trained.state, path)
    message = str(info.value)
    assert repr(str(path)) in message and "the model file" in message
    assert "disk is full" in message
    assert path.read_bytes() == before
    assert list(load_model(path).labels) == list(toy_trained.state.labels)
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "model.h5"]


class _Stream(BaseHTTPRequestHandler):
    """3 MiB of bytes; with Content-Length on /sized, without it on /unsized."""

    def do_GET(self):
        body = b"\0" * (3 << 20)
        self.send_response(200)
        if self.path == "/sized.h5ad":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for start in range(0, len(body), 65536):
                self.wfile.write(body[start : start + 65536])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up when its disk filled

    def log_message(self, *args):
        pass


@pytest.fixture
def stream_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stream)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("name", ["sized", "unsized"])
def test_download_into_a_full_cache_names_the_cache_file(small_disk, stream_server, name):
    from ginseng.data.io import read_adata

    disk = small_disk("1m")
    before = gs.settings.cache_dir
    gs.settings.cache_dir = disk
    try:
        with pytest.raises(gs.WriteError) as info:
            read_adata(f"{stream_server}/{name}.h5ad")
    finally:
        gs.settings.cache_dir = before
    message = str(info.value)
    assert f"the download of {stream_server}/{name}.h5ad" in message
    assert str(disk) in message
    if name == "sized":  # refused before downloading: the size was announced
        assert "Not enough free space" in message and "3.0 MiB" in message
    else:
        assert "disk is full" in message
    assert list(disk.iterdir()) == []  # no partial download left in the cache
