"""The blocks every optimizer is chained from: moments and bias correction, the second moment and its
estimators, rectification, weight decay, the learning rate, orthogonalisation, collectives.
Imports `adamx.core` and `adamx.storage`.
"""

from ._moments import AccumulateState as AccumulateState
from ._moments import BiasCorrectionState as BiasCorrectionState
from ._moments import DampedTraceState as DampedTraceState
from ._moments import EmaState as EmaState
from ._moments import TraceState as TraceState
from ._moments import accumulate as accumulate
from ._moments import bias_correction as bias_correction
from ._moments import ema as ema
from ._moments import nesterov_ema as nesterov_ema
from ._moments import trace as trace
from ._orthogonal import newton_schulz as newton_schulz
from ._orthogonal import orthogonalize as orthogonalize
from ._rectification import RectificationState as RectificationState
from ._rectification import rectification as rectification
from ._rectification import root_bias_correction as root_bias_correction
from ._scale import ScaleByScheduleState as ScaleByScheduleState
from ._scale import scale as scale
from ._scale import scale_by_learning_rate as scale_by_learning_rate
from ._scale import scale_by_schedule as scale_by_schedule
from ._second_moment import SecondMomentState as SecondMomentState
from ._second_moment import scale_by_second_moment as scale_by_second_moment
from ._weight_decay import AddDecayedWeightsState as AddDecayedWeightsState
from ._weight_decay import DecayAfterUpdateState as DecayAfterUpdateState
from ._weight_decay import add_decayed_weights as add_decayed_weights
from ._weight_decay import decay_after_update as decay_after_update

__all__ = [
    "AccumulateState",
    "AddDecayedWeightsState",
    "BiasCorrectionState",
    "DampedTraceState",
    "DecayAfterUpdateState",
    "EmaState",
    "RectificationState",
    "ScaleByScheduleState",
    "SecondMomentState",
    "TraceState",
    "accumulate",
    "add_decayed_weights",
    "bias_correction",
    "decay_after_update",
    "ema",
    "nesterov_ema",
    "newton_schulz",
    "orthogonalize",
    "rectification",
    "root_bias_correction",
    "scale",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_by_second_moment",
    "trace",
]
