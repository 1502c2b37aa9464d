"""Hyperparameters of a ginseng classifier: a frozen, validated dataclass (no jax).

Shared by :mod:`ginseng.model` (model files record the settings a model was trained
with) and :mod:`ginseng.train`, which re-exports it as
``ginseng.train.GinsengClassifierTrainerSettings``, its public path.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, Literal

from ._errors import InputError
from ._validate import (
    flag,
    fraction,
    nonnegative_int,
    nonnegative_number,
    one_of,
    positive_int,
    positive_number,
)

MaskAs = Literal["zero", "unknown"]
MASK_AS: tuple[MaskAs, ...] = ("zero", "unknown")
GroupMode = Literal["fraction", "groups"]
GROUP_MODES: tuple[GroupMode, ...] = ("fraction", "groups")


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
    mask_as
        What a masked gene becomes: ``"zero"`` (zero counts) or ``"unknown"`` (its
        counts are removed and its preprocessed value set to the training mean, the
        normalisation target scaled by the share of the counts the other genes carry:
        exactly how :func:`ginseng.tl.classify` reads a gene the query lacks).
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
        On several devices, the batch over all of them, rounded down to a multiple of
        the device count; each device computes its share of the cells.
    min_steps
        Least number of optimiser steps in a whole training run: when
        ``epochs * (n_train // batch_size)`` is smaller, each epoch makes several passes over
        the training cells, so small references are not under-trained. 0 switches it off.
        The default, 500, was chosen on the accuracy benchmark (four datasets, three
        seeds): on each, macro-F1 stayed within the seeds' spread of that with 1,000
        steps, in about a third less training time; 250 lost 0.014 on one of them.
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
        Off by default: centring turns a zero count into evidence (a gene the reference
        expresses reads as strongly "absent"), and what a study fails to detect is the
        least transferable signal; across species it cost up to 0.3 macro-F1 on the
        transfer benchmark, within a study nothing measurable. The per-gene statistics
        are fitted either way, to impute genes a query lacks.
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
    ginseng._errors.InputError: GinsengClassifierTrainerSettings.dropout_rate must be a number in [0, 1), got 1.5.
    """

    # Augmentation.
    rate: float | None = 0.1
    lam_max: float | None = None
    lower: int | None = 0
    upper: int | None = 200
    mask_as: MaskAs = "zero"
    # Model.
    hidden_dim: int = 128
    n_layers: int = 2
    dropout_rate: float = 0.2
    batch_size: int = 256
    # Training.
    min_steps: int = 500
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    normalize: bool = True
    target_sum: float = 1e4
    standardize: bool = False
    holdout_fraction: float = 0.1
    balance_train: bool = True
    group_level: bool = False
    group_mode: GroupMode = "fraction"
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


def _validate(s: GinsengClassifierTrainerSettings) -> None:
    def name(field: str) -> str:
        return f"GinsengClassifierTrainerSettings.{field}"

    # Augmentation: None switches a transform off.
    if s.rate is not None:
        fraction(name("rate"), s.rate, "[0, 1)")
    if s.lam_max is not None:
        nonnegative_number(name("lam_max"), s.lam_max)
    for field in ("lower", "upper"):
        if getattr(s, field) is not None:
            nonnegative_int(name(field), getattr(s, field))
    if s.lower is not None and s.upper is not None and s.lower > s.upper:
        raise InputError(f"{name('lower')}={s.lower} must not exceed upper={s.upper}.")
    one_of(name("mask_as"), s.mask_as, MASK_AS)
    # Model.
    positive_int(name("hidden_dim"), s.hidden_dim)
    positive_int(name("n_layers"), s.n_layers)
    fraction(name("dropout_rate"), s.dropout_rate, "[0, 1)")
    positive_int(name("batch_size"), s.batch_size)
    # Training.
    nonnegative_int(name("min_steps"), s.min_steps)
    positive_number(name("lr"), s.lr)
    if not isinstance(s.betas, tuple) or len(s.betas) != 2:
        raise InputError(f"{name('betas')} must be a pair (b1, b2), got {s.betas!r}.")
    for beta in s.betas:
        fraction(name("betas"), beta, "[0, 1)")
    positive_number(name("eps"), s.eps)
    nonnegative_number(name("weight_decay"), s.weight_decay)
    flag(name("normalize"), s.normalize)
    positive_number(name("target_sum"), s.target_sum)
    flag(name("standardize"), s.standardize)
    fraction(name("holdout_fraction"), s.holdout_fraction, "(0, 1)")
    flag(name("balance_train"), s.balance_train)
    flag(name("group_level"), s.group_level)
    one_of(name("group_mode"), s.group_mode, GROUP_MODES)
    nonnegative_int(name("seed"), s.seed)
