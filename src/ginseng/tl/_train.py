"""``ginseng.tl.train``: AnnData in, trained model state out."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData

from .. import _keys
from .._docs import shared_docs
from .._errors import InputError
from .._logging import timed
from ..train.settings import GinsengClassifierTrainerSettings
from ._record import drop_none, model_summary
from ._train_genes import DEFAULT_N_TOP_GENES, training_genes

if TYPE_CHECKING:
    from ..model.hierarchy import Hierarchy
    from ..model.ontology import OntologyIds
    from ..model.state import GinsengModelState


@shared_docs
def train(
    adata: AnnData | str | os.PathLike,
    label_key: str,
    *,
    layer: str | None = None,
    genes: str | Sequence[str] | np.ndarray | None = None,
    n_top_genes: int | None = DEFAULT_N_TOP_GENES,
    query_genes: Sequence[str] | np.ndarray | None = None,
    group_key: str | None = None,
    hierarchy: Sequence[str] | Mapping[str, str] | str | None = None,
    ontology_key: str | None = None,
    epochs: int = 10,
    store: str | os.PathLike | None = None,
    settings: GinsengClassifierTrainerSettings | None = None,
    seed: int | None = None,
    check_counts: bool = True,
    **setting_overrides: Any,
) -> GinsengModelState:
    """Train a cell-type classifier on the raw counts of an annotated AnnData.

    The counts are written to a compressed, shuffled :class:`~ginseng.data.GinsengDataset`
    store (a temporary one unless ``store`` is given), a holdout split is made, and a
    :class:`~ginseng.train.GinsengClassifierTrainer` fits the network, keeps the best
    epoch by holdout loss and calibrates its probabilities on the holdout cells.

    Parameters
    ----------
    adata
        Annotated data, in memory or backed, or a path/URL read with
        :func:`ginseng.data.io.read_adata` (``.h5ad`` files are read backed).
    label_key
        Column of ``adata.obs`` with the cell-type labels. Refused with an
        :class:`~ginseng.InputError` naming the column and the counts: no labelled cell
        (every value missing), any missing or empty label, a single label. A label with a
        single cell is named in a :class:`UserWarning` and kept in training; it is absent
        from the (label-stratified) holdout, so the holdout metrics and the calibration
        do not cover it.
    %(layer)s
    genes
        Genes to train on: the name of a boolean ``var`` column, a list of gene names or
        a boolean mask. ``None`` uses ``"ginseng_genes"`` (from
        :func:`ginseng.pp.select_hvgs`) when that column exists, else ``n_top_genes``.
    n_top_genes
        When ``genes`` is ``None`` and ``var`` has no ``"ginseng_genes"`` column, train
        on this many highly variable genes of ``adata`` (:func:`ginseng.pp.select_hvgs`,
        seurat_v3 on the counts, ``adata`` left unchanged); all genes when there are
        not more than this. ``None`` trains on all genes. The default, 3,000 genes,
        transferred better to other studies than all genes on the transfer benchmark
        (most across species) and trains several times faster on whole-transcriptome
        references.
    query_genes
        Gene names of the data you will annotate (e.g. ``query.var_names``): train only
        on reference genes it measures, so that no model gene is missing when
        classifying it (missing genes are imputed, but a model that never relied on
        them transfers better: on the transfer benchmark, +0.03 to +0.04 macro-F1 on
        the three tasks sharing 31-40% of the genes, mean of three seeds). With more
        shared genes than ``n_top_genes``, they are the selection
        :func:`ginseng.pp.select_hvgs` makes on the shared genes alone (``mask_var``).
        Refused when no gene is shared.
    group_key
        ``obs`` column of groups (donor, batch); with ``group_level=True`` whole groups
        are held out.
    hierarchy
        Coarser levels of the labels, stored in the model so that
        :func:`ginseng.tl.classify` writes one consistent column per level and backs
        off to a coarser label when a finer one is uncertain (see
        :class:`~ginseng.model.hierarchy.Hierarchy`). Either ``obs`` columns from coarse to fine
        (e.g. ``["lineage", "cell_type"]``, ending with ``label_key`` or not): every
        cell of a label must have the same value in each of them; or a
        ``{child: parent}`` mapping of label names (e.g. ``{"CD4 T": "T cell",
        "T cell": "Lymphoid"}``), whose levels are named ``level_0`` (the roots)
        onwards; or ``"ontology"``, the tree of the labels' Cell Ontology terms
        through CELLxGENE's curated cell classes and subclasses (needs
        ``ontology_key``; see :class:`~ginseng.model.ontology.OntologyIds`). The
        network trains on ``label_key`` alone. Refused, before training,
        with an :class:`~ginseng.InputError` naming the label and levels when a node
        would have two parents.
    ontology_key
        ``obs`` column of each cell's Cell Ontology id (e.g. CELLxGENE's
        ``"cell_type_ontology_term_id"``): each label must have one id, a current CL
        term or ``"unknown"``, checked against the ontology bundled with
        ``cellxgene-ontology-guide`` (``pip install "ginseng[ontology]"``) before
        training. The model stores them (with a hierarchy, each coarser node gets the
        deepest common ancestor of its labels' terms) and :func:`ginseng.tl.classify`
        writes ``obs["ginseng_cell_type_ontology_term_id"]``; see
        :class:`~ginseng.model.ontology.OntologyIds`.
    epochs
        Passes over the training cells.
    store
        Where to write the store (kept afterwards; an existing store there is replaced).
        ``None`` uses a temporary directory removed after training.
    settings
        Hyperparameters; defaults to ``GinsengClassifierTrainerSettings()``.
    seed
        Seed of the store shuffle, the split, the initial weights, dropout and
        augmentation. ``None`` keeps ``settings.seed`` (0 by default), so a seed given in
        ``settings`` is never silently replaced.
    check_counts
        Refuse a matrix that looks log-normalised or scaled rather than raw counts (the
        check :func:`ginseng.tl.classify` makes; the message names the layer to use).
    **setting_overrides
        Fields of :class:`~ginseng.train.GinsengClassifierTrainerSettings` to change, e.g.
        ``hidden_dim=128, lr=3e-4``.

    Returns
    -------
    The trained :class:`~ginseng.model.GinsengModelState` (save it with
    :func:`ginseng.data.io.save_model`). When ``adata`` is an AnnData, writes
    ``adata.uns["ginseng"]["train"]`` with ``"params"`` (the arguments and settings),
    ``"labels"`` (the model's labels in output order) and ``"model"`` (holdout
    accuracy, macro-F1, ECE, calibration temperature, best epoch, number of genes).

    Examples
    --------
    ``reference`` holds raw counts (also in ``layers["counts"]``) with cell-type labels
    in ``obs["bulk_labels"]`` (see :func:`ginseng.datasets.pbmc68k_counts`). A small
    model, quick to train:

    >>> import ginseng as gs
    >>> gs.pp.select_hvgs(reference, n_top_genes=300, layer="counts")
    >>> state = gs.tl.train(
    ...     reference, "bulk_labels", layer="counts", epochs=2, hidden_dim=32, min_steps=50
    ... )
    >>> state.n_genes, state.n_labels  # the 300 genes in reference.var["ginseng_genes"]
    (300, 10)
    >>> sorted(reference.uns["ginseng"]["train"])
    ['labels', 'model', 'params']
    >>> sorted(state.metrics)[:3]
    ['accuracy', 'best_epoch', 'confusion']

    Settings as an object, a seed, and the store kept for later runs:

    >>> settings = gs.train.GinsengClassifierTrainerSettings(hidden_dim=32, min_steps=50)
    >>> state = gs.tl.train(
    ...     reference, "bulk_labels", epochs=2, settings=settings, store=tmp / "ref.zarr", seed=1
    ... )
    >>> state.settings.seed, (tmp / "ref.zarr").is_dir()
    (1, True)
    """
    from ..data.dataset import GinsengDataset
    from ..data.io import read_adata
    from ..train.trainer import GinsengClassifierTrainer

    settings = GinsengClassifierTrainerSettings() if settings is None else settings
    if not isinstance(settings, GinsengClassifierTrainerSettings):
        raise InputError(
            f"settings must be a GinsengClassifierTrainerSettings, got {type(settings).__name__}."
        )
    if seed is not None:
        setting_overrides["seed"] = seed
    settings = settings.replace(**setting_overrides)
    user_adata = adata if isinstance(adata, AnnData) else None
    if not isinstance(adata, AnnData):
        adata = read_adata(adata, backed="r" if str(adata).endswith(".h5ad") else None)
    if genes is None and _keys.VAR_GENES in adata.var.columns:
        genes = _keys.VAR_GENES
    chosen = training_genes(
        adata, genes, n_top_genes=n_top_genes, query_genes=query_genes, layer=layer
    )
    tree: Hierarchy | None
    ids: OntologyIds | None
    if isinstance(hierarchy, str) and hierarchy == "ontology":
        tree, ids = _ontology_tree(adata, ontology_key, label_key)
    else:
        tree = None if hierarchy is None else _hierarchy(adata, hierarchy, label_key)
        ids = None if ontology_key is None else _ontology(adata, ontology_key, label_key, tree)

    with (
        timed(f"training a ginseng classifier on obs[{label_key!r}]"),
        tempfile.TemporaryDirectory(prefix="ginseng-train-") as tmp,
    ):
        path = Path(tmp) / "store.zarr" if store is None else Path(store).expanduser()
        dataset = GinsengDataset.create(
            path,
            adata,
            label_key,
            layer=layer,
            genes=chosen,
            group_key=group_key,
            overwrite=store is not None,
            seed=settings.seed,
            check_counts=check_counts,
        )
        _, state = GinsengClassifierTrainer(dataset, settings).fit(epochs)
    if tree is not None:
        state.hierarchy = tree.for_labels(state.labels)
    state.ontology = ids

    if user_adata is not None:
        _record(
            user_adata, state, label_key, layer, genes, n_top_genes, query_genes, group_key,
            epochs, store, settings, hierarchy,
        )  # fmt: skip
    return state


def _hierarchy(adata: AnnData, spec: Any, label_key: str) -> Hierarchy:
    """The hierarchy ``spec`` gives the labels of ``adata.obs[label_key]``, checked early."""
    from ..model.hierarchy import Hierarchy

    if label_key not in adata.obs.columns:
        raise InputError(f"label_key={label_key!r} is not a column of adata.obs.")
    values = adata.obs[label_key].dropna().astype(str)
    return Hierarchy.build(spec, obs=adata.obs, label_key=label_key, labels=values.unique())


def _ontology(adata: AnnData, ontology_key: str, label_key: str, tree: Any) -> OntologyIds:
    """Each label's Cell Ontology id from ``adata.obs[ontology_key]``, checked early."""
    from ..model.ontology import label_ids

    if label_key not in adata.obs.columns:
        raise InputError(f"label_key={label_key!r} is not a column of adata.obs.")
    labels = adata.obs[label_key].dropna().astype(str).unique()
    return label_ids(adata.obs, ontology_key, label_key, labels, hierarchy=tree)


def _ontology_tree(
    adata: AnnData, ontology_key: str | None, label_key: str
) -> tuple[Hierarchy, OntologyIds]:
    """``hierarchy="ontology"``: the labels' tree from their Cell Ontology terms."""
    from dataclasses import replace

    from ..model.hierarchy import Hierarchy
    from ..model.ontology import ontology_parents

    if ontology_key is None:
        raise InputError(
            'hierarchy="ontology" derives the levels from the labels\' Cell Ontology ids: '
            "give ontology_key= too (e.g. 'cell_type_ontology_term_id')."
        )
    ids = _ontology(adata, ontology_key, label_key, None)
    parents, node_ids = ontology_parents(ids.ids)
    if not parents:
        raise InputError(
            f"None of the Cell Ontology terms in obs[{ontology_key!r}] has a curated cell "
            'class or subclass above it, so hierarchy="ontology" has no levels to build.'
        )
    labels = list(ids.ids)
    tree = Hierarchy.from_mapping(parents, labels, label_key)
    return tree, replace(ids, ids={**node_ids, **ids.ids})


def _record(
    adata, state, label_key, layer, genes, n_top_genes, query_genes, group_key, epochs, store,
    settings, hierarchy,
) -> None:  # fmt: skip
    params = {
        "label_key": label_key,
        "layer": layer,
        "genes": genes if isinstance(genes, str) else None,
        "n_top_genes": n_top_genes,
        "query_genes": None if query_genes is None else len(query_genes),
        "n_genes": state.n_genes,
        "group_key": group_key,
        "hierarchy": list(state.hierarchy.levels) if hierarchy is not None else None,
        "ontology_key": None if state.ontology is None else state.ontology.key,
        "epochs": int(epochs),
        "store": None if store is None else str(store),
        "settings": drop_none(settings.to_dict()),
    }
    entry = {
        "params": drop_none(params),
        "labels": [str(x) for x in state.labels],
        "model": model_summary(state),
    }
    adata.uns.setdefault(_keys.UNS_KEY, {})["train"] = entry
