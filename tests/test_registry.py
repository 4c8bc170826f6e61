"""The registry of tests/helpers.py is complete: every public optimizer has a line in it.

A registry line (`Case` in ``OPTIMIZERS``) puts an optimizer through every registry-wide test: the
matrix (tests/test_matrix.py), interop, sharding, golden checkpoints, injected hyperparameters. An
optimizer added to ``adamx.optimizers`` without one would silently miss all of them, so this file
fails until it has a line, or a line in ``EXCLUDED`` below that says why not.
"""

from __future__ import annotations

import inspect

import pytest

import adamx
import adamx.optimizers
from tests.helpers import OPTIMIZERS

# Public optimizers with no registry case, each with the reason. Keep this list short: a new
# optimizer belongs in the registry.
EXCLUDED = {
    # A block of Adan's chain (its proximal weight decay, applied after the step), not an optimizer
    # on its own: it takes the learning rate only to scale the decay. `adan` is in the registry.
    "proximal_step": "a block of `adan` (its proximal decay), not an optimizer on its own",
    # The generic Schedule-Free wrapper needs a direction transformation to wrap; its AdamW form,
    # `schedule_free_adamw`, is the registry's Schedule-Free optimizer (and tests/test_schedule_free.py
    # checks `schedule_free(identity())` as schedule-free SGD).
    "schedule_free": "a wrapper around a direction; `schedule_free_adamw` is its registry case",
}


def public_optimizers() -> dict[str, object]:
    """The functions of ``adamx.optimizers.__all__`` that build a whole optimizer from a learning
    rate: they take ``learning_rate``, and are not a ``scale_by_*`` block (states, labels and
    partition helpers take no learning rate)."""
    found = {}
    for name in adamx.optimizers.__all__:
        obj = getattr(adamx.optimizers, name)
        if not inspect.isfunction(obj) or name.startswith("scale_by_"):
            continue
        if "learning_rate" in inspect.signature(obj).parameters:
            found[name] = obj
    return found


def registry_factories(cases=OPTIMIZERS) -> set[object]:
    """The public factories the registry's cases call (``Case.call(lr).factory``)."""
    return {case.call(1e-2).factory for case in cases}


def missing(optimizers: dict[str, object], factories: set[object], excluded) -> list[str]:
    """The optimizers with neither a registry case nor an exclusion."""
    return sorted(n for n, f in optimizers.items() if f not in factories and n not in excluded)


def test_the_optimizers_are_found():
    """The filter is not vacuous: it finds the known optimizers and none of the blocks."""
    found = public_optimizers()
    assert {"adam", "adamw", "sgd", "lion", "muon", "soap", "prodigy", "adafactor"} <= set(found)
    assert len(found) >= 30, sorted(found)
    assert not {"scale_by_adam", "muon_labels", "adam_mini_partition", "ProdigyState"} & set(found)
    for name, factory in found.items():  # importable as adamx.<name>, the same object
        assert getattr(adamx, name) is factory, name


def test_every_public_optimizer_has_a_registry_case():
    absent = missing(public_optimizers(), registry_factories(), EXCLUDED)
    assert not absent, (
        f"{absent} have no registry case: add a `Case` line to `OPTIMIZERS` in tests/helpers.py "
        "(or, if it is not an optimizer on its own, an entry with the reason to EXCLUDED in "
        "tests/test_registry.py)."
    )


def test_every_exclusion_is_a_public_optimizer_without_a_case():
    """EXCLUDED does not go stale: each name is still a public optimizer, still has no case."""
    found = public_optimizers()
    factories = registry_factories()
    for name, reason in EXCLUDED.items():
        assert name in found, f"{name} is no longer a public optimizer: remove it from EXCLUDED"
        assert found[name] not in factories, f"{name} has a registry case: remove it from EXCLUDED"
        assert reason, name


@pytest.mark.parametrize("dropped", ["adam", "muon", "lion"])
def test_a_missing_case_is_reported(dropped):
    """Without its registry lines an optimizer is reported: the check can fail."""
    optimizers = public_optimizers()
    cases = [c for c in OPTIMIZERS if c.call(1e-2).factory is not optimizers[dropped]]
    assert len(cases) < len(OPTIMIZERS)
    assert missing(optimizers, registry_factories(cases), EXCLUDED) == [dropped]
