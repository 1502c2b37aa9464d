"""Data: reading inputs and the on-disk GinsengDataset store."""

from .dataset import GinsengDataset

__all__ = ["GinsengDataset"]
