"""Data: reading inputs and the on-disk GinsengDataset store."""

from .._lazy import lazy_attributes

__all__ = ["GinsengDataset", "io"]


# Deferred so that reading a file does not import zarr.
__getattr__, __dir__ = lazy_attributes(
    __name__, globals(), {"GinsengDataset": ".dataset:GinsengDataset", "io": ".io"}
)
