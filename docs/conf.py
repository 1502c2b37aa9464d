"""Sphinx configuration for the ginseng documentation."""

from importlib.metadata import version as _version

project = "ginseng"
author = "ginseng developers"
copyright = "2026, ginseng developers"
release = _version("ginseng")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
]
autosummary_generate = True
napoleon_google_docstring = False
napoleon_numpy_docstring = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
nb_execution_mode = "off"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "sphinx_book_theme"
html_title = "ginseng"
