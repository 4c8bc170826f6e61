"""What is generated from the modules' ``__all__``: each floor's ``__init__.py`` and docs/api.md.

A module declares its public names once, in its ``__all__``; its floor's ``__init__`` re-exports
them (written out, so type checkers and editors see every name) and the API reference lists them.
Tests fail when either is stale (tests/test_architecture.py, tests/test_docs.py); to regenerate::

    python -m tests.generate
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "adamx"
API_PAGE = ROOT / "docs" / "api.md"
FLOORS = (
    "core",
    "storage",
    "blocks",
    "kernels",
    "toolkit",
    "optimizers",
    "distributed",
    "training",
)

# The API page's order (the floors a reader looks for first) and each floor's heading.
API_FLOORS = {
    "optimizers": "Optimizers",
    "blocks": "Building blocks",
    "toolkit": "Toolkit: schedules, clipping, groups, accumulation, hyperparameters",
    "storage": "Moment storage",
    "distributed": "Sharding and flat parameters",
    "training": "Applying updates",
    "core": "The protocol",
}

# Autodoc options of the classes whose methods are part of the API.
OPTIONS = {
    "FlatParams": ["   :members: unflatten"],
    "FlatLayout": ["   :members: members"],
    "MomentStorage": ["   :members: init, read, write", "   :undoc-members:"],
}


def modules(floor: str) -> list[Path]:
    return sorted(p for p in PACKAGE.joinpath(floor).glob("_*.py") if p.name != "__init__.py")


def declared(path: Path) -> list[str]:
    """A module's ``__all__``, read from its source (a literal list of names)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return []


def floor_init(floor: str) -> str:
    """The text of ``adamx/<floor>/__init__.py``: its docstring, then each module's public names
    re-exported (``from ._adam import adam as adam``), then ``__all__``, their union."""
    init = PACKAGE / floor / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text()), clean=False)
    lines = [f'"""{docstring}"""', ""]
    names: list[str] = []
    for module in modules(floor):
        lines += [f"from .{module.stem} import {name} as {name}" for name in declared(module)]
        names += declared(module)
    if names:
        lines += ["", "__all__ = [", *(f'    "{name}",' for name in sorted(names)), "]"]
    else:
        lines += ["__all__: list[str] = []"]
    return "\n".join(lines) + "\n"


def _heading(module: Path) -> str:
    """A module's docstring up to its first colon or full stop: ``Adafactor``, ``Tree helpers``."""
    first = (ast.get_docstring(ast.parse(module.read_text())) or module.stem).split("\n")[0]
    for stop in (":", ". "):
        first = first.split(stop)[0]
    return first.rstrip(".")


def api_page() -> str:
    """docs/api.md: every public name, by floor and then by module, with its autodoc directive."""
    import adamx

    lines = [
        "# API reference",
        "",
        "Every name below is importable from the top-level `adamx` package and from its floor",
        "(`adamx.optimizers.adam` is `adamx.adam`; the floors are drawn in {doc}`design`, section",
        "10). This page is generated from the modules' `__all__` by `python -m tests.generate`.",
    ]
    for floor, title in API_FLOORS.items():
        lines += ["", f"## {title}", ""]
        for module in modules(floor):
            names = declared(module)
            if not names:
                continue
            lines += [f"### {_heading(module)}", ""]
            for name in names:
                kind = "autoclass" if inspect.isclass(getattr(adamx, name)) else "autofunction"
                target = f"adamx.{name}()" if name == "MomentStorage" else f"adamx.{name}"
                lines += [
                    "```{eval-rst}",
                    f".. {kind}:: {target}",
                    *OPTIONS.get(name, []),
                    "```",
                    "",
                ]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    for floor in FLOORS:
        (PACKAGE / floor / "__init__.py").write_text(floor_init(floor))
    API_PAGE.write_text(api_page())


if __name__ == "__main__":
    main()
