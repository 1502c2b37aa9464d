"""Package-wide settings, exposed as ``ginseng.settings``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import InputError
from ._validate import positive_int


def _default_cache_dir() -> Path:
    if explicit := os.environ.get("GINSENG_CACHE_DIR"):
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ginseng"


@dataclass
class GinsengSettings:
    """Settings shared by every ginseng function.

    Attributes
    ----------
    verbosity
        Level of the ``"ginseng"`` logger: 0 errors, 1 warnings, 2 info, 3 debug.
        Setting it sets the logger level; ginseng adds no handler of its own.
    progress_bar
        Show tqdm progress bars for long work (store creation, epochs, chunks).
    chunk_size
        Default number of cells read at once from an AnnData or a file; peak
        memory of chunked work grows with it, not with the number of cells.
    cache_dir
        Where files given by URL are downloaded to (once).
    reader_threads
        Threads that read and decode a store's next buffers while training consumes
        the current one (:meth:`ginseng.data.GinsengDataset.stream`); each holds one
        buffer ahead. The batches are the same whatever the number.

    Examples
    --------
    The one instance is ``ginseng.settings``:

    >>> import ginseng as gs
    >>> gs.settings.verbosity = 2  # log progress messages and timings
    >>> gs.settings.progress_bar = False
    >>> gs.settings.chunk_size = 5_000
    >>> gs.settings  # doctest: +ELLIPSIS
    GinsengSettings(verbosity=2, progress_bar=False, chunk_size=5000, cache_dir=..., reader_threads=1)

    Values are checked when set:

    >>> gs.settings.chunk_size = 0
    Traceback (most recent call last):
    ...
    ginseng._errors.InputError: chunk_size must be a positive integer, got 0.
    """

    _verbosity: int = 1
    progress_bar: bool = True
    chunk_size: int = 10_000
    cache_dir: Path = field(default_factory=_default_cache_dir)
    reader_threads: int = 1

    @property
    def verbosity(self) -> int:
        """The logger level (0 errors, 1 warnings, 2 info, 3 debug)."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        levels = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}
        if value not in levels:
            raise InputError(f"verbosity must be one of {sorted(levels)}, got {value!r}")
        self._verbosity = value
        logging.getLogger("ginseng").setLevel(levels[value])

    def __setattr__(self, name: str, value) -> None:
        if name == "cache_dir":
            value = Path(value).expanduser()
        elif name in ("chunk_size", "reader_threads"):
            value = positive_int(name, value)
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        return (
            f"GinsengSettings(verbosity={self.verbosity}, progress_bar={self.progress_bar}, "
            f"chunk_size={self.chunk_size}, cache_dir={str(self.cache_dir)!r}, "
            f"reader_threads={self.reader_threads})"
        )


settings = GinsengSettings()
