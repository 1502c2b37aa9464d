"""Sphinx configuration for the ginseng documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``. Notebooks are
rendered from the outputs committed in ``notebooks/`` (``nb_execution_mode = "off"``),
so Read the Docs shows the full runs; ``.ci/docs`` executes them separately in a small
configuration to check that they still run.
"""

import os
import zlib
from importlib.metadata import version as _version
from pathlib import Path

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
    "sphinx.ext.intersphinx",
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

# Cross-references: every one must resolve (nitpicky, and the build runs with -W).
nitpicky = True
# The inventories are local, so that the build is the same with or without a network
# (CI has none). docs/_inventories/ holds the full objects.inv of Python 3.11 and pandas
# 1.5 (from Debian's python3-doc and python-pandas-doc packages) and, for the projects
# whose inventories no package ships, a list of the objects these pages link to
# (<project>.txt, one inventory line each) that is built into an objects.inv here. A new
# link into such a project fails the build until its line is added; check the addresses
# online with `sphinx-build -b linkcheck docs docs/_build/linkcheck`.
_INVENTORIES = Path(__file__).parent / "_inventories"


def _inventory(project: str) -> str:
    """Path of ``project``'s objects.inv: the committed one, or one built from its list."""
    committed = _INVENTORIES / f"{project}.inv"
    if committed.exists():
        return str(committed)
    lines = (_INVENTORIES / f"{project}.txt").read_text().splitlines()
    body = "".join(f"{line}\n" for line in lines if line.strip() and not line.startswith("#"))
    header = (
        f"# Sphinx inventory version 2\n# Project: {project}\n# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    built = Path(__file__).parent / "_build" / "inventories" / f"{project}.inv"
    built.parent.mkdir(parents=True, exist_ok=True)
    built.write_bytes(header.encode() + zlib.compress(body.encode()))
    return str(built)


intersphinx_mapping = {
    name: (url, _inventory(name))
    for name, url in {
        "python": "https://docs.python.org/3",
        "numpy": "https://numpy.org/doc/stable",
        "scipy": "https://docs.scipy.org/doc/scipy",
        "pandas": "https://pandas.pydata.org/docs",
        "anndata": "https://anndata.readthedocs.io/en/stable",
        "scanpy": "https://scanpy.readthedocs.io/en/stable",
        "jax": "https://docs.jax.dev/en/latest",
        "flax": "https://flax.readthedocs.io/en/latest",
        "matplotlib": "https://matplotlib.org/stable",
    }.items()
}
# Names under which annotations reach the docs, mapped to where they are documented:
# classes defined in private modules, and names imported only for type checking.
_PUBLIC_NAMES = {
    "anndata._core.anndata.AnnData": "anndata.AnnData",
    "AnnData": "anndata.AnnData",
    "jax.jaxlib._jax.Array": "jax.Array",
    "flax.nnx.module.Module": "flax.nnx.Module",
    "Path": "pathlib.Path",
    "np.ndarray": "numpy.ndarray",
    "pd.DataFrame": "pandas.DataFrame",
    "scipy.sparse._csr.csr_matrix": "scipy.sparse.csr_matrix",
    "sp.csr_matrix": "scipy.sparse.csr_matrix",
}
# Short references in docstrings of train/ and model/ (being reorganised) that resolve on
# their own pages but not in the autosummary tables; qualify them, then drop these.
nitpick_ignore = [
    ("py:class", "GinsengClassifierTrainer"),
    ("py:meth", "GinsengClassifierTrainer.fit"),
    ("py:func", "save_model"),
    ("py:attr", "genes"),
    ("py:attr", "labels"),
    ("py:func", "network_config"),
    ("py:func", "first_linear_sparse"),
    # A typing.Literal alias in tl.kernel's signatures; its values are in the docstring.
    ("py:class", "CountCheck"),
]

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


def _public_name(app, env, node, contnode):
    """Resolve a reference to a name in ``_PUBLIC_NAMES`` as its documented name."""
    from sphinx.ext.intersphinx import missing_reference

    target = _PUBLIC_NAMES.get(node.get("reftarget"))
    if target is None:
        return None
    node["reftarget"] = target
    return missing_reference(app, env, node, contnode)


def setup(app):
    app.connect("missing-reference", _public_name)
