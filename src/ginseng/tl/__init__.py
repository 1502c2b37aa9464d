"""Tools: train classifiers and annotate cells.

:mod:`ginseng.tl.kernel` holds the per-chunk classification kernel and its serial loop,
for custom loops and (later) dask.
"""

from ._classify import classify
from ._results import results_table
from ._train import train

__all__: list[str] = ["classify", "results_table", "train"]
