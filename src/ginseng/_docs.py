"""Parameter docs shared by several functions, filled in with docrep (as squidpy does).

A docstring decorated with ``@shared_docs`` is dedented and ``%(name)s`` is replaced by
the entry ``name`` below, so ``gs.tl.classify``, ``ginseng.classify`` and
``gs.tl.train`` describe a shared parameter with the same words. A literal ``%`` in such
a docstring is written ``%%``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from docrep import DocstringProcessor

F = TypeVar("F", bound=Callable[..., Any])

_classify_adata = """\
adata
    Cells to annotate: an AnnData in memory (dense or sparse) or backed (``"r"`` or
    ``"r+"``), or a path to an ``.h5ad`` file, an AnnData ``.zarr`` store (both read
    out of core) or any file :func:`ginseng.data.io.read_adata` reads."""

_model = """\
A :class:`~ginseng.model.GinsengModelState` or the path of a saved model file."""

_layer = """\
layer
    Layer with raw counts; ``None`` uses ``.X``. After standard scanpy preprocessing
    the counts are usually in ``layer="counts"``."""

_return_table = """\
return_table
    Return the results as a DataFrame and leave ``adata`` untouched."""

_classify_options = """\
key_added
    Prefix of the keys written (``"ginseng"`` gives ``obs["ginseng_cell_type"]``...).
gene_key
    ``var`` column with gene names matching the model's. ``None`` uses ``var_names``,
    or, when they match too few of the model's genes, the best-matching text column
    of ``var`` (e.g. ``gene_ids`` for Ensembl ids, ``feature_name`` for symbols),
    which is logged. Ensembl version suffixes are ignored.
gene_map
    Translate the query's gene names before matching them to the model's: a
    ``{query gene: model gene}`` mapping or a table whose first two columns are the
    query's and the model's names, e.g. :func:`ginseng.datasets.mouse_human_orthologs`
    to annotate mouse cells with a human model. Unmapped query genes are left out; a
    many-to-one map is refused. The gene-overlap record notes it (``source``).
min_gene_overlap
    Least fraction of the model's genes that must be found in the query, else a
    :class:`~ginseng.GeneMismatchError` names the likely cause. Missing genes are read
    as unknown: set to their training mean, with the normalisation target scaled to the
    present genes' expected share of the counts (see the missing-genes benchmark).
unassigned_threshold
    Cells whose confidence is below this get the label ``"Unassigned"``. For a model
    with a label hierarchy, a cell instead gets the deepest label on its top-down path
    whose summed probability passes the threshold (e.g. ``"T cell"`` when its T-cell
    subtypes are uncertain), ``"Unassigned"`` only when not even the coarsest level
    does (see :doc:`/hierarchy`).
novelty_threshold
    A reference quantile in (0, 1), e.g. ``0.99``: cells whose novelty score is above
    that quantile of the scores of held-out reference cells get the label
    ``"Novel"`` (before ``"Unassigned"``), so about ``1 - novelty_threshold`` of cells
    of known types are marked too. The cut-off in score units is
    ``model.uncertainty.novelty_cutoff(novelty_threshold)``. Needs a model trained by
    ginseng >= 0.3 (see :doc:`/uncertainty`).
prediction_sets
    Level ``alpha`` in (0, 1), e.g. ``0.1``: also write each cell's class-conditional
    conformal prediction set, which holds the true label of a cell of a known type
    with probability at least ``1 - alpha``, for every label (see :doc:`/uncertainty`).
    Needs a model trained by ginseng >= 0.3.
labels
    Restrict the calls to these model labels (e.g. the types plausible in the tissue):
    the probabilities are renormalised over them (the full model's, conditioned on the
    cell being one of them), ``obsm`` and ``uns[key_added]["classify"]["labels"]`` hold
    only them, and a cell unlike all of them scores high novelty. A name the model
    lacks is refused. See :meth:`ginseng.model.GinsengModelState.restrict_labels`.
majority_vote_key
    ``obs`` column of clusters (e.g. ``"leiden"``): also write the most frequent
    prediction of each cluster to ``obs[f"{key_added}_majority_vote"]``.
min_prop
    Clusters whose most frequent label covers less than this fraction of their cells
    are voted ``"Heterogeneous"``.
store_probabilities
    Write the probabilities of every label to ``obsm``. ``False`` saves
    ``n_cells x n_labels`` floats of memory.
check_counts
    Refuse log-normalised or scaled input (negative values; non-integer values with
    constant per-cell totals or only small values). Switch off only if you know the
    matrix holds counts.
batch_size
    Cells read and classified per chunk; defaults to ``ginseng.settings.chunk_size``."""

_classify_fields = """\
``obs[f"{key_added}_cell_type"]``
    Categorical prediction; categories are the model's labels that some cell
    received (in model order), plus ``"Unassigned"`` when some cell falls below
    ``unassigned_threshold`` and ``"Novel"`` when some cell is above
    ``novelty_threshold``. Labels no cell received are not categories, so
    scanpy's grouping functions (``sc.tl.rank_genes_groups``, ``sc.pl.dotplot``,
    ``sc.tl.dendrogram``) accept the column as it is.
``obs[f"{key_added}_confidence"]``
    float32 calibrated probability of the predicted label.
``obs[f"{key_added}_cell_type_ontology_term_id"]``
    For a model trained with ``ontology_key``: the Cell Ontology id of the predicted
    label (categorical; ``"unknown"`` for ``"Unassigned"`` and ``"Novel"``).
``obs[f"{key_added}_cell_type_{level}"]`` and ``obs[f"{key_added}_confidence_{level}"]``
    For a model with a label hierarchy (see :doc:`/hierarchy`), one pair per level,
    coarse to fine: the label at that level on the cell's top-down path (categorical;
    ``"Unassigned"`` below the level the cell is called at) and its calibrated
    probability (float32, the sum over the labels under it). The levels of a cell
    always form one path of the tree, and ``{key_added}_cell_type`` is its deepest
    assigned label, a coarser one when the finer ones miss ``unassigned_threshold``.
``obs[f"{key_added}_novelty"]``
    float32 novelty score: the Mahalanobis distance of the cell's last hidden layer
    to the nearest reference label, higher for cells unlike every label the model
    knows (not ``1 - confidence``). Written when the model stores reference statistics
    (trained by ginseng >= 0.3).
``obs[f"{key_added}_prediction_set"]`` and ``obs[f"{key_added}_prediction_set_size"]``
    With ``prediction_sets=alpha``: the labels of the cell's conformal set joined by
    ``"|"`` in model order (categorical; ``""`` for an empty set, a cell no label
    fits), and their number (int32).
``obsm[f"{key_added}_probabilities"]``
    float32 ``n_cells x n_labels`` calibrated probabilities; columns follow
    ``uns[key_added]["classify"]["labels"]`` (unless ``store_probabilities=False``).
``obs[f"{key_added}_majority_vote"]``
    Categorical cluster-level label (with ``majority_vote_key``); categories as
    above, with ``"Heterogeneous"`` last when some cluster got it.
``uns[f"{key_added}_cell_type_colors"]`` (and ``..._majority_vote_colors``)
    A colour per category, fixed by the label's position in the model, so
    ``sc.pl.umap(adata, color="ginseng_cell_type")`` colours a cell type the same
    in every dataset.
``uns[key_added]["classify"]``
    ``"params"`` (the arguments), ``"labels"`` (probability column order),
    ``"model"`` (holdout accuracy, macro-F1, ECE, temperature, fingerprint) and
    ``"gene_overlap"`` (genes found, fraction, the names' source and id types)."""

_classify_raises = """\
GeneMismatchError
    Fewer than ``min_gene_overlap`` of the model's genes are in the query.
InputError
    The matrix does not hold raw counts (see ``check_counts``), a key is missing,
    the options contradict each other, or ``novelty_threshold``/``prediction_sets``
    are asked of a model that stores no reference statistics."""

_processor = DocstringProcessor(
    classify_adata=_classify_adata,
    model=_model,
    layer=_layer,
    return_table=_return_table,
    classify_options=_classify_options,
    classify_fields=_classify_fields,
    classify_raises=_classify_raises,
)


def shared_docs(func: F) -> F:
    """Fill the ``%(name)s`` entries of ``func``'s docstring; the signature stays typed."""
    return _processor.dedent(func)
