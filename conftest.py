"""Doctest namespace: the objects the Examples sections of the docstrings use.

``python -m pytest`` runs the Examples in ``src/ginseng`` (``--doctest-modules``). Each
example starts with these names defined, as if a notebook had run:

- ``gs``, ``np``, ``pd``, ``ad``: ``ginseng``, ``numpy``, ``pandas``, ``anndata``;
- ``adata``: raw counts of :func:`ginseng.datasets.pbmc68k_counts` (700 cells x 765
  genes; counts in ``X`` and ``layers["counts"]``, labels in ``obs["bulk_labels"]``);
- ``reference``, ``query``: its even and odd cells;
- ``state``: a small model trained once per session on ``reference``;
- ``tmp``: an empty directory (:class:`pathlib.Path`) for files.

The AnnData objects are fresh copies for every example, so examples cannot affect one
another; the data loading and the training are done once per session.
"""

from __future__ import annotations

import os
import sys

# Examples that plot must never try to open a window.
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

# Small and quick: the examples show the calls, not a good model.
DOCTEST_TRAIN = {"epochs": 2, "hidden_dim": 32, "batch_size": 64, "min_steps": 50}
_SETTINGS = ("verbosity", "progress_bar", "chunk_size", "cache_dir")


@pytest.fixture(scope="session")
def _doctest_data():
    import ginseng as gs

    gs.settings.progress_bar = False
    adata = gs.datasets.pbmc68k_counts()
    reference, query = adata[::2].copy(), adata[1::2].copy()
    state = gs.tl.train(reference.copy(), "bulk_labels", **DOCTEST_TRAIN)
    return adata, reference, query, state


@pytest.fixture(autouse=True)
def _doctest_objects(request):
    """Fill ``doctest_namespace`` for doctest items only (regular tests pay nothing)."""
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    import anndata as ad
    import numpy as np
    import pandas as pd

    import ginseng as gs

    # Examples may change gs.settings (its own example does); later tests must not see it.
    saved = {k: getattr(gs.settings, k) for k in _SETTINGS}
    gs.settings.progress_bar = False
    adata, reference, query, state = request.getfixturevalue("_doctest_data")
    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(
        gs=gs,
        np=np,
        pd=pd,
        ad=ad,
        adata=adata.copy(),
        reference=reference.copy(),
        query=query.copy(),
        state=state,
        tmp=request.getfixturevalue("tmp_path"),
    )
    yield
    for key, value in saved.items():
        setattr(gs.settings, key, value)
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        plt.close("all")
