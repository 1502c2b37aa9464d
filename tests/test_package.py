"""The package surface: light import, settings, logger hygiene."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

import ginseng as gs


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_import_does_not_load_jax_or_scanpy():
    loaded = _modules_after("import ginseng as gs; gs.pp; gs.tl; gs.pl; import ginseng.data.io")
    assert not {"jax", "flax", "optax", "scanpy"} & loaded


def test_public_faces():
    assert gs.__version__.count(".") >= 2
    assert callable(gs.pp.select_hvgs)
    assert gs.utils.select_hvgs is gs.pp.select_hvgs
    assert {"pp", "tl", "pl", "settings"} <= set(dir(gs))
    with pytest.raises(AttributeError):
        gs.does_not_exist  # noqa: B018


def test_settings_validate_and_drive_the_logger(tmp_path):
    old = gs.settings.verbosity
    try:
        gs.settings.verbosity = 3
        assert logging.getLogger("ginseng").level == logging.DEBUG
        with pytest.raises(ValueError, match="verbosity"):
            gs.settings.verbosity = 7
    finally:
        gs.settings.verbosity = old
    with pytest.raises(ValueError, match="chunk_size"):
        gs.settings.chunk_size = 0
    old_dir = gs.settings.cache_dir
    gs.settings.cache_dir = str(tmp_path)
    assert gs.settings.cache_dir == tmp_path
    gs.settings.cache_dir = old_dir
    assert "chunk_size" in repr(gs.settings)


def test_import_adds_no_logging_handlers():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging, ginseng; print(len(logging.getLogger('ginseng').handlers))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "0"
