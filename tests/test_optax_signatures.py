"""Drop-in for optax 0.2.8, checked against optax itself and the migration page's one table.

Every function of optax's main namespace and of ``optax.contrib`` that has an adamx namesake:

* takes optax's positional order as far as both are positional (adamx makes the rest keyword-only,
  so an optax positional call never binds a value to another name);
* takes each of optax's keywords, or the table in docs/migration.md ("Every deliberate difference")
  lists that keyword in a row for that function;
* has optax's defaults, or a row of the table runs that function's default call against optax's.

And every row of the table holds: an adamx call gives optax's numbers (5 float64 steps, relative
1e-10 unless the row names another tolerance); *refused* keywords raise a `TypeError`; *differs*
rows do differ. Names in the table "Same name, another function" are exempt from the signature
rules, each with its reason on the page.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

import adamx
from tests.helpers import relaxed, x64

PAGE = (Path(__file__).resolve().parent.parent / "docs" / "migration.md").read_text()
P = inspect.Parameter
POSITIONAL = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)


def _table(heading: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first table after ``heading``."""
    section = PAGE[PAGE.index(heading) :]
    lines = section[section.index("\n|") + 1 :].splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        if re.fullmatch(r"\|[-| ]+\|", line.strip()):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] in ("optax 0.2.8", "name"):
            continue
        rows.append(cells)
    return rows


def _code(cell: str) -> str | None:
    match = re.fullmatch(r"``(.+)``", cell)
    return match.group(1) if match else None


DIFFERENCES = _table("### Every deliberate difference")
OTHER_FUNCTIONS = {_code(row[0]) for row in _table("Same name, another function")}


def _optax_name(call: str) -> str:
    return re.match(r"optax\.(?:contrib\.)?(\w+)\(", call).group(1)


def _shared() -> list[tuple[str, object, object]]:
    names = []
    for name in sorted(adamx.__all__):
        ours = getattr(adamx, name)
        if not inspect.isfunction(ours):
            continue
        for module in (optax, optax.contrib):
            theirs = getattr(module, name, None)
            if theirs is not None and callable(theirs) and not inspect.isclass(theirs):
                names.append((name, ours, theirs))
                break
    return names


SHARED = _shared()


def _rows_for(name: str) -> list[list[str]]:
    return [row for row in DIFFERENCES if _optax_name(_code(row[0])) == name]


def test_the_table_parses_and_names_only_shared_functions():
    assert len(DIFFERENCES) >= 20 and len(OTHER_FUNCTIONS) >= 5
    shared = {name for name, _, _ in SHARED}
    assert {_optax_name(_code(row[0])) for row in DIFFERENCES} <= shared | {"adadelta"}
    assert OTHER_FUNCTIONS <= shared


@pytest.mark.parametrize("name, ours, theirs", SHARED, ids=[n for n, _, _ in SHARED])
def test_signature_takes_optax_call(name, ours, theirs):
    if name in OTHER_FUNCTIONS:
        return
    mine, optax_params = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
    my_positional = [p.name for p in mine.values() if p.kind in POSITIONAL]
    their_positional = [p.name for p in optax_params.values() if p.kind in POSITIONAL]
    for i, (a, b) in enumerate(zip(my_positional, their_positional, strict=False)):
        assert a == b, (
            f"adamx.{name}'s positional argument {i} is `{a}` where optax's is `{b}`: an optax "
            "positional call would bind a value to another name; make it keyword-only."
        )
    listed = " ".join(_code(row[0]) for row in _rows_for(name))
    for p in optax_params.values():
        if p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            continue
        if p.name not in mine:
            assert f"{p.name}=" in listed, (
                f"adamx.{name} does not take optax's keyword `{p.name}` and docs/migration.md "
                "lists no row for it."
            )
            continue
        default = mine[p.name].default
        if p.default is not P.empty and not _same(default, p.default):
            assert any(_code(row[1]) or row[1] == "differs" for row in _rows_for(name)), (
                f"adamx.{name}'s default `{p.name}={default!r}` differs from optax's "
                f"{p.default!r} and no row of docs/migration.md runs optax's default call."
            )


def _same(a, b) -> bool:
    try:
        return bool(a == b) or a is b
    except Exception:  # noqa: BLE001 - arrays and the like: compare as different
        return False


def _run(tx, steps: int = 5):
    params = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((6, 4)))}
    rng = np.random.default_rng(1)
    state = tx.init(params)
    for _ in range(steps):
        grads = {"w": jnp.asarray(rng.standard_normal((6, 4)))}
        updates, state = tx.update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return np.asarray(params["w"])


def _eval(code: str):
    return eval(code, {"adamx": adamx, "optax": optax, "jnp": jnp})  # noqa: S307 - the page's own code


@pytest.mark.parametrize("row", DIFFERENCES, ids=[_code(row[0]) for row in DIFFERENCES])
def test_each_difference_is_as_the_table_says(row):
    optax_call, adamx_cell, why = _code(row[0]), row[1], row[2]
    adamx_equivalent = re.sub(r"^optax\.(contrib\.)?", "adamx.", optax_call)
    with x64():
        if adamx_cell == "refused":
            with pytest.raises(TypeError):
                _eval(adamx_equivalent)
            return
        if "tests/test_sophia.py" in why:  # optax estimates the Hessian itself
            source = (Path(__file__).parent / "test_sophia.py").read_text()
            assert "optax.contrib.sophia" in source
            return
        with relaxed():  # optax's code relies on standard dtype promotion
            theirs = _run(_eval(optax_call))
        if adamx_cell == "differs":
            ours = _run(_eval(adamx_equivalent))
            print(
                f"{optax_call}: max relative difference {np.max(np.abs(ours - theirs) / (np.abs(theirs) + 1e-6)):.2e}"
            )
            assert np.max(np.abs(ours - theirs) / (np.abs(theirs) + 1e-6)) > 1e-6
            return
        rtol = float(re.search(r"\(rtol ([0-9.e-]+)\)", why).group(1)) if "(rtol" in why else 1e-10
        ours = _run(_eval(_code(adamx_cell)))
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=1e-12)
