"""gs.logging: the versions behind a result, compared with what the packages themselves say."""

from __future__ import annotations

import io
import platform
import re
import sys
import types
import warnings
from importlib.metadata import version

import jax
import numpy as np
import scipy

import ginseng as gs


def _listed(report: str) -> dict[str, str]:
    """``name  version`` lines of session-info's report."""
    return dict(m.groups() for m in re.finditer(r"^(\S+)[ \t]+(\S+)$", report, re.MULTILINE))


def test_print_versions_names_ginseng_anndata_jax(capsys):
    buffer = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gs.logging.print_versions(file=buffer)
    # session-info reads the deprecated `anndata.__version__`; users must not see that.
    assert not [w for w in caught if "__version__" in str(w.message)]
    assert capsys.readouterr().out == ""  # all of it went to `file`
    report = buffer.getvalue()
    listed = _listed(report)
    assert listed["ginseng"] == gs.__version__
    assert listed["anndata"] == version("anndata")
    assert listed["jax"] == jax.__version__
    assert listed["numpy"] == np.__version__
    assert f"Python {platform.python_version()}" in report
    # ginseng heads the report, before the packages it loads.
    assert report.splitlines()[1].split()[0] == "ginseng"


def test_print_versions_to_stdout(capsys):
    gs.logging.print_versions()
    assert _listed(capsys.readouterr().out)["ginseng"] == gs.__version__


def test_versions_match_the_packages():
    found = gs.logging.versions()
    assert found["python"] == platform.python_version()
    assert found["ginseng"] == gs.__version__
    assert found["jax"] == jax.__version__
    assert found["anndata"] == version("anndata")
    assert found["numpy"] == np.__version__
    assert found["scipy"] == scipy.__version__
    assert list(found)[:4] == ["python", "platform", "ginseng", "jax"]
    assert all(isinstance(v, str) and v for v in found.values())


def test_print_versions_with_a_module_whose_parent_is_not_loaded(monkeypatch):
    """sys.modules may hold ``a.b`` without ``a`` (coverage's and pytest's own entries do)."""
    orphan = types.ModuleType("ginseng_test_orphan.child")
    monkeypatch.setitem(sys.modules, "ginseng_test_orphan.child", orphan)
    assert "ginseng_test_orphan" not in sys.modules
    buffer = io.StringIO()
    gs.logging.print_versions(file=buffer)
    assert _listed(buffer.getvalue())["ginseng"] == gs.__version__
