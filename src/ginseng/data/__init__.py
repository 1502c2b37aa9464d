"""Data: reading inputs and the on-disk GinsengDataset store."""

from importlib import import_module

__all__ = ["GinsengDataset", "io"]


def __getattr__(name: str):
    # Deferred so that reading a file does not import zarr.
    if name == "GinsengDataset":
        from .dataset import GinsengDataset

        return GinsengDataset
    if name == "io":
        return import_module(".io", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
