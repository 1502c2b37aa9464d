"""Errors ginseng does not anticipate still end the console script with one line and exit 1.

Each case provokes, from outside, an exception that is neither a ``GinsengError`` nor an
``OSError`` (input ginseng does not check today); before ``main`` caught every exception
these printed a Python traceback. Should ginseng learn to report one of them as a
``GinsengError``, that case no longer reaches the catch-all and its ``unexpected``
assertion fails to say so: replace the case with another.
"""

from __future__ import annotations

import gzip
import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ginseng.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def toy_h5ad(tmp_path_factory, make_toy):
    path = tmp_path_factory.mktemp("cli_errors") / "toy.h5ad"
    make_toy(n_cells=200).write_h5ad(path)
    return path


def gzipped_gene_list(tmp_path, toy_h5ad, state):
    """``--genes genes.txt.gz``: a gene list compressed, as gene lists often are."""
    path = tmp_path / "genes.txt.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(f"gene{j}" for j in range(10)))
    args = ("train", str(toy_h5ad), "--labels", "cell_type", "--genes", str(path))
    return (*args, "--epochs", "1", "--out", str(tmp_path / "m.h5")), "UnicodeDecodeError"


@pytest.mark.parametrize("case", [gzipped_gene_list])
def test_unexpected_errors_one_line_exit_1(case, tmp_path, toy_h5ad, toy_trained):
    args, name = case(tmp_path, toy_h5ad, toy_trained.state)
    result = run(*args)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ginseng: error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0] == result.stderr.strip().splitlines()[-1]
    assert f"unexpected {name}:" in errors[0], "now a GinsengError? pick another case"
    assert errors[0].endswith("(rerun with --debug for the traceback)")

    debug = run("--debug", *args)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith(f"{name}:")
    assert "ginseng: error:" not in debug.stderr


def test_ginseng_errors_keep_their_message(toy_h5ad):
    """Expected errors are not labelled "unexpected": the message is ginseng's own."""
    result = run("train", str(toy_h5ad), "--labels", "no_such_column")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ginseng: error: ") and "no_such_column" in last
    assert "unexpected" not in last and "Traceback" not in result.stderr
