"""Tools: train classifiers and annotate cells.

:mod:`ginseng.tl.kernel` holds the per-chunk classification kernel and its serial loop,
for custom loops and (later) dask.
"""

from ._classify import classify
from ._explain import explain, marker_genes
from ._results import results_table
from ._train import train

__all__: list[str] = ["classify", "explain", "marker_genes", "results_table", "train"]
