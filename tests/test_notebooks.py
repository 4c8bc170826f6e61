"""The notebooks: each runs top to bottom, installs adamx as the README says, and is on the site.

Every notebook in ``notebooks/`` runs top to bottom without an error.

Each notebook is executed with nbclient in a fresh IPython kernel, a subprocess of the running
interpreter (``sys.executable``), so it sees the same installed adamx, jax, optax and flax as the
tests. The kernelspec is written by the test itself into a temporary directory: nothing needs to be
registered beforehand (a fresh CI machine has run ``pip install -e ".[test]"`` only), and a
``python3`` kernelspec elsewhere on the machine (pointing at another Python) is never picked up.

The kernel runs with jax's default (standard) dtype promotion: the root ``conftest.py`` sets strict
promotion for this pytest process only, and warnings raised inside the kernel are printed in the
notebook's outputs rather than turned into errors here. The notebooks' install cells are no-ops
because adamx is importable. Outputs are not written back: the committed notebooks keep theirs.

adamx is not on PyPI. Each notebook's install cell installs it from the repository named as the
project's homepage in ``pyproject.toml`` (``"adamx @ git+<homepage>"``), only when ``import adamx``
fails, and the README's Install section gives the same requirement: the tests below parse all three,
so none can drift. The docs' Tutorials gallery (``docs/tutorials/index.md``) must show every
notebook, with a thumbnail, so a new notebook cannot be left off the site.

The kernel's working directory is a temporary copy of ``notebooks/``, never ``notebooks/`` itself:
a notebook that saves a file (``kingma_ba.ipynb`` writes ``kingma_ba.png``) writes it into the copy,
and the test checks afterwards that nothing under ``notebooks/`` changed, so running the suite leaves
the checkout clean.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
GALLERY = ROOT / "docs" / "tutorials"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT_S = 120
KERNEL_NAME = "adamx-test-python"


def _kernel_manager_class(kernels_dir: Path) -> type:
    """An AsyncKernelManager that knows one kernel, ``KERNEL_NAME``: ipykernel on this interpreter.

    nbclient creates, starts and shuts down the manager itself (so the kernel and its sockets are
    cleaned up however the notebook ends); only the kernelspec lookup is redirected.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    spec_dir = kernels_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python {sys.version_info.major}.{sys.version_info.minor} (adamx tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")

    class ThisInterpreterKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return KernelSpecManager(kernel_dirs=[str(kernels_dir)])

    return ThisInterpreterKernelManager


def _snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_notebooks_are_found():
    names = {path.stem for path in PATHS}
    expected = {"quickstart", "compose_your_own", "optimizer_race", "flax_nnx", "kingma_ba"}
    assert expected | {"sharding"} <= names, names


@pytest.mark.slow
# Older jupyter_core 5.x releases warn, when jupyter_client imports their paths module, that
# "Jupyter is migrating its paths to use standard platformdirs" (a DeprecationWarning in this pytest
# process, unless JUPYTER_PLATFORM_DIRS is set). It concerns jupyter's own config directories, not
# this test, so it is ignored here only. jupyter_core 5.9.1 raises no warning at all: with nbclient
# owning the kernel manager (below), its sockets are closed too, so no ResourceWarning either.
@pytest.mark.filterwarnings("ignore:Jupyter is migrating its paths:DeprecationWarning")
@pytest.mark.parametrize("path", PATHS, ids=[path.stem for path in PATHS])
def test_notebook_runs(path: Path, tmp_path: Path):
    # Imported here, not at the top: collecting the suite must not start jupyter's machinery.
    import nbclient
    import nbformat

    before = _snapshot(NOTEBOOKS)
    # The kernel runs in a copy of the folder (the notebooks may read files next to them), so that
    # whatever a notebook writes lands under tmp_path.
    workdir = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, workdir, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=_kernel_manager_class(tmp_path / "kernels"),
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,  # the first failing cell raises CellExecutionError, naming the cell
        resources={"metadata": {"path": str(workdir)}},  # the kernel's working directory
    )
    client.execute()

    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: {[(e['ename'], e['evalue']) for e in errors]}"
    after = _snapshot(NOTEBOOKS)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, (
        f"Executing {path.name} changed {changed} in {NOTEBOOKS}: tests must write only under "
        "tmp_path. Write relative to the kernel's working directory (a temporary copy)."
    )


# -- Installing adamx: the notebooks' install cell and the README agree ---------------------------


def _pip_installs(command: str) -> list[list[str]]:
    """The arguments after ``pip install`` of each pip install in a shell line (comments dropped)."""
    words = shlex.split(command, comments=True)
    commands, current = [], []
    for word in [*words, "&&"]:
        if word in ("&&", ";", "||"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [c[2:] for c in commands if c[:2] == ["pip", "install"]]


def _git_requirements(arguments: list[str]) -> list[Requirement]:
    """The requirements of the form ``name @ git+url`` among pip's arguments."""
    found = []
    for argument in arguments:
        if "@" in argument and not argument.startswith("-"):
            requirement = Requirement(argument)
            if requirement.url and requirement.url.startswith("git+"):
                found.append(requirement)
    return found


def _homepage_requirement() -> Requirement:
    import tomllib  # Python 3.11+, as the test extra's tools need

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return Requirement(f"{project['name']} @ git+{project['urls']['Homepage']}")


def _readme_installs() -> list[list[str]]:
    """Every ``pip install`` in the README's bash blocks, as its arguments."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```bash\n(.*?)^```", readme, flags=re.MULTILINE | re.DOTALL)
    return [args for block in blocks for line in block.splitlines() for args in _pip_installs(line)]


def _install_cell(path: Path) -> tuple[str, ast.Try]:
    """A notebook's install cell as Python (IPython's magics made calls) and its ``try`` block."""
    from IPython.core.inputtransformer2 import TransformerManager

    notebook = json.loads(path.read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    (cell,) = [c for c in cells if "%pip install" in c]  # exactly one install cell
    code = TransformerManager().transform_cell(cell)
    (block,) = [node for node in ast.parse(code).body if isinstance(node, ast.Try)]
    return code, block


def _pip_magics(nodes: list[ast.stmt]) -> list[str]:
    """The lines of the ``%pip`` magics among ``nodes``, in order."""
    return [
        node.args[1].value
        for statement in nodes
        for node in ast.walk(statement)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "run_line_magic"
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value == "pip"
    ]


def test_readme_installs_adamx_from_its_homepage_or_from_a_clone():
    installs = _readme_installs()
    git = [r for args in installs for r in _git_requirements(args)]
    assert [str(r) for r in git] == [str(_homepage_requirement())], (
        'README.md\'s Install section must give exactly one `pip install "adamx @ git+<url>"`, '
        f"the url being pyproject.toml's Homepage; it gives {[str(r) for r in git]}."
    )
    paths = [a for args in installs for a in args if a.startswith("/") and "@" not in a]
    assert paths, "README.md must also show the install from a clone, by its path."


@pytest.mark.parametrize("path", PATHS, ids=[path.stem for path in PATHS])
def test_install_cell_installs_what_the_readme_says(path: Path):
    code, block = _install_cell(path)
    (readme_requirement,) = [r for args in _readme_installs() for r in _git_requirements(args)]

    # The install runs only when the import fails: inside `except ImportError`, never in `try`.
    imports = [n for n in block.body if isinstance(n, ast.Import)]
    assert [alias.name for n in imports for alias in n.names] == ["adamx"], ast.dump(block)
    assert not _pip_magics(block.body + block.orelse + block.finalbody)
    (handler,) = block.handlers
    assert isinstance(handler.type, ast.Name) and handler.type.id == "ImportError"
    (line,) = _pip_magics(handler.body)
    assert _pip_magics(ast.parse(code).body) == [line], "the cell runs pip outside `except`"

    (arguments,) = _pip_installs(f"pip {line}")
    (requirement,) = _git_requirements(arguments)
    assert str(requirement) == str(readme_requirement), (
        f"{path.name} installs {requirement}; README.md says {readme_requirement}."
    )
    # Colab's jax and jaxlib are built for its accelerator: pip must not touch them.
    assert "--no-deps" in arguments and "chex" in arguments, arguments


@pytest.mark.parametrize("path", PATHS, ids=[path.stem for path in PATHS])
def test_install_cell_runs_pip_only_where_adamx_is_missing(path: Path, monkeypatch):
    code, _ = _install_cell(path)
    installed = sys.modules.get("adamx") or importlib.import_module("adamx")
    lines: list[str] = []

    class FakeIPython:
        def run_line_magic(self, name: str, line: str) -> None:
            lines.append(f"%{name} {line}")
            sys.modules["adamx"] = installed  # as if pip had installed it

    namespace = {"get_ipython": FakeIPython}
    exec(compile(code, path.name, "exec"), dict(namespace))
    assert lines == [], f"{path.name} ran {lines} although adamx imports."

    monkeypatch.setitem(sys.modules, "adamx", None)  # `import adamx` now raises ImportError
    exec(compile(code, path.name, "exec"), dict(namespace))
    assert len(lines) == 1 and lines[0].startswith("%pip install"), lines


# -- The Tutorials gallery on the docs site -------------------------------------------------------


def _load_gallery():
    spec = importlib.util.spec_from_file_location("adamx_docs_gallery", GALLERY / "gallery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gallery_shows_every_notebook():
    page = (GALLERY / "index.md").read_text(encoding="utf-8")
    names = [path.stem for path in PATHS]
    cards = re.findall(r"^````\{grid-item-card\}.*?^````$", page, flags=re.MULTILINE | re.DOTALL)
    linked = [re.search(r"^:link: (\S+)$", card, flags=re.MULTILINE)[1] for card in cards]
    assert sorted(linked) == names, (
        f"docs/tutorials/index.md has cards for {sorted(linked)}; notebooks/ holds {names}. Add "
        "a card (and a toctree line) for each notebook."
    )
    for card, name in zip(cards, linked, strict=True):
        assert f":img-top: _thumbnails/{name}.png" in card, f"the card for {name} has no thumbnail"
    (toctree,) = re.findall(r"^```\{toctree\}\n(.*?)^```", page, flags=re.MULTILINE | re.DOTALL)
    entries = [line for line in toctree.splitlines() if line and not line.startswith(":")]
    assert sorted(entries) == names, f"the gallery's toctree lists {entries}, not {names}"


def test_the_gallery_stages_each_notebook_with_its_outputs_and_a_thumbnail(tmp_path: Path):
    gallery = _load_gallery()
    (tmp_path / "deleted_notebook.ipynb").write_text("{}", encoding="utf-8")

    assert gallery.stage(NOTEBOOKS, tmp_path) == [path.stem for path in PATHS]

    assert not (tmp_path / "deleted_notebook.ipynb").exists(), "a stale copy was left on the site"
    docs = GALLERY.parent
    for path in PATHS:
        original = json.loads(path.read_text(encoding="utf-8"))
        copy = json.loads((tmp_path / path.name).read_text(encoding="utf-8"))
        assert [c.get("outputs") for c in copy["cells"]] == [
            c.get("outputs") for c in original["cells"]
        ], f"{path.name}'s stored outputs changed in the copy"
        thumbnail = (tmp_path / "_thumbnails" / f"{path.stem}.png").read_bytes()
        assert thumbnail.startswith(b"\x89PNG\r\n\x1a\n"), f"{path.stem}'s thumbnail is no PNG"
        # Links into the docs resolve from docs/tutorials/, where the copies are built.
        for cell in copy["cells"]:
            if cell["cell_type"] == "markdown":
                for target in re.findall(r"\]\((\.\./[^)#\s]+)", "".join(cell["source"])):
                    assert (GALLERY / target).resolve().is_file(), (path.name, target)
                    assert (GALLERY / target).resolve().is_relative_to(docs), (path.name, target)
    assert (tmp_path / "_thumbnails" / "sharding.png").read_bytes() == (
        GALLERY / "thumbnails" / "sharding.png"
    ).read_bytes(), "a committed thumbnail must win over the notebook's first figure"


def test_the_gallery_refuses_a_notebook_without_a_picture(tmp_path: Path):
    gallery = _load_gallery()
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    notebook = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (notebooks / "no_figure.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    with pytest.raises(ValueError, match="no_figure.ipynb has no stored figure"):
        gallery.stage(notebooks, tmp_path / "site", tmp_path / "chosen")
