"""Train/test splits of a store: stratified by label, or by whole groups."""

from __future__ import annotations

import numpy as np

from .._errors import InputError

GROUP_MODES = ("fraction", "groups")


def train_test(
    labels: np.ndarray,
    groups: np.ndarray | None,
    fraction: float,
    *,
    stratify_group: bool,
    group_mode: str,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted ``(train, test)`` row indices: whole groups, or stratified by label."""
    if not 0 < fraction < 1:
        raise InputError(f"fraction must be in (0, 1), got {fraction}.")
    if group_mode not in GROUP_MODES:
        raise InputError(f"group_mode must be one of {GROUP_MODES}, got {group_mode!r}.")
    rng = np.random.default_rng(seed)
    if stratify_group:
        test = whole_groups(groups, fraction, rng, group_mode)  # type: ignore[arg-type]  # checked by callers
    else:
        test = label_stratified(labels, fraction, rng)
    train = np.setdiff1d(np.arange(labels.size, dtype=np.int64), test, assume_unique=True)
    return train, test


def label_stratified(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Return sorted test rows holding ``fraction`` of the cells of every label.

    Every label with two or more cells gets at least one cell on each side.
    """
    test = []
    for code in np.unique(labels):
        rows = np.flatnonzero(labels == code)
        n_test = round(fraction * rows.size)
        if rows.size >= 2:
            n_test = min(max(n_test, 1), rows.size - 1)
        test.append(rng.choice(rows, size=n_test, replace=False))
    return np.sort(np.concatenate(test)).astype(np.int64)


def whole_groups(
    groups: np.ndarray, fraction: float, rng: np.random.Generator, mode: str
) -> np.ndarray:
    """Return sorted test rows made of whole groups.

    ``mode="fraction"`` picks groups so the test *cell* fraction is as close as possible
    to ``fraction``; ``mode="groups"`` puts ``round(fraction * n_groups)`` groups in test.
    Both keep at least one group on each side.
    """
    codes, sizes = np.unique(groups, return_counts=True)
    if codes.size < 2:
        raise InputError(
            f"A group-level split needs at least 2 groups; the store has {codes.size}."
        )
    order = rng.permutation(codes.size)
    if mode == "groups":
        n_test = min(max(round(fraction * codes.size), 1), codes.size - 1)
        chosen = order[:n_test]
    else:
        chosen = _closest_subset(sizes, order, fraction * groups.size)
    test_codes = codes[chosen]
    return np.flatnonzero(np.isin(groups, test_codes)).astype(np.int64)


def _closest_subset(sizes: np.ndarray, order: np.ndarray, target: float) -> np.ndarray:
    """Greedy subset of groups whose total size is close to ``target``.

    Groups are visited in random order (so different seeds give different splits) and
    kept when they bring the total closer to the target; the best single group is the
    fallback so the test side is never empty, and the train side keeps one group.
    """
    chosen, total = [], 0
    for g in order:
        if abs(total + sizes[g] - target) < abs(total - target):
            chosen.append(g)
            total += sizes[g]
    if not chosen:
        chosen = [order[np.argmin(np.abs(sizes[order] - target))]]
    if len(chosen) == sizes.size:
        chosen.remove(max(chosen, key=lambda g: sizes[g]))
    return np.asarray(chosen, dtype=np.int64)
