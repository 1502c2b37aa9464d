"""Read an AnnData from a file, a directory or a URL: h5ad, zarr, 10x h5, 10x mtx.

The readers are anndata's and scanpy's; this module only decides which one to call
(by content, not by file name alone), downloads URLs into the cache once, and turns
their many failure modes into :class:`~ginseng.InputError` / :class:`~ginseng.DownloadError`
messages that name the path.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .._errors import DownloadError, GinsengError, InputError, WriteError
from .._logging import logger, progress
from .._settings import settings
from .._write import check_free_space, writing
from ._declared import check_file
from ._formats import ACCEPTED_FORMATS, FORMAT_NAMES, detect_format

if TYPE_CHECKING:
    from anndata import AnnData

_BACKED_MODES = (None, "r", "r+")
_DOWNLOAD_TIMEOUT_S = 60
_DOWNLOAD_CHUNK = 1 << 20
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def read_adata(
    source: AnnData | str | os.PathLike[str],
    backed: Literal["r", "r+"] | None = None,
) -> AnnData:
    """Read single-cell counts from an AnnData, a file, a directory or a URL.

    The format is recognised by content: an HDF5 file with a ``matrix`` group (or
    Cell Ranger v2 genome groups) is a 10x ``.h5`` whatever its name, one with
    AnnData's ``obs``/``var`` is an ``.h5ad``.

    Parameters
    ----------
    source
        One of

        - an :class:`~anndata.AnnData`: returned as is (not copied); ``backed`` only
          applies to files and is ignored, so callers can pass ``backed="r"``
          whatever they were given;
        - a path (``str`` or :class:`~pathlib.Path`, ``~`` expanded) to an ``.h5ad``
          file (read with :func:`anndata.io.read_h5ad`), an AnnData ``.zarr`` store
          (:func:`anndata.io.read_zarr`), a 10x Genomics ``.h5`` file
          (:func:`scanpy.read_10x_h5`) or a 10x matrix directory
          (:func:`scanpy.read_10x_mtx`; Cell Ranger v3+ ``matrix.mtx.gz``,
          ``features.tsv.gz``, ``barcodes.tsv.gz`` or v2 ``matrix.mtx``,
          ``genes.tsv``, ``barcodes.tsv``, optionally with a common file-name
          prefix). 10x inputs keep only "Gene Expression" features, as scanpy does;
          their ``var_names`` are gene symbols made unique and the gene ids are in
          ``var["gene_ids"]``;
        - an ``http://`` or ``https://`` URL of such a file: downloaded once into
          ``ginseng.settings.cache_dir`` (named by a hash of the URL plus its file
          name) and read from there on later calls without network access. The
          download is atomic: a failed or interrupted one leaves no file.
          Redirects are followed (the cache is named after the URL given). HTTPS
          certificates are verified, host name included, against the system's
          certificate authorities; to trust another one (a private server, a company
          proxy), set the ``SSL_CERT_FILE`` environment variable to a PEM file that
          holds it (it then replaces the system's list).
    backed
        ``"r"`` (read-only) or ``"r+"`` (read-write) keeps the count matrix of an
        ``.h5ad`` on disk, so memory does not grow with the number of cells.
        ``None`` reads everything into memory. Only ``.h5ad`` files can be backed;
        asking for it on another format raises :class:`~ginseng.InputError`
        rather than silently loading the whole matrix.

    Returns
    -------
    The AnnData, backed if ``backed`` was given. Nothing is written anywhere
    except the downloaded file in the cache directory for a URL.

    Raises
    ------
    InputError
        The path does not exist; the format is not one of those above; a 10x
        directory lacks a file (the message names the missing and found files);
        the file is truncated or corrupt; ``backed`` is set for a non-``.h5ad``
        input or is not ``None``, ``"r"`` or ``"r+"``.
    DownloadError
        A URL could not be fetched (HTTP error, connection refused, a certificate
        that is untrusted or names another host, a redirect loop, no data from the
        server for 60 seconds, or a download cut short); the message names the URL
        and nothing is left in the cache.

    Examples
    --------
    An ``.h5ad`` file, kept on disk, and an AnnData ``.zarr`` store, read in memory
    (``adata`` holds raw counts, see :func:`ginseng.datasets.pbmc68k_counts`):

    >>> from ginseng.data.io import read_adata
    >>> adata.write_h5ad(tmp / "data.h5ad")
    >>> backed = read_adata(tmp / "data.h5ad", backed="r")
    >>> backed.isbacked, backed.shape
    (True, (700, 765))
    >>> adata.write_zarr(tmp / "data.zarr")
    >>> read_adata(tmp / "data.zarr").shape
    (700, 765)

    Cell Ranger output and URLs (downloaded once into ``ginseng.settings.cache_dir``):

    >>> pbmc = read_adata("~/data/filtered_feature_bc_matrix.h5")  # doctest: +SKIP
    >>> pbmc = read_adata("~/data/filtered_feature_bc_matrix/")  # doctest: +SKIP
    >>> ref = read_adata("https://example.org/reference.h5ad", backed="r")  # doctest: +SKIP
    """
    from anndata import AnnData

    if isinstance(source, AnnData):
        return source
    if backed not in _BACKED_MODES:
        raise InputError(f"backed must be None, 'r' or 'r+', got {backed!r}.")

    if isinstance(source, str) and (scheme := _URL_SCHEME.match(source)):
        if scheme.group(1).lower() not in ("http", "https"):
            raise InputError(
                f"Cannot read {source!r}: only http:// and https:// URLs are supported."
            )
        path = _cached_download(source)
        label = f"{source} (cached at {path})"
    elif isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        label = str(path)
        if not path.exists():
            raise InputError(f"{path} does not exist.")
    else:
        raise InputError(f"Cannot read a {type(source).__name__}; expected {ACCEPTED_FORMATS}.")

    fmt, prefix = detect_format(path, label)
    if backed is not None and fmt != "h5ad":
        raise InputError(
            f"backed={backed!r} works only for .h5ad files, but {label} is a "
            f"{FORMAT_NAMES[fmt]}. Read it in memory (backed=None), or convert it once "
            "with read_adata(path).write_h5ad('counts.h5ad') and read that backed."
        )
    adata = _read(path, fmt, prefix=prefix, backed=backed, label=label)
    logger.info(
        "read %s (%s%s): %d cells x %d genes",
        label,
        FORMAT_NAMES[fmt],
        f", backed {backed!r}" if backed else ", in memory",
        adata.n_obs,
        adata.n_vars,
    )
    return adata


def _read(path: Path, fmt: str, *, prefix: str, backed: str | None, label: str) -> AnnData:
    """Call the anndata/scanpy reader for ``fmt``; any failure becomes an InputError."""
    try:
        check_file(path, fmt, label)
        if fmt == "h5ad":
            import anndata

            return anndata.read_h5ad(path, backed=backed)
        if fmt == "zarr":
            import anndata

            return anndata.read_zarr(path)
        import scanpy as sc

        if fmt == "10x_mtx":
            return sc.read_10x_mtx(path, prefix=prefix)
        with warnings.catch_warnings():
            # scanpy keeps duplicated symbols; we make them unique right below.
            warnings.filterwarnings("ignore", message="Variable names are not unique")
            adata = sc.read_10x_h5(path)
        adata.var_names_make_unique()
        return adata
    except (GinsengError, MemoryError):
        raise
    except Exception as error:
        # h5py, zarr, pandas and scanpy raise anything from OSError to a bare Exception
        # on truncated or malformed input; the cause stays chained for debugging.
        raise InputError(
            f"Could not read {label} as a {FORMAT_NAMES[fmt]} (is it truncated or "
            f"corrupt?): {type(error).__name__}: {error}"
        ) from error


def cache_path(url: str) -> Path:
    """Where :func:`read_adata` keeps the download of ``url``.

    A short hash of the whole URL keeps two URLs with the same file name apart; the
    file name is kept so the cache stays readable and the extension survives.
    """
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[-100:]
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return Path(settings.cache_dir) / f"{digest}-{name}"


def _cached_download(url: str) -> Path:
    target = cache_path(url)
    if target.is_file():
        logger.info("using cached download of %s: %s", url, target)
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(
            f"Cannot create the cache directory {target.parent} for {url}: {error}"
        ) from error
    # Same directory as the target, so the rename (os.replace) is atomic; a dot name and a
    # unique suffix keep concurrent downloads of one URL from clobbering each other.
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    logger.info("downloading %s to %s", url, target)
    try:
        _fetch(url, partial, desc=f"downloading {target.name.split('-', 1)[1]}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _tls_context() -> ssl.SSLContext:
    """Certificate-verifying TLS context; ``SSL_CERT_FILE``, when set, is the trust list.

    Explicit because not every Python build's OpenSSL reads ``SSL_CERT_FILE`` itself.
    """
    cafile = os.environ.get("SSL_CERT_FILE") or None
    return ssl.create_default_context(cafile=cafile)


def _fetch(url: str, destination: Path, *, desc: str) -> None:
    from .. import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"ginseng/{__version__}"})
    try:
        context = _tls_context() if url.lower().startswith("https:") else None
        with urllib.request.urlopen(
            request, timeout=_DOWNLOAD_TIMEOUT_S, context=context
        ) as response:
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
            what = f"the download of {url}"
            if total is not None:
                check_free_space(destination.parent, total, what)
            received = 0
            # os.open honours the umask, unlike tempfile's private 0600 files.
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with (
                os.fdopen(fd, "wb") as out,
                progress(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=desc,
                ) as bar,
            ):
                while chunk := response.read(_DOWNLOAD_CHUNK):
                    with writing(destination, what, needed=total):
                        out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except WriteError:
        raise
    except urllib.error.HTTPError as error:
        raise DownloadError(
            f"Could not download {url}: HTTP {error.code} {error.reason}."
        ) from error
    except urllib.error.URLError as error:
        raise DownloadError(f"Could not download {url}: {error.reason}.") from error
    except (http.client.HTTPException, OSError, ValueError) as error:
        # Timeouts, resets, broken chunked encoding, malformed URLs, a full disk.
        raise DownloadError(f"Download of {url} failed: {type(error).__name__}: {error}") from error
    # http.client returns a short body without complaint when the server closes early.
    if total is not None and received != total:
        raise DownloadError(
            f"Download of {url} was cut short: received {received} of {total} bytes."
        )
