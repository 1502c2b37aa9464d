"""Pass 1 of the store's external shuffle: rows routed to flat binary shard files.

Each shard owns a contiguous range of destination rows; pass 1 appends every source
row to its shard's files (destination, length, values, gene indices), and pass 2
(:mod:`ginseng.data._create`) reads one shard at a time back into memory.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

import numpy as np
import scipy.sparse as sp


class ShardFiles:
    """Flat binary files, one set per shard, that pass 1 appends rows to."""

    def __init__(self, root: Path, n_shards: int) -> None:
        self.root = root
        self.root.mkdir()
        self.n_shards = n_shards
        # Handles stay open between appends: reopening every shard's four files for
        # every source chunk cost ~10% of creation at 1M cells. Every source chunk visits
        # all shards in turn, so the cache must hold them all to help; it takes up to
        # half of the process's file descriptor limit and closes the least recently used
        # handle beyond that.
        try:
            import resource

            soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except ImportError:  # Windows: no rlimit; its C runtime allows 512 files
            soft_limit = 512
        self._max_open = max(16, min(4 * n_shards, soft_limit // 2))
        self._open: OrderedDict[tuple[int, str], BinaryIO] = OrderedDict()

    def _path(self, shard: int, part: str) -> Path:
        return self.root / f"{shard}.{part}"

    def _handle(self, shard: int, part: str) -> BinaryIO:
        key = (shard, part)
        if key in self._open:
            self._open.move_to_end(key)
        else:
            if len(self._open) >= self._max_open:
                self._open.popitem(last=False)[1].close()
            self._open[key] = open(self._path(shard, part), "ab")
        return self._open[key]

    def append(self, shard: int, dest: np.ndarray, block: sp.csr_matrix) -> None:
        for part, values in (
            ("dest", dest.astype(np.int64, copy=False)),
            ("nnz", np.diff(block.indptr).astype(np.int64, copy=False)),
            ("data", block.data.astype(np.float32, copy=False)),
            ("indices", block.indices.astype(np.int32, copy=False)),
        ):
            values.tofile(self._handle(shard, part))

    def close(self) -> None:
        """Flush and close every handle (before reading shards back, and on failure)."""
        while self._open:
            self._open.popitem()[1].close()

    def read(self, shard: int, n_genes: int) -> tuple[np.ndarray, sp.csr_matrix]:
        """Return the shard's destination positions and its rows, in arrival order."""

        def load(part: str, dtype) -> np.ndarray:
            path = self._path(shard, part)
            return np.fromfile(path, dtype=dtype) if path.exists() else np.empty(0, dtype)

        dest = load("dest", np.int64)
        indptr = np.concatenate([[0], np.cumsum(load("nnz", np.int64))])
        block = sp.csr_matrix(
            (load("data", np.float32), load("indices", np.int32), indptr),
            shape=(dest.size, n_genes),
        )
        return dest, block
