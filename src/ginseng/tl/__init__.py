"""Tools: train classifiers and annotate cells."""

from ._classify import classify
from ._train import train

__all__: list[str] = ["classify", "train"]
