"""Data: reading inputs and the on-disk GinsengDataset store."""

__all__ = ["GinsengDataset"]


def __getattr__(name: str):
    # Deferred so that reading a file does not import zarr.
    if name == "GinsengDataset":
        from .dataset import GinsengDataset

        return GinsengDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
