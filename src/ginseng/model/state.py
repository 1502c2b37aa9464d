"""GinsengModelState: everything inference needs, in plain numpy and JSON-able values.

The state holds no jax object, so loading a model file stays light; the network is
rebuilt (and its forward pass compiled once) on the first prediction.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import InputError
from ._card import model_card
from ._restrict import restrict_labels

if TYPE_CHECKING:
    import jax

    from .hierarchy import Hierarchy
    from .network import GinsengClassifier
    from .ontology import OntologyIds
    from .uncertainty import Uncertainty

# Rows per compiled forward call; smaller inputs use the next power of two so that few
# distinct shapes are ever compiled.
PREDICT_BATCH = 4096
# Sparse input below this density skips the zeros in the first layer (exact, see
# first_layer.first_linear_sparse); denser input goes through the dense compiled network.
SPARSE_MAX_DENSITY = 0.25


def data_fingerprint(genes: np.ndarray, labels: np.ndarray, label_counts: np.ndarray) -> str:
    """SHA-1 of the gene names, label names, label counts and number of cells."""
    digest = hashlib.sha1()
    for part in (
        "\x1f".join(map(str, genes)),
        "\x1f".join(map(str, labels)),
        ",".join(str(int(c)) for c in label_counts),
        str(int(np.sum(label_counts))),
    ):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x1e")
    return digest.hexdigest()


def param_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shape of every network variable for ``config``, computed without building it.

    Lets a model file be checked against its architecture without importing jax; a
    test keeps it in step with :class:`~ginseng.model.GinsengClassifier`.
    """
    if config.get("architecture") != "mlp":
        raise ValueError(f"unknown architecture {config.get('architecture')!r}")
    n_genes, hidden, n_labels = config["n_genes"], config["hidden_dim"], config["n_labels"]
    shapes: dict[str, tuple[int, ...]] = {"gene_mean": (n_genes,), "gene_scale": (n_genes,)}
    n_in = n_genes
    for i in range(config["n_layers"]):
        shapes[f"blocks/{i}/linear/kernel"] = (n_in, hidden)
        for name in ("linear/bias", "norm/bias", "norm/scale"):
            shapes[f"blocks/{i}/{name}"] = (hidden,)
        n_in = hidden
    shapes["head/kernel"] = (hidden, n_labels)
    shapes["head/bias"] = (n_labels,)
    return shapes


@dataclass(eq=False)
class GinsengModelState:
    """A trained classifier: weights, genes, labels, preprocessing, calibration and record.

    Attributes
    ----------
    params
        ``{"blocks/0/linear/kernel": float32 array, ...}``: every variable of the network,
        including the fixed per-gene preprocessing statistics.
    config
        Architecture and preprocessing (``normalize``, ``target_sum``, ``log1p``,
        ``standardize``) from which the network is rebuilt.
    genes
        Gene names in model input order.
    labels
        Label names in output order.
    temperature
        Calibration temperature: calibrated probabilities are ``softmax(logits / T)``.
    metrics
        Holdout metrics: ``accuracy``, ``macro_f1``, ``f1_per_label``, ``ece`` (after
        calibration) and ``ece_uncalibrated``, ``nll``, ``confusion`` (true x predicted,
        label order), ``n_cells``, ``best_epoch``, ``temperature``, ``holdout_fraction``,
        ``holdout_split`` (``"cells"``, or ``"groups"`` when whole groups were held
        out, with ``n_heldout_groups``, ``heldout_groups`` and ``ece_heldout_groups``: the
        calibrated ECE on groups the network never saw).
    history
        Per-epoch record as columns (``epoch``, ``train_loss``, ``holdout_loss``,
        ``holdout_accuracy``, ``holdout_macro_f1``, ``lr``, ``seconds``,
        ``data_wait_seconds``: the part of ``seconds`` spent waiting for the next
        batch; absent from models trained before it was recorded);
        ``pandas.DataFrame(history)`` gives a table.
    settings
        The :class:`~ginseng.train.GinsengClassifierTrainerSettings` used for training.
    provenance
        Package versions, seed, data fingerprint and store source.
    uncertainty
        Reference statistics of the novelty score and the per-label conformal scores
        (:class:`~ginseng.model.uncertainty.Uncertainty`), fitted on the holdout at
        training time; ``None`` for models trained before ginseng 0.3, which then
        give neither novelty scores nor prediction sets.
    hierarchy
        Coarse-to-fine levels over the labels
        (:class:`~ginseng.model.hierarchy.Hierarchy`, from ``gs.tl.train``'s
        ``hierarchy=``), or ``None``. With one, :func:`ginseng.tl.classify` writes a
        column per level and backs off to a coarser level when a finer one is
        uncertain.
    ontology
        The Cell Ontology id of each label (and hierarchy node)
        (:class:`~ginseng.model.ontology.OntologyIds`, from ``gs.tl.train``'s
        ``ontology_key=``), or ``None``; :func:`ginseng.tl.classify` writes them next to
        the labels.

    Examples
    --------
    ``state`` is a model trained with :func:`ginseng.tl.train` (or read with
    :func:`ginseng.data.io.load_model`); printing it shows its model card:

    >>> state  # doctest: +ELLIPSIS
    GinsengModelState
      labels (10): CD4+/CD25 T Reg, CD4+/CD45RA+/CD25- Naive T, ...
      genes: 765 (first: HES4, TNFRSF4, SSU72)
      network: 2 x 32 hidden (gelu), ...
    >>> list(state.history)[:3]
    ['epoch', 'train_loss', 'holdout_loss']

    Predictions for a matrix of raw counts whose columns are the model's genes
    (:func:`ginseng.tl.classify` matches an AnnData's genes by name):

    >>> X = query[:, state.genes].layers["counts"]
    >>> proba = state.predict_proba(X)
    >>> proba.shape, proba.dtype
    ((350, 10), dtype('float32'))
    >>> bool(np.allclose(proba.sum(axis=1), 1, atol=1e-5))
    True
    >>> set(state.predict(X)) <= set(state.labels)
    True
    """

    params: dict[str, np.ndarray]
    config: dict[str, Any]
    genes: np.ndarray
    labels: np.ndarray
    temperature: float = 1.0
    metrics: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list] = field(default_factory=dict)
    settings: Any = None
    provenance: dict[str, Any] = field(default_factory=dict)
    uncertainty: Uncertainty | None = None
    hierarchy: Hierarchy | None = None
    ontology: OntologyIds | None = None

    def __post_init__(self) -> None:
        self.genes = np.asarray(self.genes, dtype=str)
        self.labels = np.asarray(self.labels, dtype=str)
        self.params = {k: np.asarray(v, dtype=np.float32) for k, v in self.params.items()}
        self.temperature = float(self.temperature)
        self._forward: tuple[Any, Any, Any] | None = None

    def restrict_labels(self, labels: Any) -> GinsengModelState:
        """The model over a subset of its labels, probabilities renormalised.

        The output layer keeps the rows of ``labels`` (in the model's order), so the
        calibrated probabilities are ``softmax`` over their logits alone: those of the
        full model conditioned on the cell being one of ``labels``, calibrated when the
        full model is. Novelty becomes the distance to the nearest kept label (a cell of
        a dropped type scores high), with the model's reference cut-offs; conformal
        sets keep each kept label's held-out scores (computed with all labels, so the
        sets are conservative); a hierarchy keeps the branches of the kept labels.

        Parameters
        ----------
        labels
            Names of model labels, at least two; a name the model lacks raises an
            :class:`~ginseng.InputError` naming it.
        """
        return restrict_labels(self, labels)

    @property
    def n_genes(self) -> int:
        """Number of input genes."""
        return len(self.genes)

    @property
    def gene_names(self) -> np.ndarray:
        """Deprecated alias of :attr:`genes` (removed in a future release)."""
        _deprecated_alias("gene_names", "genes")
        return self.genes

    @property
    def label_names(self) -> np.ndarray:
        """Deprecated alias of :attr:`labels` (removed in a future release)."""
        _deprecated_alias("label_names", "labels")
        return self.labels

    @property
    def n_labels(self) -> int:
        """Number of output labels."""
        return len(self.labels)

    def build_model(self) -> GinsengClassifier:
        """Rebuild the Flax NNX network (:class:`~ginseng.model.GinsengClassifier`) with these weights."""
        from .network import build_model

        return build_model(self.config, self.params)

    def _compiled_forward(self) -> tuple[Any, Any, Any]:
        """Jitted ``(dense counts -> (hidden, logits), first-layer output -> (hidden, logits))`` and the weights.

        The dense forward takes ``present`` (one value per gene, see
        :meth:`GinsengClassifier.preprocess`) or ``None`` for all genes measured.
        """
        if self._forward is None:
            import jax
            from flax import nnx

            graphdef, variables = nnx.split(self.build_model())

            # Both return (last hidden layer, logits): the hidden layer feeds the
            # novelty score, and returning it costs one small transfer.
            @jax.jit
            def forward(
                variables: Any, x: jax.Array, present: Any = None, share: Any = None
            ) -> tuple[jax.Array, jax.Array]:
                model = nnx.merge(graphdef, variables)
                z = model.blocks[0].linear(model.preprocess(x, present=present, share=share))
                h = model.hidden_from_first_linear(z)
                return h, model.head(h)

            @jax.jit
            def from_first_linear(variables: Any, z: jax.Array) -> tuple[jax.Array, jax.Array]:
                model = nnx.merge(graphdef, variables)
                h = model.hidden_from_first_linear(z)
                return h, model.head(h)

            self._forward = (forward, from_first_linear, variables)
        return self._forward

    def predict_logits(
        self, X: Any, *, batch_size: int = PREDICT_BATCH, missing: Any = None
    ) -> np.ndarray:
        """Return float32 logits (cells x labels) for raw counts in the model's gene order.

        See :meth:`predict_hidden_logits` for the parameters.
        """
        return self.predict_hidden_logits(X, batch_size=batch_size, missing=missing)[1]

    def predict_hidden_logits(
        self, X: Any, *, batch_size: int = PREDICT_BATCH, missing: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return float32 last-hidden-layer outputs (cells x hidden_dim) and logits (cells x labels).

        The hidden layer is what the head maps to logits; the novelty score
        (``uncertainty``) is a distance in it.

        Parameters
        ----------
        X
            Dense array or scipy sparse matrix of raw counts, ``n_cells x n_genes``,
            columns ordered as :attr:`genes` (``ginseng.tl.classify`` aligns an AnnData).
        batch_size
            Rows per compiled forward call.
        missing
            Boolean mask (one per model gene) of genes the query did not measure, e.g.
            ``alignment.missing`` (:class:`ginseng.tl.kernel.GeneAlignment`). Their values are unknown,
            not zero: each is set to its training mean (0 after standardisation), its
            column of ``X`` is ignored, and the normalisation target is scaled by the
            share of the counts the present genes are expected to carry
            (``ginseng.model.first_layer.present_share``), since a cell's total then
            covers the present genes only. ``None`` (or no ``True``) treats every
            column as measured, zeros included.
        """
        import scipy.sparse as sp

        sparse = sp.issparse(X)
        if not sparse:
            X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_genes:
            raise InputError(
                f"Expected a cells x genes matrix with {self.n_genes} columns in the model's "
                f"gene order, got shape {X.shape}; use ginseng.tl.classify to align genes by name."
            )
        from .first_layer import first_linear_sparse, present_share

        present = share = None
        if missing is not None:
            missing = np.asarray(missing, dtype=bool)
            if missing.shape != (self.n_genes,):
                raise InputError(
                    f"missing must be a boolean mask of the model's {self.n_genes} genes, "
                    f"got shape {missing.shape}."
                )
            if missing.any():
                present = (~missing).astype(np.float32)
                share = np.float32(present_share(self.config, self.params, missing))
                # A missing gene's column is ignored, whatever it holds.
                if sparse:
                    X = sp.csr_matrix(X.multiply(present))
                    X.eliminate_zeros()
                else:
                    X = X * present
            else:
                missing = None
        n = X.shape[0]
        out = np.empty((n, self.n_labels), np.float32)
        hidden = np.empty((n, int(self.config["hidden_dim"])), np.float32)
        if n == 0:
            return hidden, out
        forward, from_first_linear, variables = self._compiled_forward()
        rows = min(batch_size, 1 << max(n - 1, 0).bit_length())
        if sparse:
            X = sp.csr_matrix(X)
            sparse = X.nnz <= SPARSE_MAX_DENSITY * n * self.n_genes

        for start in range(0, n, rows):
            block = X[start : start + rows]
            if sparse:
                # Only the non-zeros enter the first layer; the rest is compiled.
                block = first_linear_sparse(self.config, self.params, block, missing=missing)
                step = from_first_linear
                extra: tuple = ()
            else:
                block = block.toarray() if sp.issparse(block) else np.asarray(block)
                step = forward
                extra = () if present is None else (present, share)
            block = block.astype(np.float32, copy=False)
            m = block.shape[0]
            if m < rows:
                block = np.concatenate([block, np.zeros((rows - m, block.shape[1]), np.float32)])
            h, logits = step(variables, block, *extra)
            hidden[start : start + m] = np.asarray(h)[:m]
            out[start : start + m] = np.asarray(logits)[:m]
        return hidden, out

    def predict_proba(
        self,
        X: Any,
        *,
        calibrated: bool = True,
        batch_size: int = PREDICT_BATCH,
        missing: Any = None,
    ) -> np.ndarray:
        """Return float32 class probabilities (cells x labels), temperature-scaled if ``calibrated``.

        ``missing`` marks genes the query lacks (see :meth:`predict_logits`).
        """
        from scipy.special import softmax

        logits = self.predict_logits(X, batch_size=batch_size, missing=missing)
        logits = logits.astype(np.float64)
        if calibrated:
            logits /= self.temperature
        return softmax(logits, axis=1).astype(np.float32)

    def predict(
        self, X: Any, *, batch_size: int = PREDICT_BATCH, missing: Any = None
    ) -> np.ndarray:
        """Return the predicted label name of each cell (``missing``: see :meth:`predict_logits`)."""
        logits = self.predict_logits(X, batch_size=batch_size, missing=missing)
        return self.labels[logits.argmax(axis=1)]

    def __repr__(self) -> str:
        return model_card(self)


def _deprecated_alias(old: str, new: str) -> None:
    warnings.warn(
        f"GinsengModelState.{old} is deprecated and will be removed; use .{new}.",
        FutureWarning,
        stacklevel=3,
    )
