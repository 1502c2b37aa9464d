"""The classifier network and the state inference needs (params, genes, labels, card).

Everything loads on first use: :class:`GinsengModelState` and the model file functions
import no jax; the network does.
"""

from importlib import import_module

__all__ = ["GinsengClassifier", "GinsengModelState", "load_model", "save_model"]

_LAZY = {
    "GinsengClassifier": ".network",
    "GinsengModelState": ".state",
    "load_model": ".file",
    "save_model": ".file",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
