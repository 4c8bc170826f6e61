"""Bring the notebooks into the docs for the Tutorials gallery (``index.md`` next to this file).

Sphinx reads only files under ``docs/``, and the notebooks live in ``notebooks/``, where Colab opens
them. When the build starts, ``docs/conf.py`` calls `stage`, which writes next to this file:

- ``<name>.ipynb``, a copy of ``notebooks/<name>.ipynb``, with its stored outputs (the build does not
  execute notebooks) and its links into ``docs/`` rewritten to resolve from ``docs/tutorials/``;
- ``_thumbnails/<name>.png``, the card's picture: ``thumbnails/<name>.png`` where one is committed
  (a notebook without a figure, or a figure other than the first), else the notebook's first stored
  figure, so a thumbnail never goes stale when the notebook is re-run.

Both are build products that git ignores (``.gitignore``). Copies rather than committed symlinks: a
symlink checks out as a one-line text file where git does not make symlinks (Windows, by default),
and a symlink cannot rewrite a notebook's relative links.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOKS = HERE.parent.parent / "notebooks"
THUMBNAILS = "_thumbnails"  # the generated pictures, under the staging folder
CHOSEN_THUMBNAILS = HERE / "thumbnails"  # committed pictures, which win over the first figure

# A Markdown link from notebooks/ into docs/: `](../docs/sharding.md)` is `](../sharding.md)` from
# docs/tutorials/.
_DOCS_LINK = re.compile(r"\]\(\.\./docs/")


def first_figure(notebook: dict) -> bytes | None:
    """The first PNG among a notebook's stored outputs, or None if it has none."""
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png is not None:
                return base64.b64decode("".join(png) if isinstance(png, list) else png)
    return None


def _relink(notebook: dict) -> dict:
    """``notebook`` with its Markdown cells' links into ``docs/`` made relative to the gallery."""
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"])
            cell["source"] = _DOCS_LINK.sub("](../", source)
    return notebook


def _write_if_changed(path: Path, data: bytes, scratch: Path) -> None:
    """Write ``data`` to ``path`` unless it already holds it, atomically.

    An unchanged file keeps its mtime, so an incremental build does not re-read it. A changed one
    is written under ``scratch`` (ignored by git, and holding no source file) and moved into place,
    so a second build running at the same time never reads half a notebook.
    """
    if path.is_file() and path.read_bytes() == data:
        return
    with tempfile.NamedTemporaryFile(dir=scratch, suffix=".tmp", delete=False) as file:
        file.write(data)
    os.replace(file.name, path)


def stage(
    notebooks: Path = NOTEBOOKS, dest: Path = HERE, chosen_thumbnails: Path = CHOSEN_THUMBNAILS
) -> list[str]:
    """Copy every notebook in ``notebooks`` into ``dest`` with its thumbnail; return their names.

    Copies and thumbnails in ``dest`` whose notebook is gone are removed, so a deleted notebook
    leaves the site too.
    """
    paths = sorted(notebooks.glob("*.ipynb"))
    names = [path.stem for path in paths]
    thumbnails = dest / THUMBNAILS
    thumbnails.mkdir(parents=True, exist_ok=True)
    for stale in [*dest.glob("*.ipynb"), *thumbnails.glob("*.png")]:
        if stale.stem not in names:
            stale.unlink()
    for path in paths:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        chosen = chosen_thumbnails / f"{path.stem}.png"
        picture = chosen.read_bytes() if chosen.is_file() else first_figure(notebook)
        if picture is None:
            raise ValueError(
                f"{path.name} has no stored figure to show in the Tutorials gallery. Run it so that "
                f"its outputs hold a plot, or commit a picture as {chosen}."
            )
        _write_if_changed(thumbnails / f"{path.stem}.png", picture, thumbnails)
        text = json.dumps(_relink(notebook), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        _write_if_changed(dest / path.name, text.encode("utf-8"), thumbnails)
    return names
