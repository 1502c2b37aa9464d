"""Tools: train classifiers and annotate cells."""

__all__: list[str] = []
