"""Whether the dask workers' memory allocator suits ``gs.tl.classify``'s blocks.

dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; setting any glibc
malloc threshold turns off its dynamic mmap threshold, so each block's arrays are
mapped and unmapped, and the kernel took twice as long per block (docs: "Scaling
out"). :func:`warn_if_workers_unmap_blocks` reads the workers' settings and says how to
change them; the CLI's own workers start with them raised (``ginseng.cli``).
"""

from __future__ import annotations

import os
from typing import Any

from .._logging import logger

# glibc's malloc variables: setting any of them turns off its dynamic mmap threshold.
_MALLOC_VARIABLES = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_MMAP_MAX_",
)
# Below this mmap threshold a block's larger arrays are mapped and unmapped each time.
_MMAP_THRESHOLD_ENOUGH = 32 * 2**20
_ALLOCATOR_CHECKED: set[str] = set()  # schedulers whose workers were checked


def _malloc_environ() -> dict[str, str]:
    """On a worker: its glibc malloc variables (none on another C library)."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        return {}
    return {name: os.environ[name] for name in _MALLOC_VARIABLES if name in os.environ}


def _unmaps_blocks(environ: dict[str, str]) -> bool:
    """Whether malloc maps and unmaps every array above 128 KiB with ``environ``."""
    if not environ:
        return False  # glibc's dynamic threshold grows to fit the blocks
    try:
        return int(environ.get("MALLOC_MMAP_THRESHOLD_", 0)) < _MMAP_THRESHOLD_ENOUGH
    except ValueError:
        return False


def warn_if_workers_unmap_blocks(client: Any) -> None:
    """Warn, once per scheduler, when the workers run with dask's malloc setting alone.

    dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which turns off
    glibc's dynamic mmap threshold: each block's arrays are then mapped and unmapped,
    and the kernel took twice as long per block (docs: "Scaling out"). The user's
    cluster is theirs to configure, so this only says how.
    """
    import warnings

    address = str(getattr(client.scheduler, "address", id(client)))
    if address in _ALLOCATOR_CHECKED:
        return
    _ALLOCATOR_CHECKED.add(address)
    try:
        environs = client.run(_malloc_environ)
    except (OSError, TimeoutError) as err:  # a hint: the classification says what failed
        logger.debug("could not read the workers' malloc settings: %s", err)
        return
    slow = {worker: env for worker, env in environs.items() if _unmaps_blocks(env)}
    if not slow:
        return
    from ..cli import WORKER_ENVIRON  # what the CLI's own workers start with

    example = next(iter(slow.values()))
    raised = ", ".join(
        f"'distributed.nanny.pre-spawn-environ.{name}': {value}"
        for name, value in WORKER_ENVIRON.items()
    )
    warnings.warn(
        f"{len(slow)} of {len(environs)} dask workers run with "
        f"{', '.join(f'{k}={v}' for k, v in example.items())}: glibc then maps and unmaps "
        "every array above 128 KiB, which made ginseng's classification about twice as "
        "slow per block. Start the workers with MALLOC_TRIM_THRESHOLD_ and "
        f"MALLOC_MMAP_THRESHOLD_ raised, e.g. dask.config.set({{{raised}}}) before the cluster "
        "starts (see ginseng's 'Scaling out' docs); `ginseng annotate --workers N` does this.",
        UserWarning,
        stacklevel=5,  # classify's caller: classify -> run_classify -> run_dask
    )
