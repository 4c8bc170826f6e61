"""The protocol and what every transform is built on: `GradientTransformation`, `chain`, dtypes,
validation, tree helpers and per-layer helpers. Imports nothing else from adamx.
"""

from ._base import EmptyState as EmptyState
from ._base import GradientTransformation as GradientTransformation
from ._base import MomentTransformation as MomentTransformation
from ._base import identity as identity
from ._chain import chain as chain

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "MomentTransformation",
    "chain",
    "identity",
]
