"""ginseng.data.io.read_adata on every accepted input, made here in the tests."""

from __future__ import annotations

import gzip
import json
import logging
import re
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

import ginseng as gs
from ginseng import DownloadError, InputError
from ginseng.data import io
from ginseng.data.io import read_adata

# 6 cells x 5 genes; the symbol LYZ appears twice, as in real 10x references.
COUNTS = np.array(
    [
        [0, 3, 0, 1, 7],
        [2, 0, 0, 0, 1],
        [0, 0, 5, 0, 0],
        [1, 1, 1, 1, 1],
        [0, 12, 0, 0, 4],
        [9, 0, 2, 0, 0],
    ],
    dtype=np.int32,
)
GENE_IDS = [f"ENSG0000000000{i}" for i in range(5)]
SYMBOLS = ["CD3E", "MS4A1", "LYZ", "LYZ", "GNLY"]
UNIQUE_SYMBOLS = ["CD3E", "MS4A1", "LYZ", "LYZ-1", "GNLY"]
BARCODES = [f"AAACCTGAGAAA{i:04d}-1" for i in range(6)]
# One antibody feature, dropped by scanpy's gex_only default like in Cell Ranger output.
ADT = np.array([[4], [0], [8], [1], [0], [3]], dtype=np.int32)


def dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def assert_10x(adata: ad.AnnData) -> None:
    np.testing.assert_array_equal(dense(adata.X), COUNTS)
    assert list(adata.var_names) == UNIQUE_SYMBOLS
    assert list(adata.var["gene_ids"]) == GENE_IDS
    assert list(adata.obs_names) == BARCODES


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setattr(gs.settings, "cache_dir", path)
    return path


@pytest.fixture
def h5ad_file(tmp_path) -> Path:
    obs = pd.DataFrame({"cell_type": pd.Categorical(list("ababab"))}, index=BARCODES)
    adata = ad.AnnData(sp.csr_matrix(COUNTS), obs=obs, var=pd.DataFrame(index=UNIQUE_SYMBOLS))
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    return path


def write_10x_v3_h5(path: Path) -> None:
    """Cell Ranger v3 filtered_feature_bc_matrix.h5: CSC genes x cells under /matrix."""
    matrix = sp.csc_matrix(np.hstack([COUNTS, ADT]).T)
    types = ["Gene Expression"] * 5 + ["Antibody Capture"]
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"] = matrix.data.astype(np.int32)
        m["indices"] = matrix.indices.astype(np.int64)
        m["indptr"] = matrix.indptr.astype(np.int64)
        m["shape"] = np.array(matrix.shape, dtype=np.int32)
        m["barcodes"] = np.array(BARCODES, dtype="S")
        feats = m.create_group("features")
        feats["id"] = np.array([*GENE_IDS, "CD3_TotalSeqB"], dtype="S")
        feats["name"] = np.array([*SYMBOLS, "CD3"], dtype="S")
        feats["feature_type"] = np.array(types, dtype="S")
        feats["genome"] = np.array(["GRCh38"] * 5 + [""], dtype="S")
        feats["_all_tag_keys"] = np.array([b"genome"])


def write_10x_v2_h5(path: Path) -> None:
    """Cell Ranger v2 filtered_gene_bc_matrices_h5.h5: one group per genome."""
    matrix = sp.csc_matrix(COUNTS.T)
    with h5py.File(path, "w") as f:
        g = f.create_group("hg19")
        g["data"] = matrix.data.astype(np.int32)
        g["indices"] = matrix.indices.astype(np.int64)
        g["indptr"] = matrix.indptr.astype(np.int64)
        g["shape"] = np.array(matrix.shape, dtype=np.int32)
        g["barcodes"] = np.array(BARCODES, dtype="S")
        g["gene_names"] = np.array(SYMBOLS, dtype="S")
        g["genes"] = np.array(GENE_IDS, dtype="S")


def write_10x_v3_mtx(directory: Path) -> None:
    directory.mkdir()
    with gzip.open(directory / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, sp.coo_matrix(np.hstack([COUNTS, ADT]).T), field="integer")
    rows = [f"{i}\t{s}\tGene Expression" for i, s in zip(GENE_IDS, SYMBOLS, strict=True)]
    rows.append("CD3_TotalSeqB\tCD3\tAntibody Capture")
    with gzip.open(directory / "features.tsv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    with gzip.open(directory / "barcodes.tsv.gz", "wt") as f:
        f.write("\n".join(BARCODES) + "\n")


def write_10x_v2_mtx(directory: Path, prefix: str = "") -> None:
    directory.mkdir()
    scipy.io.mmwrite(directory / f"{prefix}matrix.mtx", sp.coo_matrix(COUNTS.T), field="integer")
    genes = [f"{i}\t{s}" for i, s in zip(GENE_IDS, SYMBOLS, strict=True)]
    (directory / f"{prefix}genes.tsv").write_text("\n".join(genes) + "\n")
    (directory / f"{prefix}barcodes.tsv").write_text("\n".join(BARCODES) + "\n")


# --- local files ------------------------------------------------------------------------


def test_io_reexports_read_adata():
    assert "read_adata" in io.__all__
    assert io.read_adata is read_adata


def test_anndata_is_returned_as_is():
    adata = ad.AnnData(COUNTS.astype(np.float32))
    assert read_adata(adata) is adata
    # backed is a hint for files; an object in memory is neither copied nor refused.
    assert read_adata(adata, backed="r") is adata


def test_h5ad_in_memory_and_backed_agree(h5ad_file, caplog):
    caplog.set_level(logging.INFO, logger="ginseng")
    in_memory = read_adata(h5ad_file)
    backed = read_adata(str(h5ad_file), backed="r")
    assert not in_memory.isbacked
    assert backed.isbacked
    assert backed.file["/"].file.mode == "r"  # h5py's public mode
    np.testing.assert_array_equal(dense(in_memory.X), COUNTS)
    np.testing.assert_array_equal(dense(backed.X[:]), COUNTS)
    assert list(backed.obs["cell_type"]) == list("ababab")
    assert list(in_memory.var_names) == UNIQUE_SYMBOLS
    backed.file.close()
    assert "6 cells x 5 genes" in caplog.text
    assert "backed 'r'" in caplog.text
    assert "in memory" in caplog.text


def test_h5ad_backed_read_write_and_tilde(h5ad_file, monkeypatch):
    monkeypatch.setenv("HOME", str(h5ad_file.parent))
    adata = read_adata("~/counts.h5ad", backed="r+")
    assert adata.isbacked
    assert Path(adata.filename) == h5ad_file
    adata.file.close()


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")
@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_store(tmp_path, zarr_format):
    path = tmp_path / "counts.zarr"
    adata = ad.AnnData(sp.csr_matrix(COUNTS), var=pd.DataFrame(index=UNIQUE_SYMBOLS))
    with ad.settings.override(zarr_write_format=zarr_format, auto_shard_zarr_v3=False):
        adata.write_zarr(path)
    adata = read_adata(path)
    np.testing.assert_array_equal(dense(adata.X), COUNTS)
    assert list(adata.var_names) == UNIQUE_SYMBOLS
    with pytest.raises(InputError, match=r"backed='r' works only for \.h5ad.*zarr"):
        read_adata(path, backed="r")


@pytest.mark.parametrize("name", ["filtered_feature_bc_matrix.h5", "no_extension"])
def test_10x_v3_h5_detected_by_content(tmp_path, name):
    path = tmp_path / name
    write_10x_v3_h5(path)
    adata = read_adata(path)
    assert_10x(adata)
    assert set(adata.var["feature_types"]) == {"Gene Expression"}
    with pytest.raises(InputError, match=r"backed='r' works only for \.h5ad.*10x Genomics \.h5"):
        read_adata(path, backed="r")


def test_10x_v2_h5(tmp_path):
    path = tmp_path / "filtered_gene_bc_matrices_h5.h5"
    write_10x_v2_h5(path)
    assert_10x(read_adata(path))


def test_10x_v3_mtx_directory(tmp_path):
    directory = tmp_path / "filtered_feature_bc_matrix"
    write_10x_v3_mtx(directory)
    adata = read_adata(directory)
    assert_10x(adata)
    assert set(adata.var["feature_types"]) == {"Gene Expression"}
    with pytest.raises(InputError, match=r"backed='r' works only for \.h5ad"):
        read_adata(directory, backed="r")


@pytest.mark.parametrize("prefix", ["", "patientA_"])
def test_10x_v2_mtx_directory(tmp_path, prefix):
    directory = tmp_path / "hg19"
    write_10x_v2_mtx(directory, prefix)
    assert_10x(read_adata(directory))


def test_10x_directory_missing_files(tmp_path):
    directory = tmp_path / "filtered_feature_bc_matrix"
    write_10x_v3_mtx(directory)
    (directory / "features.tsv.gz").unlink()
    with pytest.raises(InputError, match=r"missing features\.tsv\.gz \(found: barcodes") as info:
        read_adata(directory)
    assert str(directory) in str(info.value)
    assert "matrix.mtx.gz" in str(info.value)

    v2 = tmp_path / "hg19"
    write_10x_v2_mtx(v2)
    (v2 / "barcodes.tsv").unlink()
    (v2 / "matrix.mtx").unlink()
    with pytest.raises(InputError, match=r"missing matrix\.mtx, barcodes\.tsv \(found: genes"):
        read_adata(v2)


def test_missing_path(tmp_path):
    path = tmp_path / "nope.h5ad"
    with pytest.raises(InputError, match=re.escape(f"{path} does not exist")):
        read_adata(path)


def test_unknown_formats(tmp_path):
    csv = tmp_path / "counts.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"Unknown format of .*counts\.csv; expected .*\.h5ad"):
        read_adata(csv)
    directory = tmp_path / "notes"
    directory.mkdir()
    (directory / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match=r"Unknown format of directory .*readme\.txt"):
        read_adata(directory)
    other_h5 = tmp_path / "other.h5"
    with h5py.File(other_h5, "w") as f:
        f["weights"] = np.zeros(3)
    with pytest.raises(InputError, match=r"neither an AnnData \.h5ad nor a 10x.*weights"):
        read_adata(other_h5)


def test_ginseng_files_are_not_anndata(tmp_path):
    model = tmp_path / "model.h5"
    with h5py.File(model, "w") as f:
        f.attrs["format"] = "ginseng-model"
    with pytest.raises(InputError, match=r"ginseng model file.*load_model"):
        read_adata(model)
    store = tmp_path / "store.zarr"
    store.mkdir()
    meta = {"zarr_format": 3, "node_type": "group", "attributes": {"format": "ginseng-dataset"}}
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="GinsengDataset store"):
        read_adata(store)


def test_corrupt_h5ad(tmp_path, h5ad_file):
    garbage = tmp_path / "garbage.h5ad"
    garbage.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(InputError, match=r"garbage\.h5ad is not a valid HDF5 file"):
        read_adata(garbage)
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(h5ad_file.read_bytes()[: h5ad_file.stat().st_size // 2])
    with pytest.raises(InputError, match=r"truncated\.h5ad.*(truncated|corrupt)"):
        read_adata(truncated)


def test_bad_arguments(h5ad_file):
    with pytest.raises(InputError, match="backed must be None, 'r' or 'r\\+', got 'w'"):
        read_adata(h5ad_file, backed="w")
    with pytest.raises(InputError, match="only http:// and https://"):
        read_adata("s3://bucket/counts.h5ad")
    with pytest.raises(InputError, match="Cannot read a ndarray"):
        read_adata(COUNTS)


# --- URLs ---------------------------------------------------------------------------


class _Handler(SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.endswith("/truncated.h5ad"):
            # Promise more than we send, then hang up: a dropped connection mid-download.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 1000)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(
            root=root, url=f"http://127.0.0.1:{httpd.server_port}", requests=httpd.requests
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_url_downloaded_once_then_cached(server, cache_dir, h5ad_file):
    (server.root / "counts.h5ad").write_bytes(h5ad_file.read_bytes())
    url = f"{server.url}/counts.h5ad"
    first = read_adata(url)
    np.testing.assert_array_equal(dense(first.X), COUNTS)
    assert server.requests == ["/counts.h5ad"]
    cached = list(cache_dir.iterdir())
    assert len(cached) == 1
    assert cached[0].name.endswith("-counts.h5ad")
    assert cached[0].read_bytes() == h5ad_file.read_bytes()

    backed = read_adata(url, backed="r")
    assert backed.isbacked
    np.testing.assert_array_equal(dense(backed.X[:]), COUNTS)
    backed.file.close()
    assert server.requests == ["/counts.h5ad"]  # the second read used the cache


def test_urls_with_same_file_name_do_not_collide(server, cache_dir, tmp_path):
    for sub, scale in (("a", 1), ("b", 2)):
        (server.root / sub).mkdir()
        ad.AnnData(COUNTS.astype(np.float32) * scale).write_h5ad(server.root / sub / "data.h5ad")
    a = read_adata(f"{server.url}/a/data.h5ad")
    b = read_adata(f"{server.url}/b/data.h5ad")
    np.testing.assert_array_equal(dense(b.X), 2 * dense(a.X))
    assert len(list(cache_dir.iterdir())) == 2


def test_url_10x_h5_without_extension(server, cache_dir):
    write_10x_v3_h5(server.root / "download")
    assert_10x(read_adata(f"{server.url}/download"))


def test_url_404_leaves_nothing(server, cache_dir):
    with pytest.raises(DownloadError, match=r"missing\.h5ad: HTTP 404"):
        read_adata(f"{server.url}/missing.h5ad")
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_connection_refused_leaves_nothing(cache_dir):
    # A bound socket that never listens refuses connections, with no race on the port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/counts.h5ad"
        with pytest.raises(DownloadError, match=r"Could not download .*counts\.h5ad.*refused"):
            read_adata(url)
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_interrupted_download_leaves_nothing(server, cache_dir):
    url = f"{server.url}/truncated.h5ad"
    with pytest.raises(DownloadError, match=r"cut short: received 1008 of 100000 bytes"):
        read_adata(url)
    assert list(cache_dir.iterdir()) == []
    # Nothing was cached, so a retry goes to the network again.
    with pytest.raises(DownloadError):
        read_adata(url)
    assert server.requests == ["/truncated.h5ad", "/truncated.h5ad"]
