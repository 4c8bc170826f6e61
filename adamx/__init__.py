"""adamx: Adam and its variants as pure, composable gradient transformations over pytrees."""

from importlib.metadata import PackageNotFoundError, version

from ._adam import adam as adam
from ._adam import adamw as adamw
from ._adam import scale_by_adam as scale_by_adam
from ._base import EmptyState as EmptyState
from ._base import GradientTransformation as GradientTransformation
from ._base import MomentTransformation as MomentTransformation
from ._base import identity as identity
from ._chain import chain as chain
from ._moments import BiasCorrectionState as BiasCorrectionState
from ._moments import EmaState as EmaState
from ._moments import TraceState as TraceState
from ._moments import bias_correction as bias_correction
from ._moments import ema as ema
from ._moments import trace as trace
from ._scale import ScaleByScheduleState as ScaleByScheduleState
from ._scale import scale as scale
from ._scale import scale_by_learning_rate as scale_by_learning_rate
from ._scale import scale_by_schedule as scale_by_schedule
from ._second_moment import SecondMomentState as SecondMomentState
from ._second_moment import scale_by_second_moment as scale_by_second_moment
from ._storage import DtypeStorage as DtypeStorage
from ._storage import MomentStorage as MomentStorage
from ._update import apply_updates as apply_updates
from ._update import step as step
from ._weight_decay import AddDecayedWeightsState as AddDecayedWeightsState
from ._weight_decay import add_decayed_weights as add_decayed_weights

try:
    __version__ = version("adamx")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AddDecayedWeightsState",
    "BiasCorrectionState",
    "DtypeStorage",
    "EmaState",
    "EmptyState",
    "GradientTransformation",
    "MomentStorage",
    "MomentTransformation",
    "ScaleByScheduleState",
    "SecondMomentState",
    "TraceState",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "bias_correction",
    "chain",
    "ema",
    "identity",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_by_second_moment",
    "step",
    "trace",
]
