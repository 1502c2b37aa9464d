"""Guards for ginseng's own writes: free-space checks and errors that name the path.

A full disk surfaces from numpy, h5py or zarr as a bare ``OSError`` (``[Errno 28] No
space left on device``, or h5py's ``'42537 requested and 33892 written'``) that says
neither which file nor which step. Every write ginseng makes runs inside
:func:`writing`, which re-raises such errors as :class:`~ginseng.WriteError` naming
both, with the free space left and, where the step estimated it, the space it needs.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._errors import GinsengError, WriteError

_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it >= 1 (``'1.5 GiB'``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free space of the file system holding ``folder`` (``None`` if it cannot be read)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def check_free_space(folder: Path, needed: int, what: str, *, margin: float = 1.0) -> None:
    """Refuse early when ``folder`` has less than ``margin * needed`` bytes free.

    A ``margin`` below 1 refuses only when the space is clearly short, for rough
    estimates. The message quotes ``needed`` and the free space.
    """
    free = free_bytes(folder)
    if free is not None and free < margin * needed:
        raise WriteError(
            errno.ENOSPC,
            f"Not enough free space for {what}: it needs about {format_bytes(needed)} "
            f"and {format_bytes(free)} are free in {str(folder)!r}. Free some space or "
            "choose a path on another disk.",
        )


def write_error(
    err: OSError, path: str | os.PathLike, what: str, *, needed: int | None = None
) -> OSError:
    """The :class:`~ginseng.WriteError` to raise for ``err`` while writing ``what``.

    It names ``path`` and ``what``; for a lack of space it adds the free space left and,
    when the step estimated it, the ``needed`` bytes. A WriteError is returned as it is.
    """
    if isinstance(err, WriteError):
        return err
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    message = f"Writing {what} to {str(path)!r} failed: {err.strerror or err}"
    # h5py reports a short write as "... requested and ... written", without an errno.
    if err.errno in _SPACE_ERRNOS or "requested and" in str(err):
        free = free_bytes(folder)
        message += " (the disk is full or a quota is reached"
        if free is not None:
            message += f": {format_bytes(free)} free"
        if needed is not None:
            message += f"; this step needs about {format_bytes(needed)}"
        message += ")"
    return WriteError(err.errno or errno.EIO, message)


@contextmanager
def writing(path: str | os.PathLike, what: str, *, needed: int | None = None) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``what`` to ``path`` into a WriteError.

    ``needed`` (bytes), when the step estimated it, is quoted for a lack of space.
    ginseng's own errors pass through unchanged.
    """
    try:
        yield
    except GinsengError:
        raise
    except OSError as err:
        raise write_error(err, path, what, needed=needed) from err
