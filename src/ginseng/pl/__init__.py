"""Plotting: functions return matplotlib Axes.

matplotlib is imported only when a plot is drawn, so ``import ginseng`` stays light.

- :func:`confusion`: confusion matrix of predicted against true labels (or a model's
  holdout confusion matrix).
- :func:`confidence`: calibrated confidence per predicted label, with the Unassigned
  threshold.
- :func:`history`: training curves of a model.
- :func:`markers`: a model's marker genes as a scanpy dot plot on the user's data.
"""

from ._confusion import confusion
from ._markers import markers
from ._plots import confidence, history

__all__: list[str] = ["confidence", "confusion", "history", "markers"]
