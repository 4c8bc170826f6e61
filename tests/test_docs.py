"""The docs: the API reference lists exactly the public names, and the Sphinx build is clean."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import adamx
from tests import generate

DOCS = Path(__file__).resolve().parent.parent / "docs"
API_PAGE = DOCS / "api.md"

# An autodoc directive, in reStructuredText (`.. autofunction:: adamx.adam`, also inside a MyST
# `{eval-rst}` block) or as a MyST fence (```{autofunction} adamx.adam); captures its target.
_AUTODOC = re.compile(
    r"^\s*(?:\.\.\s+auto\w+::|```+\{auto\w+\})\s+(?P<target>[\w.]+)", flags=re.MULTILINE
)


def documented_targets(text: str) -> list[str]:
    """The targets of the autodoc directives in ``text``, in order, repeats kept."""
    return [match["target"] for match in _AUTODOC.finditer(text)]


def test_parser_reads_both_directive_forms():
    text = "```{eval-rst}\n.. autofunction:: adamx.adam\n```\n\n```{autoclass} adamx.EmaState\n```"
    assert documented_targets(text) == ["adamx.adam", "adamx.EmaState"]


def test_api_reference_documents_exactly_the_public_names():
    targets = documented_targets(API_PAGE.read_text(encoding="utf-8"))
    public = set(adamx.__all__)

    not_adamx = sorted(t for t in targets if not t.startswith("adamx.") or t.count(".") != 1)
    assert not not_adamx, (
        f"docs/api.md documents {not_adamx}; document public names as `adamx.<name>`."
    )
    names = [t.removeprefix("adamx.") for t in targets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    assert not repeated, f"docs/api.md documents {repeated} more than once."
    missing = sorted(public - set(names))
    assert not missing, (
        f"Public names missing from docs/api.md: {missing}. Add an autodoc directive such as "
        f"`.. autofunction:: adamx.{missing[0]}` to the right section."
    )
    private = sorted(set(names) - public)
    assert not private, (
        f"docs/api.md documents {private}, which are not in `adamx.__all__`; export them or "
        "remove them from the page."
    )


def test_the_api_reference_is_generated_from_the_modules_all():
    assert API_PAGE.read_text(encoding="utf-8") == generate.api_page(), (
        "docs/api.md is not what the modules' `__all__` give; regenerate it with "
        "`python -m tests.generate`."
    )


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    out = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html"]
    command += [str(DOCS), str(out)]
    result = subprocess.run(
        command, cwd=DOCS.parent, capture_output=True, text=True, timeout=600, check=False
    )
    log = f"$ {' '.join(command)}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    assert result.returncode == 0, f"sphinx-build failed:\n{log}"

    # A directive that MyST parses as Markdown builds without a warning but renders its rST as
    # text; check that every public name got a real API entry.
    page = (out / "api.html").read_text(encoding="utf-8")
    assert ".. py:" not in page, "docs/api.md rendered raw autodoc output; use {eval-rst} blocks."
    missing = sorted(name for name in adamx.__all__ if f'id="adamx.{name}"' not in page)
    assert not missing, f"api.html has no entry for {missing}:\n{log}"


def test_read_the_docs_builds_the_site_as_the_tests_do():
    """.readthedocs.yaml: the docs extra installed, docs/conf.py, warnings as errors (as `-W`)."""
    import tomllib
    import yaml

    root = DOCS.parent
    config = yaml.safe_load((root / ".readthedocs.yaml").read_text())
    assert config["version"] == 2
    assert (root / config["sphinx"]["configuration"]).is_file()
    assert config["sphinx"]["fail_on_warning"] is True
    (install,) = config["python"]["install"]
    assert install["method"] == "pip" and install["path"] == "."
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert install["extra_requirements"] == ["docs"] and "sphinx>=7" in extras["docs"]
