"""ginseng.data.io.read_adata on every accepted input, made here in the tests."""

from __future__ import annotations

import gzip
import json
import logging
import re
import socket
import ssl
import threading
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
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
        self.server.user_agents.append(self.headers.get("User-Agent", ""))
        for prefix, code in (("/moved/", 301), ("/found/", 302)):
            if self.path.startswith(prefix):  # /moved/x -> /x, /found/moved/x -> /moved/x
                self.send_response(code)
                self.send_header("Location", "/" + self.path.removeprefix(prefix))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if self.path == "/loop.h5ad":
            self.send_response(302)
            self.send_header("Location", "/loop.h5ad")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/status/"):
            self.send_error(int(self.path.split("/")[2]))
            return
        if self.path.endswith("/stalled.h5ad"):
            # Headers and a first part of the body, then silence until the test ends.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x89HDF\r\n\x1a\n")
            self.wfile.flush()
            self.server.release.wait(30)
            self.close_connection = True
            return
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


@contextmanager
def _serve(root: Path, tls: ssl.SSLContext | None = None):
    """A real HTTP(S) server on 127.0.0.1 serving ``root``, stopped on exit."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.requests, httpd.user_agents = [], []
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    scheme = "http" if tls is None else "https"
    try:
        yield SimpleNamespace(
            root=root,
            url=f"{scheme}://127.0.0.1:{httpd.server_port}",
            requests=httpd.requests,
            user_agents=httpd.user_agents,
        )
    finally:
        httpd.release.set()  # let stalled handlers finish, so server_close can join them
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    with _serve(root) as served:
        yield served


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


def test_redirects_are_followed_and_cached_under_the_first_url(server, cache_dir, h5ad_file):
    (server.root / "counts.h5ad").write_bytes(h5ad_file.read_bytes())
    url = f"{server.url}/found/moved/counts.h5ad"  # 302, then 301, then the file
    np.testing.assert_array_equal(dense(read_adata(url).X), COUNTS)
    assert server.requests == ["/found/moved/counts.h5ad", "/moved/counts.h5ad", "/counts.h5ad"]
    assert set(server.user_agents) == {f"ginseng/{gs.__version__}"}
    (cached,) = cache_dir.iterdir()
    assert cached.name.endswith("-counts.h5ad") and cached.read_bytes() == h5ad_file.read_bytes()
    read_adata(url)
    assert len(server.requests) == 3  # cached under the URL asked for: no new request
    # A redirect to a missing file is that file's HTTP error.
    with pytest.raises(DownloadError, match=r"moved/missing\.h5ad: HTTP 404"):
        read_adata(f"{server.url}/moved/missing.h5ad")


def test_cache_directory_that_cannot_be_created(server, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(gs.settings, "cache_dir", blocker / "cache")
    url = f"{server.url}/counts.h5ad"
    with pytest.raises(DownloadError, match=r"Cannot create the cache directory .*a_file/cache"):
        read_adata(url)
    assert server.requests == []  # refused before any network access


def test_redirect_loop_is_refused_after_a_few_requests(server, cache_dir):
    url = f"{server.url}/loop.h5ad"
    with pytest.raises(DownloadError, match=rf"Could not download {re.escape(url)}: HTTP 302"):
        read_adata(url)
    assert 2 <= len(server.requests) <= 11
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


@pytest.mark.parametrize("status", [403, 500, 503])
def test_http_errors(server, cache_dir, status):
    url = f"{server.url}/status/{status}"
    with pytest.raises(DownloadError, match=rf"Could not download {re.escape(url)}: HTTP {status}"):
        read_adata(url)
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


@pytest.fixture
def short_timeout(monkeypatch):
    """The socket timeout of downloads, 60 s in the code, shortened for the test."""
    from ginseng.data import _read

    monkeypatch.setattr(_read, "_DOWNLOAD_TIMEOUT_S", 0.5)


def test_server_that_never_answers_times_out(cache_dir, short_timeout):
    # A socket that listens but never accepts: the connection is made (by the kernel) and
    # the request sent, but no response ever comes. Closing it after 20 s bounds the test
    # if the timeout were lost (the error would then be a reset, failing the match).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/counts.h5ad"
        guard = threading.Timer(20, sock.close)
        guard.start()
        try:
            with pytest.raises(DownloadError, match=rf"{re.escape(url)}.*timed out"):
                read_adata(url)
        finally:
            guard.cancel()
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_server_that_stalls_mid_download_times_out(server, cache_dir, short_timeout):
    url = f"{server.url}/stalled.h5ad"
    with pytest.raises(DownloadError, match=rf"Download of {re.escape(url)} failed: .*timed out"):
        read_adata(url)
    assert list(cache_dir.iterdir()) == []  # no partial file either
    assert server.requests == ["/stalled.h5ad"]


# --- HTTPS, with a certificate authority made here -----------------------------------------


def _certificate_authority(directory: Path, *, host_ip: str | None, host_dns: str | None):
    """Write ``ca.pem`` (a self-signed authority) and a server certificate it signed.

    The server certificate names ``host_ip`` and/or ``host_dns``; returns the paths of
    the authority's certificate, the server's certificate and its key.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def build(subject, issuer, public_key, extensions, signing_key):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build(
        "ginseng test CA", "ginseng test CA", ca_key.public_key(),
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ), True),
            (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
        ],
        ca_key,
    )  # fmt: skip
    names = []
    if host_ip is not None:
        names.append(x509.IPAddress(IPv4Address(host_ip)))
    if host_dns is not None:
        names.append(x509.DNSName(host_dns))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(
        host_dns or host_ip, "ginseng test CA", key.public_key(),
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.SubjectAlternativeName(names), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        ],
        ca_key,
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@contextmanager
def _https_server(tmp_path, h5ad_file, **names):
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, cert, key = _certificate_authority(certs, **names)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    root = tmp_path / "served"
    root.mkdir()
    (root / "counts.h5ad").write_bytes(h5ad_file.read_bytes())
    with _serve(root, tls) as served:
        served.ca = ca
        yield served


@pytest.fixture
def https_server(tmp_path, h5ad_file):
    with _https_server(tmp_path, h5ad_file, host_ip="127.0.0.1", host_dns="localhost") as served:
        yield served


def test_https_certificate_is_verified(https_server, cache_dir, monkeypatch):
    # Not signed by an authority the system trusts: refused, nothing downloaded.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    url = f"{https_server.url}/counts.h5ad"
    with pytest.raises(DownloadError, match=rf"{re.escape(url)}: .*CERTIFICATE_VERIFY_FAILED"):
        read_adata(url)
    assert https_server.requests == []
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_https_with_an_authority_from_ssl_cert_file(https_server, cache_dir, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(https_server.ca))
    url = f"{https_server.url}/moved/counts.h5ad"  # a redirect over HTTPS too
    np.testing.assert_array_equal(dense(read_adata(url).X), COUNTS)
    assert https_server.requests == ["/moved/counts.h5ad", "/counts.h5ad"]


def test_https_certificate_must_name_the_host(tmp_path, h5ad_file, cache_dir, monkeypatch):
    # Trusted, but issued to "localhost" only, while the URL names 127.0.0.1.
    with _https_server(tmp_path, h5ad_file, host_ip=None, host_dns="localhost") as served:
        monkeypatch.setenv("SSL_CERT_FILE", str(served.ca))
        url = f"{served.url}/counts.h5ad"
        with pytest.raises(DownloadError, match=rf"{re.escape(url)}: .*(mismatch|match)"):
            read_adata(url)
        assert served.requests == []
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


# --- URLs as input of the training entry point ----------------------------------------------


def test_tl_train_from_a_url_equals_training_in_memory(server, cache_dir, tmp_path, make_toy):
    adata = make_toy(n_cells=200, n_genes=20, n_types=3, seed=8)
    adata.write_h5ad(server.root / "reference.h5ad")
    quick = {"hidden_dim": 8, "batch_size": 16, "upper": 5, "min_steps": 20, "seed": 2}
    from_url = gs.tl.train(f"{server.url}/reference.h5ad", "cell_type", epochs=1, **quick)
    assert server.requests == ["/reference.h5ad"]
    in_memory = gs.tl.train(adata, "cell_type", epochs=1, **quick)
    assert list(from_url.genes) == list(adata.var_names)
    assert list(from_url.labels) == list(in_memory.labels)
    assert from_url.params.keys() == in_memory.params.keys()
    for key in from_url.params:
        np.testing.assert_array_equal(from_url.params[key], in_memory.params[key])
