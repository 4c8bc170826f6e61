"""The codebase's own checks, run in CI with everything else: ruff (lint, format) and mypy."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"`{' '.join(command)}` failed:\n{result.stdout}{result.stderr}"


def test_ruff_lint():
    run("ruff", "check", ".")


def test_ruff_format():
    run("ruff", "format", "--check", ".")


@pytest.mark.slow
def test_mypy():
    run("mypy", "adamx")
