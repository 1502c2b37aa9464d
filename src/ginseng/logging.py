"""Versions of the software behind a result, as ``scanpy.logging.print_versions`` gives.

``gs.logging.print_versions()`` prints the session's versions (for a bug report or the
top of a notebook); :func:`versions` returns those that can change ginseng's numbers as a
dictionary, the form a model file's provenance records.
"""

from __future__ import annotations

import contextlib
import io
import platform
import sys
import warnings
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TextIO

__all__ = ["print_versions", "versions"]

# The distributions whose versions can change what ginseng computes, in the order shown;
# the value is the module to import where it differs from the distribution name.
_NUMERICS: dict[str, str | None] = {
    "ginseng": None,
    "jax": None,
    "jaxlib": None,
    "flax": None,
    "optax": None,
    "numpy": None,
    "scipy": None,
    "pandas": None,
    "anndata": None,
    "scanpy": None,
    "scikit-misc": "skmisc",
    "h5py": None,
    "zarr": None,
    "numcodecs": None,
}


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that can change ginseng's results.

    Read from the installed distributions' metadata, so nothing is imported. A package
    that is not installed is reported as ``"not installed"``.

    Returns
    -------
    ``{"python": "3.11.7", "platform": ..., "ginseng": ..., "jax": ..., ...}``: Python,
    the operating system, ginseng, and jax, jaxlib, flax, optax, numpy, scipy, pandas,
    anndata, scanpy, scikit-misc, h5py, zarr and numcodecs, in that order.

    Examples
    --------
    >>> found = gs.logging.versions()
    >>> found["ginseng"] == gs.__version__
    True
    >>> list(found)[:4]
    ['python', 'platform', 'ginseng', 'jax']
    """
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _NUMERICS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def print_versions(*, file: TextIO | None = None) -> None:
    """Print the versions of the packages loaded in this session, Python and the OS.

    The report of `session-info <https://pypi.org/project/session-info/>`_ (as
    ``scanpy.logging.print_versions`` gives it), after importing the packages listed by
    :func:`versions`, so that they are always part of it: ginseng first, then every
    other package loaded, each with its version, then Python, the OS and the date.
    Paste it into a bug report, or print it at the top of a notebook.

    Parameters
    ----------
    file
        Where to write (default: standard output).

    Examples
    --------
    >>> gs.logging.print_versions()  # doctest: +ELLIPSIS
    -----
    ginseng...
    -----
    ...anndata...
    Python ...
    """
    import session_info

    for name, module in _NUMERICS.items():
        with contextlib.suppress(ImportError):
            import_module(module or name)
    # session-info looks up the top-level name of every loaded module in sys.modules,
    # which fails for entries without a loaded parent (coverage and pytest make such).
    orphans = sorted({name.partition(".")[0] for name in list(sys.modules)} - set(sys.modules))
    # It lists the modules named in its caller's globals first ("imported": here ginseng,
    # through this module's own functions), then everything else loaded.
    report = io.StringIO()
    with contextlib.redirect_stdout(report), warnings.catch_warnings():
        # It reads `module.__version__`, which anndata, scanpy, MarkupSafe and others
        # deprecate (with FutureWarning or DeprecationWarning; the value is the same).
        warnings.filterwarnings("ignore", ".*__version__.*deprecated", FutureWarning)
        warnings.filterwarnings("ignore", ".*__version__.*deprecated", DeprecationWarning)
        session_info.show(
            dependencies=True, html=False, excludes=["builtins", "stdlib_list", *orphans]
        )
    print(report.getvalue(), end="", file=sys.stdout if file is None else file)
