"""Tools: train classifiers and annotate cells."""

from ._train import train

__all__: list[str] = ["train"]
