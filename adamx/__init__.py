"""adamx: Adam and its variants as pure, composable gradient transformations over pytrees.

The package is layered (docs/design.md, "Layers"); each floor imports only from those below it:

    core         the protocol, chain, dtypes, validation, tree and per-layer helpers
    storage      how a moment is stored: a dtype or low-bit blocks
    blocks       moments, second moment, bias correction, rectification, weight decay, ...
    kernels      the optional compiled one-pass step and its dispatch
    toolkit      schedules, clipping, groups, accumulation, hyperparameters, ...
    optimizers   the families (adam, lion, muon, ...), chains of blocks
    distributed  state sharding, ZeRO-1, flat buffers
    training     apply_updates, step, train-step helpers

Every public name is importable from ``adamx`` itself and from its floor (``adamx.adam`` is
``adamx.optimizers.adam``); ``__all__`` is the union of the floors' ``__all__``.
"""

from importlib.metadata import PackageNotFoundError, version

from . import blocks, core, distributed, optimizers, storage, toolkit, training
from .blocks import *  # noqa: F403
from .core import *  # noqa: F403
from .distributed import *  # noqa: F403
from .optimizers import *  # noqa: F403
from .storage import *  # noqa: F403
from .toolkit import *  # noqa: F403
from .training import *  # noqa: F403

try:
    __version__ = version("adamx")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
del PackageNotFoundError, version

__all__ = []
__all__ += core.__all__
__all__ += storage.__all__
__all__ += blocks.__all__
__all__ += toolkit.__all__
__all__ += optimizers.__all__
__all__ += distributed.__all__
__all__ += training.__all__
