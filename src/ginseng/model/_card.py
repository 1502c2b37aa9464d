"""The model card: a readable summary of a :class:`~ginseng.model.GinsengModelState`.

Formats what a state records (labels, genes, architecture, holdout metrics, calibration,
uncertainty, hierarchy, ontology, training and versions) as the text that
``repr(state)`` prints; it reads the state and computes nothing about the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .state import GinsengModelState


def _fmt(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, int | float) and np.isfinite(value) else "n/a"


def model_card(state: GinsengModelState) -> str:
    """A readable summary: data, architecture, holdout metrics, calibration, versions."""
    m, cfg, prov = state.metrics, state.config, state.provenance
    labels = ", ".join(state.labels[:12]) + (", ..." if state.n_labels > 12 else "")
    pre = (
        f"normalize to {cfg.get('target_sum', 0):g}, log1p" if cfg.get("normalize") else "log1p"
    ) + (", standardize" if cfg.get("standardize") else "")
    lines = [
        "GinsengModelState",
        f"  labels ({state.n_labels}): {labels}",
        f"  genes: {state.n_genes} (first: {', '.join(state.genes[:3])})",
        f"  network: {cfg.get('n_layers')} x {cfg.get('hidden_dim')} hidden ({cfg.get('activation')}), "
        f"dropout {cfg.get('dropout_rate')}; preprocessing: {pre}",
    ]
    if m:
        lines.append(
            f"  holdout ({m.get('n_cells', 0)} cells, best epoch {m.get('best_epoch', 'n/a')}): "
            f"accuracy {_fmt(m.get('accuracy'))}, macro-F1 {_fmt(m.get('macro_f1'))}"
        )
        f1 = m.get("f1_per_label", {})
        worst = sorted(((v, k) for k, v in f1.items() if v is not None))[:3]
        if worst:
            lines.append("  lowest F1: " + ", ".join(f"{k} {v:.3f}" for v, k in worst))
        where = (
            f" on {m['n_heldout_groups']} held-out group(s) (ECE on held-out groups)"
            if m.get("holdout_split") == "groups"
            else ""
        )
        lines.append(
            f"  calibration: T = {state.temperature:.3f}, ECE {_fmt(m.get('ece_uncalibrated'))} "
            f"-> {_fmt(m.get('ece'))}{where}"
        )
    unc = state.uncertainty
    if unc is not None:
        n = unc.n_calibration
        lines.append(
            f"  uncertainty: novelty (Mahalanobis, last hidden layer); conformal sets from "
            f"{int(n.sum())} held-out cells (fewest for one label: {int(n.min()) if n.size else 0})"
        )
    if state.hierarchy is not None:
        h = state.hierarchy
        sizes = [len(set(h.paths[:, k])) for k in range(h.n_levels)]
        lines.append(
            "  hierarchy: "
            + " > ".join(f"{name} ({size})" for name, size in zip(h.levels, sizes, strict=True))
        )
    if state.ontology is not None:
        known = sum(state.ontology.ids.get(str(x), "unknown") != "unknown" for x in state.labels)
        lines.append(
            f"  ontology: {known} of {state.n_labels} labels with Cell Ontology ids "
            f"(obs[{state.ontology.key!r}]; {state.ontology.source})"
        )
    if state.history.get("epoch"):
        lines.append(
            f"  trained: {len(state.history['epoch'])} epoch(s), seed {prov.get('seed', 'n/a')}"
        )
    versions = prov.get("versions", {})
    if versions:
        keys = ("ginseng", "python", "jax", "flax", "optax")
        lines.append(
            "  versions: " + ", ".join(f"{k} {versions[k]}" for k in keys if k in versions)
        )
    if prov.get("created"):
        lines.append(f"  created: {prov['created']}")
    return "\n".join(lines)
