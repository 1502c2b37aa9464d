"""Training: settings, the trainer, augmentation and calibration.

Only the settings load eagerly; the trainer imports jax, so it loads on first use.
"""

from .._lazy import lazy_attributes
from .settings import GinsengClassifierTrainerSettings

__all__ = [
    "FitResult",
    "GinsengClassifierTrainer",
    "GinsengClassifierTrainerSettings",
    "init_distributed",
]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    {
        "FitResult": ".trainer:FitResult",
        "GinsengClassifierTrainer": ".trainer:GinsengClassifierTrainer",
        "init_distributed": "._devices:init_distributed",
    },
)
