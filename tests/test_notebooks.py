"""Every notebook in ``notebooks/`` runs top to bottom without an error.

Each notebook is executed with nbclient in a fresh IPython kernel, a subprocess of the running
interpreter (``sys.executable``), so it sees the same installed adamx, jax, optax and flax as the
tests. The kernelspec is written by the test itself into a temporary directory: nothing needs to be
registered beforehand (a fresh CI machine has run ``pip install -e ".[test]"`` only), and a
``python3`` kernelspec elsewhere on the machine (pointing at another Python) is never picked up.

The kernel runs with jax's default (standard) dtype promotion: the root ``conftest.py`` sets strict
promotion for this pytest process only, and warnings raised inside the kernel are printed in the
notebook's outputs rather than turned into errors here. The notebooks' install cells are no-ops
because adamx is importable. Outputs are not written back: the committed notebooks keep theirs.

The kernel's working directory is a temporary copy of ``notebooks/``, never ``notebooks/`` itself:
a notebook that saves a file (``kingma_ba.ipynb`` writes ``kingma_ba.png``) writes it into the copy,
and the test checks afterwards that nothing under ``notebooks/`` changed, so running the suite leaves
the checkout clean.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
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
