"""ginseng: out-of-core cell-type classifiers for single-cell data.

Import as ``import ginseng as gs``; the public faces are :mod:`ginseng.pp`,
:mod:`ginseng.tl` and :mod:`ginseng.pl`, plus :data:`ginseng.settings`. Importing
ginseng does not import jax: the network code loads only when a function needs it.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from ._errors import (
    DownloadError,
    GeneMismatchError,
    GinsengError,
    InputError,
    ModelFormatError,
    StoreError,
)
from ._settings import settings

try:
    __version__ = version("ginseng")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "DownloadError",
    "GeneMismatchError",
    "GinsengError",
    "InputError",
    "ModelFormatError",
    "StoreError",
    "__version__",
    "classify",
    "pl",
    "pp",
    "settings",
    "tl",
]

_SUBMODULES = {"pp", "tl", "pl", "data", "datasets", "train", "model", "utils"}


def __getattr__(name: str):
    # Submodules load on first use so that `import ginseng` stays light.
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name == "classify":
        return import_module("._seed_api", __name__).classify
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | {"classify"})
