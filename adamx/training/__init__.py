"""Applying updates and taking a step: `apply_updates`, `step` (the one-pass kernel where it
applies), `make_train_step`, `nnx_update`.
"""

from ._train import make_train_step as make_train_step
from ._train import nnx_update as nnx_update
from ._update import apply_updates as apply_updates
from ._update import step as step

__all__ = [
    "apply_updates",
    "make_train_step",
    "nnx_update",
    "step",
]
