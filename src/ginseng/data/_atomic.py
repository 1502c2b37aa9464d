"""Crash-safe updates of a user's file: stage a complete copy, then swap it in at once.

HDF5 edits in place are not transactional (a process killed mid-write can leave the
heap damaged and the file unreadable), and an anndata ``.zarr`` update touches several
directories plus the consolidated metadata. So an update never writes into the user's
file. :func:`staged_update` instead

1. takes an exclusive lock (a sibling ``.NAME.ginseng-lock`` file), so that a second
   writer gets a clear error instead of a lost update, and removes what a killed run
   left behind (siblings ``.NAME.ginseng-tmp-*`` / ``.NAME.ginseng-old-*``);
2. makes a staged copy beside the file: an ``.h5ad`` is copied (a reflink where the file
   system offers one, e.g. btrfs or XFS, else a full copy); in a ``.zarr`` store every
   data file is hard-linked (free, and never modified: zarr writes new files by
   rename) and only metadata files are copied;
3. lets the caller write into the copy, fsyncs what changed, and swaps it in with one
   atomic rename (``os.replace`` for a file; ``renameat2(RENAME_EXCHANGE)`` for a
   directory on Linux).

Whenever the process dies, the path holds either the old file untouched or the new one
complete. The cost is documented in the data safety page: one copy of an ``.h5ad``
(time and free space of its size, unless reflinked); next to nothing for a ``.zarr``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .._errors import InputError
from .._logging import logger
from .._write import check_free_space, write_error

TMP_TAG = "ginseng-tmp"
OLD_TAG = "ginseng-old"
_METADATA = {".zmetadata", ".zattrs", ".zgroup", ".zarray", "zarr.json"}


def _sibling(path: Path, tag: str) -> Path:
    """A hidden, clearly named sibling that keeps the suffix (writers check it)."""
    unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.name}.{tag}-{unique}{path.suffix}")


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a sibling lock file, removed on release).

    The lock file is unlinked while still locked; a process that opened it just before
    would then lock a file no longer at that path, so the lock is only valid when the
    path still names the locked file.
    """
    import fcntl

    lock_path = path.with_name(f".{path.name}.ginseng-lock")
    try:
        handle = open(lock_path, "a")  # closed in the finally below
    except OSError as err:
        raise write_error(err, lock_path, "the lock file of an update") from err
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle.fileno()).st_ino != lock_path.stat().st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError) as err:
            handle.close()
            raise InputError(
                f"Another process is writing into {str(path)!r} (it holds "
                f"{str(lock_path)!r}); wait for it to finish, then try again."
            ) from err
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
    finally:
        handle.close()


def _recover(path: Path) -> None:
    """Undo what a killed update left beside ``path`` (we hold its lock).

    A staged copy (``-tmp-``) was never swapped in, so it is deleted. An old version
    (``-old-``) is deleted too, unless ``path`` itself is missing (a directory swap
    without ``RENAME_EXCHANGE`` died between its two renames): then it is put back.
    """
    for leftover in sorted(path.parent.glob(f".{path.name}.{OLD_TAG}-*")):
        if not path.exists():
            logger.warning("restoring %s from an interrupted update (%s)", path, leftover)
            leftover.rename(path)
        else:
            _remove(leftover)
    for leftover in path.parent.glob(f".{path.name}.{TMP_TAG}-*"):
        logger.info("removing %s, left by an interrupted update", leftover)
        _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _reflink(source: Path, target: Path) -> bool:
    """Clone ``source`` into ``target`` without copying data where the FS can (FICLONE)."""
    try:
        import fcntl

        ficlone = 0x40049409  # _IOW(0x94, 9, int), Linux
        with open(source, "rb") as src, open(target, "wb") as dst:
            fcntl.ioctl(dst.fileno(), ficlone, src.fileno())
        return True
    except (OSError, ImportError, AttributeError):
        target.unlink(missing_ok=True)
        return False


def _stage_file(path: Path, staged: Path) -> None:
    if not _reflink(path, staged):
        check_free_space(path.parent, path.stat().st_size, f"a staged copy of {str(path)!r}")
        shutil.copyfile(path, staged)


def _stage_tree(path: Path, staged: Path) -> None:
    """A copy of the store whose data files are hard links to the original's."""

    def link_or_copy(source: str, target: str) -> None:
        if Path(source).name in _METADATA:
            shutil.copy2(source, target)
        else:
            try:
                os.link(source, target)
            except OSError:  # another file system, or links not supported
                shutil.copy2(source, target)

    shutil.copytree(path, staged, copy_function=link_or_copy, symlinks=True)


def _fsync_tree(path: Path, since: float) -> None:
    """Flush to disk the files modified after ``since``, and every folder, below ``path``."""
    if path.is_file():
        _fsync(path)
        return
    for root, _, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            if file.stat().st_mtime >= since:
                _fsync(file)
        _fsync(Path(root))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _swap_in(staged: Path, path: Path) -> None:
    """Put ``staged`` at ``path`` in one atomic step (``path`` may not exist yet)."""
    if staged.is_file() or not path.exists():
        staged.replace(path)
    elif _exchange(staged, path):
        _remove(staged)  # now holds the old version
    else:
        # No atomic exchange: two renames; _recover() repairs a death between them.
        old = _sibling(path, OLD_TAG)
        path.rename(old)
        staged.rename(path)
        _remove(old)
    _fsync(path.parent)


@contextlib.contextmanager
def _swap_guarded(path: Path, what: str, stage) -> Iterator[Path]:
    """Lock ``path``, clean up after a killed run, yield a staged sibling, swap it in.

    ``stage(path, staged)`` prepares the sibling (a copy, or nothing for a new file).
    """
    with _lock(path):
        _recover(path)
        staged = _sibling(path, TMP_TAG)
        try:
            stage(path, staged)
            started = staged.stat().st_mtime if staged.exists() else 0.0
            yield staged
            try:
                _fsync_tree(staged, started)
                _swap_in(staged, path)
            except OSError as err:
                raise write_error(err, path, what) from err
        finally:
            if staged.exists():
                _remove(staged)


@contextlib.contextmanager
def staged_update(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Yield a staged copy of ``path`` to write into; swap it in if the block succeeds.

    ``path`` is an ``.h5ad`` file or a ``.zarr`` directory. On any exception (or a kill)
    the original is untouched and the staged copy is removed (by the next update of the
    same path, after a kill). ``what`` names the update in error messages.
    """

    def copy(path: Path, staged: Path) -> None:
        try:
            if path.is_dir():
                _stage_tree(path, staged)
            else:
                _stage_file(path, staged)
        except OSError as err:
            raise write_error(err, staged, f"a staged copy for {what}") from err

    with _swap_guarded(Path(path), what, copy) as staged:
        yield staged


@contextlib.contextmanager
def new_file(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Yield a temporary sibling to write a new file into; rename it to ``path`` at the end.

    ``path`` holds either nothing (or its previous content) or the complete new file,
    whenever the process dies; leftovers of a killed run are removed by the next one.
    """
    with _swap_guarded(Path(path), what, lambda path, staged: None) as staged:
        yield staged
