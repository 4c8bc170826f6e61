"""The guide pages: their Python examples run, the numbers "Choosing an optimizer" quotes are the
ones its sources give, and the reproduction's heat-map labels are readable on every cell."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import relaxed

DOCS = Path(__file__).resolve().parent.parent / "docs"

# A fenced ```python block of a MyST page (not ```{code-cell}, not ```bash).
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def python_blocks(page: str) -> list[str]:
    return _PYTHON_BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", ["getting_started.md", "choosing.md"])
def test_the_pages_python_examples_run_top_to_bottom(page, capsys):
    blocks = python_blocks(page)
    assert len(blocks) >= 2, f"docs/{page} has no Python examples to run"
    namespace: dict = {"__name__": f"docs_{page.removesuffix('.md')}"}
    for number, block in enumerate(blocks, 1):
        # The examples call optax and flax, which are not strict-promotion clean.
        with relaxed():
            try:
                exec(compile(block, f"docs/{page}, Python block {number}", "exec"), namespace)
            except Exception as error:  # say which block, then fail with the original error
                raise AssertionError(
                    f"docs/{page}, Python block {number} failed:\n{block}"
                ) from error
    if page == "getting_started.md":
        # The training loop learns, and the schedule prints what the page says it prints.
        printed = capsys.readouterr().out
        loss = float(re.search(r"loss after 400 steps: (\S+)", printed)[1])
        assert loss < 0.05, printed
        assert "[0.0, 0.005, 0.01, 0.00505, 0.0001]" in printed
        page_text = (DOCS / page).read_text(encoding="utf-8")
        assert "This prints `[0.0, 0.005, 0.01, 0.00505, 0.0001]`" in page_text
    else:
        # The state-size table is what the page's own code prints, row for row.
        printed = dict(
            line.rsplit(maxsplit=1) for line in capsys.readouterr().out.splitlines() if line
        )
        printed = {name.strip(): value for name, value in printed.items()}
        page_text = (DOCS / page).read_text(encoding="utf-8")
        table = page_text.split("| optimizer | state bytes/param |\n|---|---|\n", 1)[1]
        rows = {}
        for line in table.split("\n\n", 1)[0].splitlines():
            name, value = (cell.strip() for cell in line.strip("|").split("|"))
            rows[name] = value
        assert rows == printed, (rows, printed)
        assert float(rows["adamw"]) == 8.0 and float(rows["adamw, low_bit_moments(8)"]) < 2.1


def test_getting_started_installs_as_the_readme_does():
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    page = (DOCS / "getting_started.md").read_text(encoding="utf-8")
    line = 'pip install "adamx @ git+https://github.com/adamx-dev/adamx"'
    assert line in readme and line in page
    assert "pip install adamx\n" not in page


# ---- The reproduction's Figure 4: every label readable ------------------------------------------


def _contrast(a: float, b: float) -> float:
    """WCAG contrast ratio of two relative luminances."""
    hi, lo = max(a, b), min(a, b)
    return (hi + 0.05) / (lo + 0.05)


def test_heat_map_labels_contrast_with_every_colour_of_the_map():
    from matplotlib import colormaps

    from adamx.experiments import kingma_ba

    black, white = 0.0, 1.0
    assert kingma_ba._label_color(colormaps["viridis_r"](1.0)) == "w"  # darkest purple
    assert kingma_ba._label_color(colormaps["viridis_r"](0.0)) == "k"  # lightest yellow
    assert kingma_ba._label_color("w") == "k"  # a diverged cell is drawn white
    for name in ("viridis_r", "viridis", "magma", "coolwarm"):
        for rgba in colormaps[name](np.linspace(0, 1, 256)):
            background = kingma_ba._relative_luminance(rgba)
            label = black if kingma_ba._label_color(rgba) == "k" else white
            assert _contrast(background, label) >= 4.5, (name, rgba)


def test_the_ablation_plot_draws_dark_cells_with_light_labels(tmp_path, monkeypatch):
    """One cell far above the others is the map's darkest colour; its label must be white."""
    from adamx.experiments import kingma_ba

    fc = np.full((2, 1, 2, 2), 0.5)
    fc[1, 0, 1, 1] = 1000.0
    fc[1, 0, 0, 0] = np.inf
    ablation = kingma_ba.Ablation("mlp", 1, (0.9,), (0.99, 0.9999), (-3, -1), fc, [0], 0.0)
    drawn = []
    original = kingma_ba._label_color
    monkeypatch.setattr(
        kingma_ba, "_label_color", lambda bg: drawn.append(original(bg)) or drawn[-1]
    )
    path = kingma_ba.plot_ablation(ablation, tmp_path / "ablation.png")
    assert path.stat().st_size > 1000
    # Cells in drawing order: variant, b1, then (b2, lr) row by row.
    assert drawn == ["k"] * 4 + ["k", "k", "k", "w"]
