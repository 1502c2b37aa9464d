"""Utilities behind the public faces (``ginseng.utils.select_hvgs`` is the seed path)."""

from .hvg import select_hvgs

__all__ = ["select_hvgs"]
