"""Hyperparameters of a ginseng classifier: a frozen, validated dataclass (no jax).

Shared by :mod:`ginseng.model` (model files record the settings a model was trained
with) and :mod:`ginseng.train`, which re-exports it as
``ginseng.train.GinsengClassifierTrainerSettings``, its public path.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from ._errors import InputError

GROUP_MODES = ("fraction", "groups")


@dataclass(frozen=True)
class GinsengClassifierTrainerSettings:
    """Augmentation, model and optimisation settings of :class:`GinsengClassifierTrainer`.

    The object is frozen and validated when built: an invalid value raises
    :class:`ginseng.InputError` naming the field. Change fields with
    :func:`dataclasses.replace`, which validates again.

    Parameters
    ----------
    rate
        Binomial thinning of the raw counts: each count is dropped with probability
        ``rate`` (in ``[0, 1)``), mimicking shallower sequencing. ``None`` or 0 switches it off.
    lam_max
        Poisson noise: every gene of a cell gains ``Poisson(lam)`` counts, ``lam`` drawn per
        cell uniformly in ``[0, lam_max]``. ``None`` or 0 switches it off.
    lower, upper
        Gene masking: per cell a number of genes drawn uniformly from ``[lower, upper]``
        (at most the number of genes) is set to zero, mimicking genes missing from a
        query. ``upper=None`` switches it off; ``lower=None`` means 0.
    hidden_dim
        Width of the hidden layers. The network has
        ``n_genes * hidden_dim + (n_layers - 1) * hidden_dim**2 + hidden_dim * n_labels``
        weights: linear in the number of genes.
    n_layers
        Number of hidden layers (Linear -> LayerNorm -> GELU -> Dropout).
    dropout_rate
        Dropout probability after each hidden layer, in ``[0, 1)``.
    batch_size
        Cells per training step (reduced to the number of training cells if larger).
    min_steps
        Least number of optimiser steps in a whole training run: when
        ``epochs * (n_train // batch_size)`` is smaller, each epoch makes several passes over
        the training cells, so small references are not under-trained. 0 switches it off.
    lr
        Peak learning rate of AdamW. The rate warms up linearly over the first 5% of
        the steps (at most 500) and then follows a cosine decay to ``lr / 100``.
    betas
        AdamW's ``(b1, b2)`` moment decay rates, each in ``[0, 1)``.
    eps
        AdamW's denominator epsilon.
    weight_decay
        AdamW's decoupled weight decay (not applied to the fixed preprocessing).
    normalize
        Scale each cell to ``target_sum`` total counts before ``log1p`` (inside the model,
        so inference normalises identically). ``False``: ``log1p`` of the raw counts.
    target_sum
        Total counts per cell after normalisation.
    standardize
        After ``log1p``, centre and scale each gene by its mean and standard deviation
        on the training split (fixed, stored in the model), clipped to ``[-10, 10]``.
    holdout_fraction
        Fraction of cells held out (stratified by label, or by whole groups) to pick the
        best epoch, report metrics and fit the calibration temperature; in ``(0, 1)``.
    balance_train
        Sample training batches so that every label is equally likely (on by default:
        it raised macro-F1 on the accuracy benchmark, most for rare labels, at a small
        cost in overall accuracy; set ``False`` to sample cells as they come).
    group_level
        Hold out whole groups (the store's ``group_key``, e.g. donors or batches) rather
        than cells; the store must have been created with a ``group_key``.
    group_mode
        With ``group_level``: ``"fraction"`` picks whole groups so that the held-out cell
        fraction is closest to ``holdout_fraction``; ``"groups"`` holds out
        ``round(holdout_fraction * n_groups)`` groups.
    seed
        Seeds the split, the batch order, the initial weights, dropout and augmentation:
        the same seed gives the same model on the same machine.

    Examples
    --------
    >>> from ginseng.train import GinsengClassifierTrainerSettings
    >>> settings = GinsengClassifierTrainerSettings(hidden_dim=64, lr=3e-4, seed=1)
    >>> settings.replace(dropout_rate=0.1).dropout_rate
    0.1
    >>> GinsengClassifierTrainerSettings.from_json(settings.to_json()) == settings
    True

    Invalid values are refused when the settings are built:

    >>> GinsengClassifierTrainerSettings(dropout_rate=1.5)
    Traceback (most recent call last):
    ...
    ginseng._errors.InputError: GinsengClassifierTrainerSettings.dropout_rate=1.5 is invalid: expected a number in [0, 1).
    """

    # Augmentation.
    rate: float | None = 0.1
    lam_max: float | None = None
    lower: int | None = 0
    upper: int | None = 200
    # Model.
    hidden_dim: int = 128
    n_layers: int = 2
    dropout_rate: float = 0.2
    batch_size: int = 256
    # Training.
    min_steps: int = 1000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    normalize: bool = True
    target_sum: float = 1e4
    standardize: bool = True
    holdout_fraction: float = 0.1
    balance_train: bool = True
    group_level: bool = False
    group_mode: str = "fraction"
    # Reproducibility.
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            # numpy scalars would break JSON; lists come back from JSON for tuples.
            if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
                object.__setattr__(self, f.name, value.item())
            elif isinstance(value, list | tuple):
                items = tuple(v.item() if hasattr(v, "item") else v for v in value)
                object.__setattr__(self, f.name, items)
        _validate(self)

    @property
    def masking(self) -> bool:
        """Whether gene masking is on."""
        return self.upper is not None and self.upper > 0

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a plain dictionary (``betas`` as a tuple)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GinsengClassifierTrainerSettings:
        """Build settings from :meth:`to_dict` output; unknown keys raise InputError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(
                f"Unknown GinsengClassifierTrainerSettings field(s) {unknown}; "
                f"known fields: {sorted(known)}."
            )
        return cls(**values)

    def to_json(self) -> str:
        """Serialise to a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> GinsengClassifierTrainerSettings:
        """Inverse of :meth:`to_json`."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"Settings are not valid JSON: {err}") from err
        if not isinstance(values, dict):
            raise InputError(f"Settings JSON must be an object, got {type(values).__name__}.")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> GinsengClassifierTrainerSettings:
        """Return a copy with ``changes`` applied; an unknown field raises InputError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InputError(
                f"Unknown training setting(s) {unknown}; known settings: {sorted(known)}."
            )
        return dataclasses.replace(self, **changes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fail(name: str, value: Any, expected: str) -> None:
    raise InputError(f"GinsengClassifierTrainerSettings.{name}={value!r} is invalid: {expected}.")


def _in_unit(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not _is_real(value) or not 0 <= value < 1:
        _fail(name, value, "expected a number in [0, 1)")


def _positive(name: str, value: Any, *, integer: bool = False) -> None:
    ok = _is_int(value) if integer else _is_real(value)
    if not ok or value <= 0:
        _fail(name, value, f"expected a positive {'integer' if integer else 'number'}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(name, value, "expected True or False")


def _validate(s: GinsengClassifierTrainerSettings) -> None:
    _in_unit("rate", s.rate, optional=True)
    if s.lam_max is not None and (not _is_real(s.lam_max) or s.lam_max < 0):
        _fail("lam_max", s.lam_max, "expected None or a number >= 0")
    for name in ("lower", "upper"):
        value = getattr(s, name)
        if value is not None and (not _is_int(value) or value < 0):
            _fail(name, value, "expected None or an integer >= 0")
    if s.lower is not None and s.upper is not None and s.lower > s.upper:
        _fail("lower", s.lower, f"lower must not exceed upper={s.upper}")
    _positive("hidden_dim", s.hidden_dim, integer=True)
    _positive("n_layers", s.n_layers, integer=True)
    _in_unit("dropout_rate", s.dropout_rate)
    _positive("batch_size", s.batch_size, integer=True)
    if not _is_int(s.min_steps) or s.min_steps < 0:
        _fail("min_steps", s.min_steps, "expected an integer >= 0")
    _positive("lr", s.lr)
    if not isinstance(s.betas, tuple) or len(s.betas) != 2:
        _fail("betas", s.betas, "expected a pair (b1, b2)")
    for beta in s.betas:
        if not _is_real(beta) or not 0 <= beta < 1:
            _fail("betas", s.betas, "each beta must be a number in [0, 1)")
    _positive("eps", s.eps)
    if not _is_real(s.weight_decay) or s.weight_decay < 0:
        _fail("weight_decay", s.weight_decay, "expected a number >= 0")
    _flag("normalize", s.normalize)
    _positive("target_sum", s.target_sum)
    _flag("standardize", s.standardize)
    if not _is_real(s.holdout_fraction) or not 0 < s.holdout_fraction < 1:
        _fail("holdout_fraction", s.holdout_fraction, "expected a number in (0, 1)")
    _flag("balance_train", s.balance_train)
    _flag("group_level", s.group_level)
    if s.group_mode not in GROUP_MODES:
        _fail("group_mode", s.group_mode, f"expected one of {list(GROUP_MODES)}")
    if not _is_int(s.seed) or s.seed < 0:
        _fail("seed", s.seed, "expected an integer >= 0")
