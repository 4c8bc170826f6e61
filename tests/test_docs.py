"""The docs: the API reference lists exactly the public names, the Sphinx build is clean, and every
formula on the built site renders in MathJax without a TeX error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple

import pytest

import adamx
from tests import generate

DOCS = Path(__file__).resolve().parent.parent / "docs"
API_DIR = DOCS / "api"

# The MathJax the site loads: Sphinx 9's sphinx.ext.mathjax takes `mathjax@4/tex-mml-chtml.js`
# from the CDN, which is the newest 4.x; the TeX test renders with this release of it from npm.
MATHJAX = "4.1.3"
MATHJAX_CHECK = Path(__file__).with_name("mathjax_check.mjs")

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
    pages = sorted(API_DIR.glob("*.md"))
    assert len(pages) > 2, (
        f"docs/api/ holds {pages}; regenerate it with `python -m tests.generate`."
    )
    targets = [t for page in pages for t in documented_targets(page.read_text(encoding="utf-8"))]
    public = set(adamx.__all__)

    not_adamx = sorted(t for t in targets if not t.startswith("adamx.") or t.count(".") != 1)
    assert not not_adamx, (
        f"docs/api/ documents {not_adamx}; document public names as `adamx.<name>`."
    )
    names = [t.removeprefix("adamx.") for t in targets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    assert not repeated, f"docs/api/ documents {repeated} more than once."
    missing = sorted(public - set(names))
    assert not missing, (
        f"Public names missing from docs/api/: {missing}. Add an autodoc directive such as "
        f"`.. autofunction:: adamx.{missing[0]}` to the right page."
    )
    private = sorted(set(names) - public)
    assert not private, (
        f"docs/api/ documents {private}, which are not in `adamx.__all__`; export them or "
        "remove them from the pages."
    )


def test_the_api_reference_is_generated_from_the_modules_all():
    written = {page.name: page.read_text(encoding="utf-8") for page in API_DIR.glob("*.md")}
    stale = sorted(name for name, text in generate.api_pages().items() if written.get(name) != text)
    extra = sorted(set(written) - set(generate.api_pages()))
    assert not stale and not extra, (
        f"docs/api/ is not what the modules' `__all__` give (stale: {stale}, not generated: "
        f"{extra}); regenerate it with `python -m tests.generate`."
    )


def test_each_api_page_opens_with_a_table_of_its_names():
    for name, (title, _, _) in generate.API_PAGES.items():
        text = (API_DIR / f"{name}.md").read_text(encoding="utf-8")
        head, _, body = text.partition("\n## ")
        table = head.split(".. autosummary::", 1)[1].split("```", 1)[0].split()
        assert head.startswith(f"# {title}\n") and table[0] == ":nosignatures:", name
        assert [f"adamx.{n}" for n in table[1:]] == documented_targets(body), name
    index = (API_DIR / "index.md").read_text(encoding="utf-8")
    linked = re.findall(r"^\| \{doc\}`(\w+)`", index, flags=re.MULTILINE)
    assert linked == [*generate.API_PAGES, "types"]


def test_the_types_page_says_what_each_alias_stands_for():
    """The types page's aliases are those of adamx/core/_base.py, with the values written there."""
    import ast

    source = ast.parse((DOCS.parent / "adamx" / "core" / "_base.py").read_text())
    aliases = {
        node.targets[0].id: ast.unparse(node.value)
        for node in source.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        if node.targets[0].id[0].isupper()
    }
    protocols = {
        node.name
        for node in source.body
        if isinstance(node, ast.ClassDef) and [ast.unparse(b) for b in node.bases] == ["Protocol"]
    }
    documented = {name: value for name, value, _ in generate.TYPES}
    assert set(documented) == set(aliases) | protocols
    for name, value in aliases.items():
        written = re.sub(r"(?<![\w.])(collections\.abc|typing)\.", "", documented[name])
        assert written == value, f"docs/api/types.md says {name} is {written}; it is {value}."


# ---- The built site: one build, shared by the tests that read it ---------------------------------


class Site(NamedTuple):
    html: Path
    returncode: int
    log: str


def build_site(folder: Path) -> Site:
    """Build the site into ``folder/html`` with warnings as errors (CI's build).

    From a copy of ``docs/`` and ``notebooks/`` in ``folder``: the build stages the notebooks into
    its source tree (docs/tutorials/gallery.py), and a test writes only to temporary folders."""
    out = folder / "html"
    source = folder / "source"
    skip = shutil.ignore_patterns("_build", ".ipynb_checkpoints", "__pycache__")
    shutil.copytree(DOCS, source / "docs", ignore=skip)
    shutil.copytree(DOCS.parent / "notebooks", source / "notebooks", ignore=skip)
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html"]
    command += [str(source / "docs"), str(out)]
    result = subprocess.run(
        command, cwd=source, capture_output=True, text=True, timeout=600, check=False
    )
    log = f"$ {' '.join(command)}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    return Site(out, result.returncode, log)


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Site:
    """The site, built once per test session, shared by every test that reads it.

    The tests that use it are in one `xdist_group`, for pytest-xdist to run them on one worker;
    but pytest-xdist 3.8 under pytest 9.2 ignores the group (it renames `item._nodeid`, which
    pytest 9.2 no longer reads), so the first worker to ask builds it into the session's shared
    temp dir and the others wait for it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-<user>/pytest-<n>: the workers' basetemps are inside it
    folder, done = root / "docs-site", root / "docs-site.json"
    try:
        folder.mkdir()  # atomic: one worker wins and builds
    except FileExistsError:
        deadline = time.monotonic() + 900
        while not done.exists():
            assert time.monotonic() < deadline, f"no site in {folder} after 15 minutes."
            time.sleep(1)
    else:
        built = Site(folder / "html", -1, "the build raised")
        try:
            built = build_site(folder)
        finally:
            staged = done.with_suffix(".tmp")
            staged.write_text(json.dumps({"returncode": built.returncode, "log": built.log}))
            staged.replace(done)
    result = json.loads(done.read_text())
    return Site(folder / "html", result["returncode"], result["log"])


@pytest.mark.slow
@pytest.mark.xdist_group("docs_site")
def test_sphinx_build_has_no_warnings(site):
    assert site.returncode == 0, f"sphinx-build failed:\n{site.log}"

    # A directive that MyST parses as Markdown builds without a warning but renders its rST as
    # text; check that every public name got a real API entry.
    pages = {p.name: p.read_text(encoding="utf-8") for p in (site.html / "api").glob("*.html")}
    raw = sorted(name for name, page in pages.items() if ".. py:" in page or ".. auto" in page)
    assert not raw, f"docs/api/{raw} rendered raw autodoc output; use {{eval-rst}} blocks."
    text = "".join(pages.values())
    missing = sorted(name for name in adamx.__all__ if f'id="adamx.{name}"' not in text)
    assert not missing, f"docs/api/ has no entry for {missing}:\n{site.log}"

    # The aliases in signatures link to the types page; none is printed as Sphinx's wrapper.
    for alias, *_ in generate.TYPES:
        assert f'id="{alias}"' in pages["types.html"], alias
    assert 'href="types.html#ScalarOrSchedule"' in pages["optimizers_adam.html"]
    wrapped = sorted(name for name, page in pages.items() if "TypeAliasForwardRef" in page)
    assert not wrapped, f"{wrapped} print an alias as `TypeAliasForwardRef(...)`; see docs/conf.py."


# ---- Every formula renders: MathJax under Node.js, as the site's readers' browsers run it --------


def mathjax_prefix() -> Path:
    """A folder whose node_modules holds MathJax `MATHJAX`, installed from npm once per machine
    into a cache outside the repository (``$XDG_CACHE_HOME`` or ``~/.cache``, ``adamx-tests``)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    assert not missing, (
        f"{' and '.join(missing)} not found on PATH: the TeX test renders the site's formulas with "
        "MathJax under Node.js, as the site's readers' browsers do. Install Node.js 18 or newer "
        "with npm (Debian/Ubuntu: `apt-get install nodejs npm`; https://nodejs.org)."
    )
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adamx-tests"
    prefix = cache / f"mathjax-{MATHJAX}"
    if (prefix / "node_modules" / "mathjax" / "package.json").is_file():
        return prefix
    cache.mkdir(parents=True, exist_ok=True)
    # Install beside it and rename, so two test runs at once never see half an install.
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix.name}.", dir=cache))
    command = ["npm", "install", "--prefix", str(staging), "--no-save", "--no-package-lock"]
    command += ["--no-audit", "--no-fund", "--ignore-scripts", f"mathjax@{MATHJAX}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, (
        f"`{' '.join(command)}` failed: the TeX test needs MathJax {MATHJAX} from the npm "
        f"registry (once; it is kept in {prefix}).\n{result.stdout}\n{result.stderr}"
    )
    try:
        staging.rename(prefix)
    except OSError:  # another run installed it first
        shutil.rmtree(staging)
    return prefix


def render(pages: dict[str, list[tuple[str, bool]]], config: dict, tmp_path: Path) -> dict:
    """MathJax's verdict on each formula: ``{"version", "checked", "errors"}``."""
    prefix = mathjax_prefix()
    formulas = tmp_path / "formulas.json"
    formulas.write_text(json.dumps({"config": config, "pages": pages}), encoding="utf-8")
    command = ["node", str(MATHJAX_CHECK), str(prefix), str(formulas)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"`{' '.join(command)}` failed:\n{result.stderr}"
    return json.loads(result.stdout.splitlines()[-1])


class _MathText(HTMLParser):
    """The text of the elements MathJax typesets: those of class ``math`` (Sphinx's ``span.math``
    and ``div.math``, MyST's dollarmath, autosummary's tables), less equation numbers."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self._depth = 0  # how deep inside a math element; 0 outside one
        self._eqno = 0  # how deep inside its equation number

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        if self._depth:
            self._depth += 1
            self._eqno += bool(self._eqno or "eqno" in classes)
        elif "math" in classes:
            self._depth = 1
            self.texts.append("")

    def handle_endtag(self, tag):
        if tag in self.VOID or not self._depth:
            return
        self._depth -= 1
        self._eqno = max(self._eqno - 1, 0)

    def handle_data(self, data):
        if self._depth and not self._eqno:
            self.texts[-1] += data


_DELIMITED = re.compile(
    r"\\\((?P<inline>.*?)\\\)|\\\[(?P<display>.*?)\\\]|\$\$(?P<dollars>.*?)\$\$", re.S
)


def formulas(html: str) -> list[tuple[str, bool]]:
    """The formulas of a built page, as MathJax finds them: ``(tex, display)`` pairs.

    Sphinx writes inline math as ``\\(...\\)`` and display math as ``\\[...\\]`` inside its math
    elements; an element without delimiters (``:nowrap:``) is taken whole, as display math."""
    parser = _MathText()
    parser.feed(html)
    found = []
    for text in parser.texts:
        matches = list(_DELIMITED.finditer(text))
        if not matches and text.strip():
            found.append((text.strip(), True))
        for match in matches:
            inline, display, dollars = match.group("inline", "display", "dollars")
            found.append(
                (inline, False) if inline is not None else (display or dollars or "", True)
            )
    return found


def test_formulas_are_read_from_the_html_as_mathjax_finds_them():
    html = (
        '<p>Text \\(not math\\) <span class="math notranslate nohighlight">\\(a &lt; b\\)</span>'
        '</p><div class="math notranslate nohighlight" id="equation-x"><span class="eqno">(1)'
        '<a class="headerlink" href="#equation-x">¶</a></span>\\[\\begin{split}x &amp;= 1\\\\'
        'y\\end{split}\\]</div><div class="math notranslate nohighlight">\\begin{align}z'
        '\\end{align}</div><span class="mathjax_ignore">\\(q\\)</span>'
    )
    assert formulas(html) == [
        ("a < b", False),
        ("\\begin{split}x &= 1\\\\y\\end{split}", True),
        ("\\begin{align}z\\end{align}", True),
    ]


def test_the_tex_check_reports_what_readers_see_as_red_boxes(tmp_path):
    pages = {
        "good.html": [
            ("x^2 + \\sqrt{y}", False),
            ("\\begin{aligned}a &= b\\\\c\\end{aligned}", True),
        ],
        "bad.html": [
            ("\\text{(`scale_by_factored_rms`)}", True),  # adafactor's, fixed: `_` outside math
            ("a & b", True),  # lars's, fixed: an `&` outside an alignment
            ("\\lVert x \\rVert + \\undefinedmacro", False),  # red text on the site (noundefined)
            ("\\frac{1}{2", False),
        ],
        "autoloaded.html": [("\\cancel{x} + \\boldsymbol{y} + \\color{red}{z}", False)],
    }
    result = render(pages, {}, tmp_path)
    assert result["version"] == MATHJAX and result["checked"] == 7
    assert [(e["page"], e["tex"]) for e in result["errors"]] == [
        ("bad.html", tex) for tex, _ in pages["bad.html"]
    ]
    messages = [e["message"] for e in result["errors"]]
    assert messages[:3] == [
        "'_' allowed only in math mode",
        "Misplaced &",
        "Undefined control sequence \\undefinedmacro",
    ]


@pytest.mark.slow
@pytest.mark.xdist_group("docs_site")
def test_every_formula_on_the_site_renders_without_a_tex_error(site, tmp_path):
    pages, urls, configs = {}, set(), set()
    for path in sorted(site.html.rglob("*.html")):
        html = path.read_text(encoding="utf-8")
        found = formulas(html)
        if not found:
            continue
        page = path.relative_to(site.html).as_posix()
        pages[page] = found
        url = re.search(r'<script[^>]*\ssrc="([^"]*mathjax[^"]*)"', html)
        assert url, f"{page} has {len(found)} formulas and loads no MathJax."
        urls.add(url[1])
        config = re.search(r"<script>\s*window\.MathJax\s*=\s*(\{.*?\})\s*</script>", html, re.S)
        configs.add(config[1] if config else "{}")
    count = sum(map(len, pages.values()))
    assert count > 0 and "api/optimizers_adam.html" in pages, (
        f"no formulas found where the API pages have them, in {site.html}:\n{site.log}"
    )
    # The site's renderer is the one this test runs: MathJax 4's bundle with TeX input.
    (url,) = urls
    major = MATHJAX.split(".")[0]
    assert f"/mathjax@{major}/" in url and "/tex-" in url, (
        f"the site loads {url}; the TeX test renders with MathJax {MATHJAX}: pin the release the "
        "site loads (MATHJAX in tests/test_docs.py)."
    )
    (config,) = configs

    start = time.perf_counter()
    result = render(pages, json.loads(config), tmp_path)
    seconds = time.perf_counter() - start
    assert result["version"] == MATHJAX and result["checked"] == count, result
    errors = "\n".join(
        f"  {e['page']}: {'$$' if e['display'] else '$'}{e['tex']}{'$$' if e['display'] else '$'}"
        f"\n      {e['message']}"
        for e in result["errors"]
    )
    assert not result["errors"], (
        f"{len(result['errors'])} of the {count} formulas on the site are TeX errors, which readers "
        f"see as red boxes (MathJax {MATHJAX}); fix them in the docstring or page:\n{errors}"
    )
    print(f"{count} formulas on {len(pages)} pages render in MathJax {MATHJAX} ({seconds:.1f} s)")


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
