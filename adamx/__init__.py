"""adamx: Adam and its variants as pure, composable gradient transformations over pytrees."""

from importlib.metadata import PackageNotFoundError, version

from ._adagrad import UpdateRmsState as UpdateRmsState
from ._adagrad import adadelta as adadelta
from ._adagrad import adagrad as adagrad
from ._adagrad import scale_by_adadelta as scale_by_adadelta
from ._adagrad import scale_by_rss as scale_by_rss
from ._adagrad import scale_by_update_rms as scale_by_update_rms
from ._adam import adam as adam
from ._adam import adamw as adamw
from ._adam import scale_by_adam as scale_by_adam
from ._adamax import InfinityNormState as InfinityNormState
from ._adamax import adamax as adamax
from ._adamax import adamaxw as adamaxw
from ._adamax import scale_by_adamax as scale_by_adamax
from ._adamax import scale_by_infinity_norm as scale_by_infinity_norm
from ._amsgrad import RunningMaxState as RunningMaxState
from ._amsgrad import amsgrad as amsgrad
from ._amsgrad import amsgrad_estimator as amsgrad_estimator
from ._amsgrad import running_max as running_max
from ._amsgrad import scale_by_amsgrad as scale_by_amsgrad
from ._base import EmptyState as EmptyState
from ._base import GradientTransformation as GradientTransformation
from ._base import MomentTransformation as MomentTransformation
from ._base import identity as identity
from ._chain import chain as chain
from ._moments import AccumulateState as AccumulateState
from ._moments import BiasCorrectionState as BiasCorrectionState
from ._moments import EmaState as EmaState
from ._moments import TraceState as TraceState
from ._moments import accumulate as accumulate
from ._moments import bias_correction as bias_correction
from ._moments import ema as ema
from ._moments import trace as trace
from ._nadam import DozatMomentumState as DozatMomentumState
from ._nadam import algoperf_momentum as algoperf_momentum
from ._nadam import dozat_momentum as dozat_momentum
from ._nadam import nadam as nadam
from ._nadam import nadamw as nadamw
from ._nadam import scale_by_nadam as scale_by_nadam
from ._rmsprop import StddevState as StddevState
from ._rmsprop import rmsprop as rmsprop
from ._rmsprop import scale_by_rms as scale_by_rms
from ._rmsprop import scale_by_stddev as scale_by_stddev
from ._scale import ScaleByScheduleState as ScaleByScheduleState
from ._scale import scale as scale
from ._scale import scale_by_learning_rate as scale_by_learning_rate
from ._scale import scale_by_schedule as scale_by_schedule
from ._second_moment import SecondMomentState as SecondMomentState
from ._second_moment import scale_by_second_moment as scale_by_second_moment
from ._sgd import sgd as sgd
from ._storage import DtypeStorage as DtypeStorage
from ._storage import FilledStorage as FilledStorage
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
    "AccumulateState",
    "AddDecayedWeightsState",
    "BiasCorrectionState",
    "DozatMomentumState",
    "DtypeStorage",
    "EmaState",
    "EmptyState",
    "FilledStorage",
    "GradientTransformation",
    "InfinityNormState",
    "MomentStorage",
    "MomentTransformation",
    "RunningMaxState",
    "ScaleByScheduleState",
    "SecondMomentState",
    "StddevState",
    "TraceState",
    "UpdateRmsState",
    "accumulate",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "add_decayed_weights",
    "algoperf_momentum",
    "amsgrad",
    "amsgrad_estimator",
    "apply_updates",
    "bias_correction",
    "chain",
    "dozat_momentum",
    "ema",
    "identity",
    "nadam",
    "nadamw",
    "rmsprop",
    "running_max",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_infinity_norm",
    "scale_by_learning_rate",
    "scale_by_nadam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_second_moment",
    "scale_by_stddev",
    "scale_by_update_rms",
    "sgd",
    "step",
    "trace",
]
