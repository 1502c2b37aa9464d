"""Every AnnData key, store attribute and file-format version in one place."""

# AnnData keys (``key_added`` replaces the ``ginseng`` prefix).
PREFIX = "ginseng"
UNS_KEY = "ginseng"
VAR_GENES = "ginseng_genes"
VAR_HVG_RANK = "ginseng_hvg_rank"
OBS_CELL_TYPE = "ginseng_cell_type"
OBS_CONFIDENCE = "ginseng_confidence"
OBSM_PROBABILITIES = "ginseng_probabilities"
UNASSIGNED = "Unassigned"

# GinsengDataset store (zarr v3 group).
STORE_FORMAT = "ginseng-dataset"
STORE_FORMAT_VERSION = 1

# Model file (.h5).
MODEL_FORMAT = "ginseng-model"
MODEL_FORMAT_VERSION = 1
