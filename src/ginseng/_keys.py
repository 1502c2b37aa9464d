"""Every AnnData key, store attribute and file-format version in one place.

The keys ``gs.tl.classify`` writes depend on its ``key_added``;
:class:`ResultKeys` derives all of them from that prefix, so ``tl.classify``, the
results table, the plots and the command line name them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

# AnnData keys. PREFIX is the default ``key_added`` of gs.tl.classify and the uns entry
# (``uns["ginseng"]``) every call records its parameters under.
PREFIX = "ginseng"
UNS_KEY = PREFIX
VAR_GENES = "ginseng_genes"
VAR_HVG_RANK = "ginseng_hvg_rank"

# Reserved labels of gs.tl.classify: low-confidence cells and mixed clusters.
UNASSIGNED = "Unassigned"
HETEROGENEOUS = "Heterogeneous"
NOVEL = "Novel"
# Separator of the labels in a prediction set ("CD4 T|CD8 T").
SET_SEPARATOR = "|"


@dataclass(frozen=True)
class ResultKeys:
    """The AnnData keys ``gs.tl.classify`` writes for one ``key_added``.

    >>> keys = ResultKeys.from_prefix("ginseng")
    >>> keys.cell_type, keys.probabilities, keys.colors(keys.cell_type)
    ('ginseng_cell_type', 'ginseng_probabilities', 'ginseng_cell_type_colors')
    """

    prefix: str

    @classmethod
    def from_prefix(cls, key_added: str = PREFIX) -> ResultKeys:
        """The keys for ``key_added`` (``"ginseng"`` by default)."""
        return cls(key_added)

    @property
    def cell_type(self) -> str:
        """``obs`` column of the predicted labels."""
        return f"{self.prefix}_cell_type"

    @property
    def confidence(self) -> str:
        """``obs`` column of the calibrated probability of the predicted label."""
        return f"{self.prefix}_confidence"

    @property
    def probabilities(self) -> str:
        """``obsm`` key of the probabilities of every label."""
        return f"{self.prefix}_probabilities"

    @property
    def novelty(self) -> str:
        """``obs`` column of the novelty score (higher: unlike every reference label)."""
        return f"{self.prefix}_novelty"

    @property
    def prediction_set(self) -> str:
        """``obs`` column of the conformal prediction set (labels joined by ``"|"``)."""
        return f"{self.prefix}_prediction_set"

    @property
    def prediction_set_size(self) -> str:
        """``obs`` column of the number of labels in the prediction set."""
        return f"{self.prefix}_prediction_set_size"

    @property
    def majority_vote(self) -> str:
        """``obs`` column of the cluster-level labels."""
        return f"{self.prefix}_majority_vote"

    @property
    def ontology_term_id(self) -> str:
        """``obs`` column of the Cell Ontology id of the predicted label."""
        return f"{self.prefix}_cell_type_ontology_term_id"

    def level(self, name: str) -> str:
        """``obs`` column of the labels at hierarchy level ``name`` (models with one)."""
        return f"{self.prefix}_cell_type_{name}"

    def level_confidence(self, name: str) -> str:
        """``obs`` column of the calibrated probability at hierarchy level ``name``."""
        return f"{self.prefix}_confidence_{name}"

    @property
    def uns(self) -> str:
        """``uns`` key of the records (``uns[key]["classify"]``)."""
        return self.prefix

    @staticmethod
    def colors(column: str) -> str:
        """``uns`` key of a categorical column's colours, as scanpy names it."""
        return f"{column}_colors"


# The keys of the default key_added (the plots' defaults).
DEFAULT_KEYS = ResultKeys.from_prefix(PREFIX)

# GinsengDataset store (zarr v3 group).
STORE_FORMAT = "ginseng-dataset"
STORE_FORMAT_VERSION = 1

# Model file (.h5).
MODEL_FORMAT = "ginseng-model"
MODEL_FORMAT_VERSION = 1
