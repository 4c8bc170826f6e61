"""The package's layers (docs/design.md, "Layers"), enforced on the source, function-level imports included.

Floors, bottom to top: ``core``, ``storage``, ``blocks``, ``kernels``, ``toolkit``, ``optimizers``,
``distributed``, ``step``; above them the package's own ``__init__``, ``benchmarks`` and
``experiments``. A module imports from its own floor and the floors below, never above; the module
graph has no cycle; an optimizer family uses another family only through public names (composing a
whole optimizer is fine, borrowing its internals is not).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import adamx
from tests import generate

PACKAGE = Path(adamx.__file__).parent
FLOORS = generate.FLOORS
TOP = len(FLOORS)  # adamx/__init__.py, benchmarks, experiments


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in FLOORS:
        return FLOORS.index(parts[1])
    return TOP


def _imports(module: str, path: Path) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every import of an adamx module in ``path``,
    at any depth (a function-level import counts as much as a top-level one)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "adamx":
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:
                    found.append((submodule, "", node.lineno))
                else:
                    found.append((source, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [
                (a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "adamx"
            ]
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _edges(module: str) -> set[str]:
    """The modules ``module`` depends on, parent packages of an imported module excluded (importing
    ``adamx.core._trees`` runs ``adamx.core``'s ``__init__``, which belongs to the same floor)."""
    return {target for target, _, _ in GRAPH[module] if target in MODULES and target != module}


def test_the_floors_are_the_package_layout():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(top) <= 14, top
    for floor in FLOORS:
        assert (PACKAGE / floor / "__init__.py").is_file(), floor
    loose = [p.name for p in PACKAGE.glob("_*.py") if p.name != "__init__.py"]
    assert loose == [], (
        f"modules outside the floors: {loose}; move each into the floor it belongs to"
    )


def test_no_module_imports_from_a_floor_above_its_own():
    upward = [
        f"{m} (floor {FLOORS[_floor(m)] if _floor(m) < TOP else 'top'}) imports {t} "
        f"(floor {FLOORS[_floor(t)] if _floor(t) < TOP else 'top'}) on line {line}"
        for m in MODULES
        for t, _, line in GRAPH[m]
        if t in MODULES and _floor(t) > _floor(m)
    ]
    assert upward == [], "\n".join(upward)


def test_no_optimizer_block_or_tool_knows_the_kernels():
    """An optimizer is described by its chain alone: the fused step is derived from it
    (adamx/kernels/_derived.py), so nothing above the kernels but the step's dispatch
    (`training`) and the benchmarks imports them."""
    knowing = [
        f"{m} imports {t} on line {line}"
        for m in MODULES
        for t, _, line in GRAPH[m]
        if t.startswith("adamx.kernels")
        and not m.startswith(("adamx.kernels", "adamx.training", "adamx.benchmarks"))
        and not (m.startswith("adamx.distributed._flat") and t == "adamx.kernels._native")
    ]
    assert knowing == [], "\n".join(knowing)


def test_the_module_graph_has_no_cycle():
    done: set[str] = set()
    stack: list[str] = []

    def visit(module: str) -> None:
        if module in done:
            return
        if module in stack:
            cycle = stack[stack.index(module) :] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        stack.append(module)
        for target in sorted(_edges(module)):
            if not (module.startswith(target + ".") or target == "adamx"):  # a package's own parent
                visit(target)
        stack.pop()
        done.add(module)

    for module in sorted(MODULES):
        visit(module)


def _family(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) == 3 and parts[1] == "optimizers" else None


def test_an_optimizer_family_borrows_no_other_familys_private_names():
    public = set(adamx.__all__)
    borrowed = [
        f"{m} imports {name!r} from {t} on line {line}"
        for m in MODULES
        if _family(m)
        for t, name, line in GRAPH[m]
        if _family(t) and _family(t) != _family(m) and (name == "" or name not in public)
    ]
    assert borrowed == [], (
        "an optimizer family may compose another through its public names only; move a shared "
        "block into adamx.blocks (or a helper into adamx.core):\n" + "\n".join(borrowed)
    )


def test_the_layers_are_not_empty_claims():
    """The checks above can fail: a made-up upward edge is caught by the same rule."""
    assert _floor("adamx.core._trees") < _floor("adamx.distributed._flat")
    assert _floor("adamx.storage._quantize") < _floor("adamx.optimizers._adafactor")
    assert _floor("adamx") == TOP and _floor("adamx.benchmarks") == TOP


def longest_chain() -> list[str]:
    """The longest import chain in the package (a statistic docs/design.md quotes)."""
    memo: dict[str, list[str]] = {}

    def chain(module: str) -> list[str]:
        if module not in memo:
            below = [
                chain(t) for t in _edges(module) if not module.startswith(t + ".") and t != "adamx"
            ]
            memo[module] = [module] + max(below, key=len, default=[])
        return memo[module]

    return max((chain(m) for m in MODULES), key=len)


# ---- The public API ------------------------------------------------------------------------------

RECORDED = (
    Path(__file__).parent / "data" / "public_names.txt"
)  # written before the layers (issue 22)


def _resolve(dotted: str) -> object:
    import importlib

    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module, _, attribute = dotted.rpartition(".")
        return getattr(importlib.import_module(module), attribute)


def test_every_public_name_from_before_the_layers_is_importable_at_the_same_path():
    names = RECORDED.read_text().split()
    assert len(names) > 200
    missing = []
    for dotted in names:
        try:
            _resolve(dotted)
        except (ImportError, AttributeError):
            missing.append(dotted)
    assert missing == [], f"public names that no longer import: {missing}"


@pytest.mark.parametrize("floor", [f for f in FLOORS if f != "kernels"])
def test_each_floors_all_is_exactly_the_public_names_it_binds(floor):
    import importlib
    import types

    module = importlib.import_module(f"adamx.{floor}")
    bound = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(module.__all__) == sorted(bound)
    assert len(set(module.__all__)) == len(module.__all__)


def test_the_top_level_all_is_the_union_of_the_floors_and_everything_in_it_exists():
    import importlib

    union = [
        n for f in FLOORS if f != "kernels" for n in importlib.import_module(f"adamx.{f}").__all__
    ]
    assert sorted(adamx.__all__) == sorted(union)
    assert len(set(union)) == len(union), "a name exported by two floors"
    for name in adamx.__all__:
        floor = next(
            f
            for f in FLOORS
            if f != "kernels" and name in importlib.import_module(f"adamx.{f}").__all__
        )
        assert getattr(adamx, name) is getattr(importlib.import_module(f"adamx.{floor}"), name)


def test_the_diagram_in_the_design_notes_draws_these_floors_in_this_order():
    design = (PACKAGE.parent / "docs" / "design.md").read_text()
    diagram = design.split("## 10. Layers", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    drawn = [line.split()[0] for line in diagram.splitlines() if line[:1] == " " and line.split()]
    drawn = [word for word in drawn if word in FLOORS]
    assert drawn == list(reversed(FLOORS)), drawn


# ---- Each floor's __init__ is generated from its modules' __all__ ---------------------------------


def test_each_floors_init_is_generated_from_its_modules_all():
    stale = [
        f for f in FLOORS if (PACKAGE / f / "__init__.py").read_text() != generate.floor_init(f)
    ]
    assert stale == [], (
        f"adamx/{stale[0]}/__init__.py is not what its modules' `__all__` give; regenerate the "
        "floors' __init__ files and docs/api/ with `python -m tests.generate`."
    )


def test_every_module_in_a_floor_declares_its_public_names():
    undeclared = [
        str(m.relative_to(PACKAGE))
        for f in FLOORS
        for m in generate.modules(f)
        if "__all__" not in m.read_text()
    ]
    assert undeclared == [], (
        f"modules without `__all__` (use `__all__ = []` for none): {undeclared}"
    )
