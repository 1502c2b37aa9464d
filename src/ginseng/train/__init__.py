"""Training: settings, the trainer, augmentation and calibration.

Only the settings load eagerly; the trainer imports jax, so it loads on first use.
"""

from importlib import import_module

from .settings import GinsengClassifierTrainerSettings

__all__ = ["GinsengClassifierTrainer", "GinsengClassifierTrainerSettings"]

_LAZY = {"GinsengClassifierTrainer": ".trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
