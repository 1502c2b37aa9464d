"""Data: reading inputs and the on-disk GinsengDataset store.

Besides the user-facing :class:`GinsengDataset` and :mod:`ginseng.data.io`, this
package exports the data functions the faces (``tl``, ``pp``, the CLI) build on:
gene alignment, chunked matrix access, the raw-count check and crash-safe writing.
They are the engine's interface within ginseng (see ``docs/modules.md``), loaded on
first use so that importing :mod:`ginseng.data` stays light.
"""

from .._lazy import lazy_attributes

__all__ = [
    "GeneAlignment",
    "GinsengDataset",
    "align_genes",
    "backed_mode",
    "block_share",
    "check_finite_nonnegative",
    "check_raw_counts",
    "check_writable",
    "detect_format",
    "get_matrix",
    "io",
    "iter_row_chunks",
    "matrix_name",
    "new_file",
    "read_adata",
    "read_ahead",
    "select_genes",
    "staged_update",
    "write_results",
]


# Deferred so that reading a file does not import zarr.
__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    {
        "GinsengDataset": ".dataset:GinsengDataset",
        "io": ".io",
        "GeneAlignment": "._align:GeneAlignment",
        "align_genes": "._align:align_genes",
        "get_matrix": "._matrix:get_matrix",
        "matrix_name": "._matrix:matrix_name",
        "iter_row_chunks": "._matrix:iter_row_chunks",
        "read_ahead": "._matrix:read_ahead",
        "check_finite_nonnegative": "._matrix:check_finite_nonnegative",
        "check_raw_counts": "._preflight:check_raw_counts",
        "check_writable": "._writeback:check_writable",
        "backed_mode": "._writeback:backed_mode",
        "write_results": "._writeback:write_results",
        "new_file": "._atomic:new_file",
        "staged_update": "._atomic:staged_update",
        "detect_format": "._formats:detect_format",
        "block_share": "._stream:block_share",
        "read_adata": "._read:read_adata",
        "select_genes": "._inputs:select_genes",
    },
)
