"""Reading single-cell data and (de)serialising models: the seed's public paths.

``from ginseng.data.io import read_adata`` is the documented entry point; importing
this module does not import scanpy or anndata until a function is called.
"""

from ..model.file import load_model, save_model
from ._read import read_adata

__all__ = ["load_model", "read_adata", "save_model"]
