"""Hyperparameters of a ginseng classifier (see :class:`GinsengClassifierTrainerSettings`).

The class is defined in :mod:`ginseng._trainer_settings`, below both :mod:`ginseng.model`
(whose model files record the settings) and :mod:`ginseng.train`, so that the model
layer never imports the trainer. ``ginseng.train.GinsengClassifierTrainerSettings`` is
its public path.
"""

from .._trainer_settings import GROUP_MODES, GinsengClassifierTrainerSettings

__all__ = ["GROUP_MODES", "GinsengClassifierTrainerSettings"]
