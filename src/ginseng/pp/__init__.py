"""Preprocessing: choose the genes a model is trained on."""

from ..utils.hvg import select_hvgs

__all__ = ["select_hvgs"]
