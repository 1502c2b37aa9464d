"""The ``"ginseng"`` logger, scanpy-style timings and progress bars."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta

logger = logging.getLogger("ginseng")


@contextmanager
def timed(message: str) -> Iterator[None]:
    """Log ``message`` at info level, then ``finished (0:00:03)`` when the block ends."""
    logger.info(message)
    start = time.perf_counter()
    yield
    elapsed = timedelta(seconds=round(time.perf_counter() - start))
    logger.info("    finished (%s)", elapsed)


def progress(iterable: Iterable | None = None, **kwargs):
    """Wrap ``iterable`` in a tqdm bar unless ``ginseng.settings.progress_bar`` is off."""
    from tqdm.auto import tqdm

    from ._settings import settings

    return tqdm(iterable, disable=not settings.progress_bar, dynamic_ncols=True, **kwargs)
