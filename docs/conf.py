"""Sphinx configuration for the ginseng documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``. Notebooks are
rendered from the outputs committed in ``notebooks/`` (``nb_execution_mode = "off"``),
so Read the Docs shows the full runs; ``.ci/docs`` executes them separately in a small
configuration to check that they still run.
"""

import os
from importlib.metadata import version as _version

# Plots in executed docstrings or notebooks must never try to open a window.
os.environ.setdefault("MPLBACKEND", "Agg")

project = "ginseng"
author = "ginseng developers"
copyright = "2026, ginseng developers"
release = _version("ginseng")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "tutorials/README.md"]

# API reference
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# Attributes as fields of the class, not separate entries that clash with :members:.
napoleon_use_ivar = True
# ginseng's Returns sections are prose plus a definition list of the AnnData fields
# written (as in scanpy), not "name : type" entries; render them as written.
napoleon_custom_sections = [("Returns", "returns_as_written")]

# Markdown and notebooks
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"
nb_merge_streams = True

# HTML
html_theme = "sphinx_book_theme"
html_title = "ginseng"
html_theme_options = {
    "repository_url": "https://github.com/ginseng-dev/ginseng",
    "use_repository_button": True,
    "path_to_docs": "docs",
    "show_toc_level": 2,
}


def _write_cli_help() -> None:
    """Write ``ginseng <command> --help`` to generated/cli/ for cli.md to include.

    Taken from the installed command itself, so the page never drifts from the parser.
    """
    import subprocess
    import sys
    from pathlib import Path

    out = Path(__file__).parent / "generated" / "cli"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COLUMNS": "88"}
    # One entry per subcommand of ginseng.cli; add new commands here and in cli.md.
    for command in ("train", "annotate", "info", "demo"):
        result = subprocess.run(
            [sys.executable, "-m", "ginseng.cli", command, "--help"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        (out / f"{command}.txt").write_text(result.stdout)


_write_cli_help()
