"""What is generated from the modules' ``__all__``: each floor's ``__init__.py`` and docs/api/.

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
API_DIR = ROOT / "docs" / "api"
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

# The API reference's pages, in the order of its index (the floors a reader looks for first):
# each page's file name, title, one sentence on what it holds, and its modules (a floor stands for
# all of its modules that no other page names). Every module with public names is on one page.
API_PAGES = {
    "optimizers_adam": (
        "Optimizers: Adam and its moment variants",
        "Adam, AdamW, NAdam, AMSGrad, AdaMax, RAdam, AdaBelief and Yogi: the optimizers, their "
        "`scale_by_*` directions and the blocks only they use.",
        [
            "optimizers/_adam",
            "optimizers/_nadam",
            "optimizers/_amsgrad",
            "optimizers/_adamax",
            "optimizers/_radam",
            "optimizers/_adabelief",
            "optimizers/_yogi",
        ],
    ),
    "optimizers_sgd_rmsprop": (
        "Optimizers: SGD, RMSprop, AdaGrad, AdaDelta",
        "The classics before Adam, each a chain of the same blocks.",
        ["optimizers/_sgd", "optimizers/_rmsprop", "optimizers/_adagrad"],
    ),
    "optimizers_recent": (
        "Optimizers: Adan, ADOPT, AdEMAMix, Lion, LaProp, StableAdamW, Cautious",
        "Recent variants of Adam's update and sign-based methods.",
        [
            "optimizers/_adan",
            "optimizers/_adopt",
            "optimizers/_ademamix",
            "optimizers/_lion",
            "optimizers/_laprop",
            "optimizers/_stable_adamw",
            "optimizers/_cautious",
        ],
    ),
    "optimizers_large_scale": (
        "Optimizers: Adafactor, LAMB, LARS, Adam-mini, MARS",
        "Optimizers for large models and batches: factored and block-wise second moments, "
        "layer-wise trust ratios, variance reduction.",
        ["optimizers/_adafactor", "optimizers/_lamb", "optimizers/_adam_mini", "optimizers/_mars"],
    ),
    "optimizers_preconditioned": (
        "Optimizers: Schedule-Free, Prodigy, SOAP, Sophia, Muon",
        "Optimizers without a learning-rate schedule, or with a preconditioner beyond a diagonal.",
        [
            "optimizers/_schedule_free",
            "optimizers/_prodigy",
            "optimizers/_soap",
            "optimizers/_sophia",
            "optimizers/_muon",
        ],
    ),
    "blocks": (
        "Building blocks",
        "The pieces the optimizers are chained from: moving averages, bias corrections, the "
        "second moment, scaling, weight decay, rectification, orthogonalisation.",
        ["blocks"],
    ),
    "schedules": (
        "Schedules",
        "Learning-rate schedules: functions of the step count, passed wherever a "
        "{py:type}`ScalarOrSchedule` is taken.",
        ["toolkit/_schedules"],
    ),
    "toolkit": (
        "Toolkit: clipping, groups, wrappers, hyperparameters, diagnostics",
        "Gradient preprocessing, parameter groups, wrappers around an optimizer (accumulation, "
        "lookahead, averaging), hyperparameters in the state, Kahan summation, optax states and "
        "diagnostics recorded inside the step (`monitor`).",
        ["toolkit"],
    ),
    "storage": (
        "Moment storage",
        "How moment buffers are stored: a dtype, or low-bit (block-wise, rank-1, stochastic "
        "bfloat16).",
        ["storage"],
    ),
    "distributed": (
        "Sharding and flat parameters",
        "Optimizer state sharded over devices, and parameters flattened into one buffer.",
        ["distributed"],
    ),
    "training": (
        "Applying updates",
        "Applying updates to parameters, and training steps built on `adamx.step`.",
        ["training"],
    ),
    "core": (
        "The protocol",
        "The `(init, update)` pair every transformation is, and `chain`.",
        ["core"],
    ),
}

# The aliases of adamx/core/_base.py that signatures name: documented on the types page, where
# `learning_rate: ScalarOrSchedule` links to: (name, what it stands for, what it means in reST).
TYPES = (
    (
        "ScalarOrSchedule",
        "float | jax.typing.ArrayLike | Schedule",
        "A hyperparameter given as a number (a Python float or a scalar array) or as a "
        "`Schedule`, a function of the step count. A learning rate is one.",
    ),
    (
        "Schedule",
        "collections.abc.Callable[[jax.Array], jax.typing.ArrayLike]",
        "A function from the step count (an ``int32`` scalar, 0 at the first update) to a value, "
        "such as those on :doc:`schedules`.",
    ),
    ("Params", "typing.Any", "A pytree of parameters: arrays in any nesting of containers."),
    (
        "Updates",
        "typing.Any",
        "A pytree of updates with the structure of the parameters: the gradients on entering a "
        "chain, the step to add to the parameters on leaving it.",
    ),
    (
        "OptState",
        "typing.Any",
        "A transformation's state: a pytree, usually a ``NamedTuple`` named after its transform.",
    ),
    (
        "InitFn",
        "collections.abc.Callable[[Params], OptState]",
        "``init(params) -> state``: builds a transformation's state from the parameters.",
    ),
    (
        "UpdateFn",
        "collections.abc.Callable[..., tuple[Updates, OptState]]",
        "``update(updates, state, params=None, **extra_args) -> (updates, state)``: transforms a "
        "tree of updates; keyword arguments it does not use are accepted and ignored.",
    ),
)

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


def page_modules() -> dict[str, list[Path]]:
    """Each API page's modules (those with public names), in the order `API_PAGES` gives."""
    named = {f"{m.parent.name}/{m.stem}": m for f in FLOORS for m in modules(f) if declared(m)}
    claimed = [entry for *_, entries in API_PAGES.values() for entry in entries if "/" in entry]
    pages: dict[str, list[Path]] = {}
    for page, (*_, entries) in API_PAGES.items():
        pages[page] = []
        for entry in entries:
            keys = [entry] if "/" in entry else [k for k in named if k.startswith(f"{entry}/")]
            pages[page] += [named[k] for k in keys if "/" in entry or k not in claimed]
    placed = [f"{m.parent.name}/{m.stem}" for ms in pages.values() for m in ms]
    twice = sorted({k for k in placed if placed.count(k) > 1})
    unknown = sorted(set(placed) - set(named))
    nowhere = sorted(set(named) - set(placed))
    if twice or unknown or nowhere:
        raise ValueError(
            f"API_PAGES in tests/generate.py places {twice} on two pages, names {unknown}, which "
            f"have no public names, and leaves out {nowhere}: put each module with an `__all__` "
            "on exactly one page."
        )
    return pages


def _rst_block(lines: list[str]) -> list[str]:
    return ["```{eval-rst}", *lines, "```", ""]


def _reference_page(page: str) -> str:
    """One page of the reference: its title, a summary table of its names, then each module's."""
    import adamx

    title, about, _ = API_PAGES[page]
    names = [name for module in page_modules()[page] for name in declared(module)]
    lines = [f"# {title}", "", about, ""]
    lines += _rst_block(
        [".. currentmodule:: adamx", "", ".. autosummary::", "   :nosignatures:", ""]
        + [f"   {name}" for name in names]
    )
    for module in page_modules()[page]:
        lines += [f"## {_heading(module)}", ""]
        entries: list[str] = []
        for name in declared(module):
            kind = "autoclass" if inspect.isclass(getattr(adamx, name)) else "autofunction"
            target = f"adamx.{name}()" if name == "MomentStorage" else f"adamx.{name}"
            entries += ["", f".. {kind}:: {target}", *OPTIONS.get(name, [])]
        lines += _rst_block(entries[1:])
    return "\n".join(lines).rstrip("\n") + "\n"


def _types_page() -> str:
    lines = [
        "# Types",
        "",
        "The aliases adamx's signatures use (`learning_rate: ScalarOrSchedule`). They are",
        "annotations, defined in `adamx/core/_base.py`, and not names `adamx` exports: any value",
        "of the type they stand for is accepted.",
        "",
        "| type | stands for |",
        "|---|---|",
        *(
            f"| {{py:type}}`{name}` | `{value.replace('|', chr(92) + '|')}` |"
            for name, value, _ in TYPES
        ),
        "",
    ]
    entries = [".. py:currentmodule:: None"]
    for name, value, meaning in TYPES:
        entries += ["", f".. py:type:: {name}", f"   :canonical: {value}", "", f"   {meaning}"]
    lines += _rst_block(entries)
    return "\n".join(lines).rstrip("\n") + "\n"


def _index_page() -> str:
    pages = page_modules()
    lines = [
        "# API reference",
        "",
        "Every name on these pages is importable from the top-level `adamx` package and from its",
        "floor (`adamx.optimizers.adam` is `adamx.adam`; the floors are drawn in {doc}`../design`,",
        "section 10). Each page opens with a table of its names. The pages are generated from the",
        "modules' `__all__` by `python -m tests.generate`.",
        "",
        "| page | what it holds | names |",
        "|---|---|---|",
    ]
    for page, (_, about, _) in API_PAGES.items():
        count = sum(len(declared(m)) for m in pages[page])
        lines.append(f"| {{doc}}`{page}` | {about} | {count} |")
    lines.append(f"| {{doc}}`types` | The aliases the signatures use. | {len(TYPES)} |")
    lines += ["", "```{toctree}", ":maxdepth: 1", ":hidden:", "", *API_PAGES, "types", "```"]
    return "\n".join(lines) + "\n"


def api_pages() -> dict[str, str]:
    """docs/api/: every public name, on the pages of `API_PAGES`, with an index and the types."""
    pages = {"index.md": _index_page()}
    pages.update({f"{page}.md": _reference_page(page) for page in API_PAGES})
    pages["types.md"] = _types_page()
    return pages


def main() -> None:
    for floor in FLOORS:
        (PACKAGE / floor / "__init__.py").write_text(floor_init(floor))
    API_DIR.mkdir(exist_ok=True)
    pages = api_pages()
    for stale in API_DIR.glob("*.md"):
        if stale.name not in pages:
            stale.unlink()
    for name, text in pages.items():
        (API_DIR / name).write_text(text)


if __name__ == "__main__":
    main()
