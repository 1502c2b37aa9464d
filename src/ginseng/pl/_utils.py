"""Helpers shared by the plots: input checks, figure creation, showing and saving.

matplotlib is imported inside the functions so that ``import ginseng`` stays light.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from .._errors import InputError


def is_model(obj: Any) -> bool:
    """Whether ``obj`` is a model state or a path that should be read as a model file."""
    from ..model.state import GinsengModelState

    return isinstance(obj, GinsengModelState | str | os.PathLike)


def resolve_model(model: Any):
    """Return the :class:`~ginseng.model.GinsengModelState` for a state or a model-file path."""
    from ..model.file import as_model_state

    return as_model_state(model)


def check_adata(adata: Any, func: str) -> None:
    """Refuse anything that is not an AnnData with a readable message."""
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise InputError(
            f"ginseng.pl.{func} expects an AnnData as first argument, got {type(adata).__name__}."
        )


def obs_column(adata, key: str, hint: str = "") -> pd.Series:
    """``adata.obs[key]``, or an InputError naming the key and what is there instead."""
    if key not in adata.obs.columns:
        shown = ", ".join(map(repr, list(adata.obs.columns)[:12]))
        more = ", ..." if adata.obs.shape[1] > 12 else ""
        raise InputError(
            f"adata.obs has no column {key!r}{hint}. Available columns: {shown or 'none'}{more}."
        )
    return adata.obs[key]


def observed_order(values: pd.Series) -> list[str]:
    """Labels present in ``values`` as strings, in category order or else sorted."""
    values = values.dropna()
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = set(values.astype(str))
        return [str(c) for c in values.cat.categories if str(c) in present]
    unique = pd.unique(values)
    try:
        unique = sorted(unique)
    except TypeError:  # mixed types that do not compare: fall back to their names
        unique = sorted(unique, key=str)
    return [str(v) for v in unique]


def new_axes(ax, figsize: tuple[float, float]):
    """Return ``(figure, axes, created)``, creating a figure only when ``ax`` is None."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax, True
    return ax.figure, ax, False


def _autoshow() -> bool:
    # Follow scanpy.settings.autoshow when scanpy is loaded, without importing it ourselves.
    scanpy = sys.modules.get("scanpy")
    settings = getattr(scanpy, "settings", None)
    return bool(getattr(settings, "autoshow", True))


def finish(fig, *, created: bool, show: bool | None, save: str | os.PathLike | None) -> None:
    """Save the figure to ``save`` (if given), then show it as scanpy would.

    ``show=None`` shows the figure only when the plot created it (``ax`` was None) and
    ``scanpy.settings.autoshow`` (when scanpy is loaded) is on, so that drawing into
    axes of one's own figure never triggers ``plt.show()``.
    """
    import matplotlib.pyplot as plt

    if save is not None:
        if isinstance(save, bool) or not isinstance(save, str | os.PathLike):
            raise InputError(f"save= takes a file path such as 'plot.png', got {save!r}.")
        path = Path(save).expanduser()
        if not path.parent.is_dir():
            raise InputError(f"Cannot save the figure to {str(path)!r}: no such directory.")
        fig.savefig(path, dpi=150, bbox_inches="tight")
    if show is None:
        show = created and _autoshow()
    if show:
        plt.show()


def colors_from_uns(adata, key: str, order: list[str]) -> list:
    """One colour per label of ``order``: ``uns[f"{key}_colors"]`` when it fits, else tab10/20.

    Plots colour labels as scanpy's embeddings do; the stored colours of
    ``gs.tl.classify``'s columns come from :func:`ginseng.tl.kernel.model_label_colors`.
    """
    from matplotlib import colormaps, colors

    column = adata.obs[key] if key in adata.obs.columns else None
    stored = adata.uns.get(f"{key}_colors")
    if (
        column is not None
        and isinstance(column.dtype, pd.CategoricalDtype)
        and stored is not None
        and len(stored) == len(column.cat.categories)
        and all(colors.is_color_like(c) for c in stored)
    ):
        mapping = {str(c): col for c, col in zip(column.cat.categories, stored, strict=True)}
        return [mapping.get(label, "lightgray") for label in order]
    cmap = colormaps["tab10" if len(order) <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(len(order))]
