"""ginseng: out-of-core cell-type classifiers for single-cell data.

Import as ``import ginseng as gs``; the public faces are :mod:`ginseng.pp`,
:mod:`ginseng.tl` and :mod:`ginseng.pl`, plus :data:`ginseng.settings`. Importing
ginseng does not import jax: the network code loads only when a function needs it.
"""

from importlib.metadata import PackageNotFoundError, version

from ._errors import (
    DownloadError,
    GeneMismatchError,
    GinsengError,
    InputError,
    ModelFormatError,
    StoreError,
    WriteError,
)
from ._lazy import lazy_attributes
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
    "WriteError",
    "__version__",
    "classify",
    "logging",
    "pl",
    "pp",
    "settings",
    "tl",
]

# Submodules load on first use so that `import ginseng` stays light.
__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    {
        **{
            name: f".{name}"
            for name in (
                "pp",
                "tl",
                "pl",
                "data",
                "datasets",
                "logging",
                "train",
                "model",
                "utils",
            )
        },
        "classify": "._seed_api:classify",
    },
)
