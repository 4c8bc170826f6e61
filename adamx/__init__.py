"""adamx: Adam and its variants as pure, composable gradient transformations over pytrees."""

from importlib.metadata import PackageNotFoundError, version

from ._accumulation import ApplyIfFiniteState as ApplyIfFiniteState
from ._accumulation import EmaParamsState as EmaParamsState
from ._accumulation import LookaheadParams as LookaheadParams
from ._accumulation import LookaheadState as LookaheadState
from ._accumulation import MultiSteps as MultiSteps
from ._accumulation import MultiStepsState as MultiStepsState
from ._accumulation import apply_if_finite as apply_if_finite
from ._accumulation import averaged_params as averaged_params
from ._accumulation import ema_params as ema_params
from ._accumulation import lookahead as lookahead
from ._accumulation import multi_steps as multi_steps
from ._adabelief import BeliefMomentState as BeliefMomentState
from ._adabelief import adabelief as adabelief
from ._adabelief import scale_by_belief as scale_by_belief
from ._adabelief import scale_by_belief_moment as scale_by_belief_moment
from ._adafactor import FactoredRmsState as FactoredRmsState
from ._adafactor import adafactor as adafactor
from ._adafactor import scale_by_adafactor as scale_by_adafactor
from ._adafactor import scale_by_factored_rms as scale_by_factored_rms
from ._adagrad import UpdateRmsState as UpdateRmsState
from ._adagrad import adadelta as adadelta
from ._adagrad import adagrad as adagrad
from ._adagrad import scale_by_adadelta as scale_by_adadelta
from ._adagrad import scale_by_rss as scale_by_rss
from ._adagrad import scale_by_update_rms as scale_by_update_rms
from ._adam import adam as adam
from ._adam import adamw as adamw
from ._adam import scale_by_adam as scale_by_adam
from ._adam_mini import BlockMeanState as BlockMeanState
from ._adam_mini import Blocks as Blocks
from ._adam_mini import adam_mini as adam_mini
from ._adam_mini import adam_mini_blocks as adam_mini_blocks
from ._adam_mini import adam_mini_decay_mask as adam_mini_decay_mask
from ._adam_mini import adam_mini_partition as adam_mini_partition
from ._adam_mini import block_mean as block_mean
from ._adam_mini import path_name as path_name
from ._adam_mini import scale_by_adam_mini as scale_by_adam_mini
from ._adamax import InfinityNormState as InfinityNormState
from ._adamax import adamax as adamax
from ._adamax import adamaxw as adamaxw
from ._adamax import scale_by_adamax as scale_by_adamax
from ._adamax import scale_by_infinity_norm as scale_by_infinity_norm
from ._adan import GradientDifferenceState as GradientDifferenceState
from ._adan import ProximalStepState as ProximalStepState
from ._adan import ScaleByAdanState as ScaleByAdanState
from ._adan import adan as adan
from ._adan import gradient_difference as gradient_difference
from ._adan import proximal_step as proximal_step
from ._adan import scale_by_adan as scale_by_adan
from ._ademamix import AddSlowEmaState as AddSlowEmaState
from ._ademamix import add_slow_ema as add_slow_ema
from ._ademamix import ademamix as ademamix
from ._ademamix import scale_by_ademamix as scale_by_ademamix
from ._adopt import DelayedSecondMomentState as DelayedSecondMomentState
from ._adopt import adopt as adopt
from ._adopt import quarter_power as quarter_power
from ._adopt import scale_by_adopt as scale_by_adopt
from ._adopt import scale_by_delayed_second_moment as scale_by_delayed_second_moment
from ._amsgrad import RunningMaxState as RunningMaxState
from ._amsgrad import amsgrad as amsgrad
from ._amsgrad import amsgrad_estimator as amsgrad_estimator
from ._amsgrad import running_max as running_max
from ._amsgrad import scale_by_amsgrad as scale_by_amsgrad
from ._base import EmptyState as EmptyState
from ._base import GradientTransformation as GradientTransformation
from ._base import MomentTransformation as MomentTransformation
from ._base import identity as identity
from ._cautious import CautiousState as CautiousState
from ._cautious import cautious as cautious
from ._cautious import cautious_adamw as cautious_adamw
from ._cautious import cautious_lion as cautious_lion
from ._chain import chain as chain
from ._clipping import AddNoiseState as AddNoiseState
from ._clipping import adaptive_grad_clip as adaptive_grad_clip
from ._clipping import add_noise as add_noise
from ._clipping import centralize as centralize
from ._clipping import clip as clip
from ._clipping import clip_by_block_rms as clip_by_block_rms
from ._clipping import clip_by_global_norm as clip_by_global_norm
from ._clipping import global_norm as global_norm
from ._clipping import unitwise_norm as unitwise_norm
from ._flat import FlatLayout as FlatLayout
from ._flat import FlatParams as FlatParams
from ._flat import flatten as flatten
from ._groups import MaskedNode as MaskedNode
from ._groups import MaskedState as MaskedState
from ._groups import PartitionState as PartitionState
from ._groups import freeze as freeze
from ._groups import masked as masked
from ._groups import partition as partition
from ._groups import set_to_zero as set_to_zero
from ._hyperparams import InjectHyperparamsState as InjectHyperparamsState
from ._hyperparams import get_hyperparam as get_hyperparam
from ._hyperparams import get_state as get_state
from ._hyperparams import inject_hyperparams as inject_hyperparams
from ._hyperparams import map_state as map_state
from ._hyperparams import set_hyperparam as set_hyperparam
from ._kahan import KahanState as KahanState
from ._kahan import kahan_summation as kahan_summation
from ._lamb import lamb as lamb
from ._lamb import lars as lars
from ._lamb import scale_by_trust_ratio as scale_by_trust_ratio
from ._laprop import DecayAfterUpdateState as DecayAfterUpdateState
from ._laprop import WeightedEmaState as WeightedEmaState
from ._laprop import decay_after_update as decay_after_update
from ._laprop import laprop as laprop
from ._laprop import scale_by_laprop as scale_by_laprop
from ._laprop import weighted_ema as weighted_ema
from ._lion import ScaleByLionState as ScaleByLionState
from ._lion import lion as lion
from ._lion import scale_by_lion as scale_by_lion
from ._mars import MarsCorrectionState as MarsCorrectionState
from ._mars import clip_by_block_norm as clip_by_block_norm
from ._mars import mars as mars
from ._mars import mars_correction as mars_correction
from ._mars import mars_labels as mars_labels
from ._mars import scale_by_mars as scale_by_mars
from ._moments import AccumulateState as AccumulateState
from ._moments import BiasCorrectionState as BiasCorrectionState
from ._moments import DampedTraceState as DampedTraceState
from ._moments import EmaState as EmaState
from ._moments import TraceState as TraceState
from ._moments import accumulate as accumulate
from ._moments import bias_correction as bias_correction
from ._moments import ema as ema
from ._moments import trace as trace
from ._muon import is_embedding_or_head as is_embedding_or_head
from ._muon import muon as muon
from ._muon import muon_labels as muon_labels
from ._muon import nesterov_ema as nesterov_ema
from ._muon import newton_schulz as newton_schulz
from ._muon import orthogonalize as orthogonalize
from ._muon import scale_by_muon as scale_by_muon
from ._muon import scale_by_shape as scale_by_shape
from ._nadam import DozatMomentumState as DozatMomentumState
from ._nadam import algoperf_momentum as algoperf_momentum
from ._nadam import dozat_momentum as dozat_momentum
from ._nadam import nadam as nadam
from ._nadam import nadamw as nadamw
from ._nadam import scale_by_nadam as scale_by_nadam
from ._optax_compat import from_optax_state as from_optax_state
from ._optax_compat import to_optax_state as to_optax_state
from ._prodigy import ProdigyState as ProdigyState
from ._prodigy import prodigy as prodigy
from ._quantize import Blockwise as Blockwise
from ._quantize import QuantizedBuffer as QuantizedBuffer
from ._quantize import Rank1 as Rank1
from ._quantize import RoundedBuffer as RoundedBuffer
from ._quantize import StochasticBfloat16 as StochasticBfloat16
from ._quantize import blockwise_4bit as blockwise_4bit
from ._quantize import blockwise_8bit as blockwise_8bit
from ._quantize import low_bit_moments as low_bit_moments
from ._quantize import rank1_4bit as rank1_4bit
from ._quantize import stochastic_bfloat16 as stochastic_bfloat16
from ._radam import RectificationState as RectificationState
from ._radam import radam as radam
from ._radam import rectification as rectification
from ._radam import root_bias_correction as root_bias_correction
from ._radam import scale_by_radam as scale_by_radam
from ._rmsprop import StddevState as StddevState
from ._rmsprop import rmsprop as rmsprop
from ._rmsprop import scale_by_rms as scale_by_rms
from ._rmsprop import scale_by_stddev as scale_by_stddev
from ._scale import ScaleByScheduleState as ScaleByScheduleState
from ._scale import scale as scale
from ._scale import scale_by_learning_rate as scale_by_learning_rate
from ._scale import scale_by_schedule as scale_by_schedule
from ._schedule_free import ScheduleFreeState as ScheduleFreeState
from ._schedule_free import schedule_free as schedule_free
from ._schedule_free import schedule_free_adamw as schedule_free_adamw
from ._schedule_free import schedule_free_eval_params as schedule_free_eval_params
from ._schedules import constant_schedule as constant_schedule
from ._schedules import cosine_decay_schedule as cosine_decay_schedule
from ._schedules import cosine_onecycle_schedule as cosine_onecycle_schedule
from ._schedules import exponential_decay as exponential_decay
from ._schedules import join_schedules as join_schedules
from ._schedules import linear_schedule as linear_schedule
from ._schedules import piecewise_constant_schedule as piecewise_constant_schedule
from ._schedules import polynomial_schedule as polynomial_schedule
from ._schedules import sgdr_schedule as sgdr_schedule
from ._schedules import warmup_constant_schedule as warmup_constant_schedule
from ._schedules import warmup_cosine_decay_schedule as warmup_cosine_decay_schedule
from ._schedules import warmup_stable_decay_schedule as warmup_stable_decay_schedule
from ._second_moment import SecondMomentState as SecondMomentState
from ._second_moment import scale_by_second_moment as scale_by_second_moment
from ._sgd import sgd as sgd
from ._sharding import bytes_per_device as bytes_per_device
from ._sharding import init_sharded as init_sharded
from ._sharding import state_shardings as state_shardings
from ._sharding import zero1_shardings as zero1_shardings
from ._soap import SoapState as SoapState
from ._soap import scale_by_soap as scale_by_soap
from ._soap import soap as soap
from ._soap import soap_labels as soap_labels
from ._sophia import ClippedHessianState as ClippedHessianState
from ._sophia import hutchinson_diagonal as hutchinson_diagonal
from ._sophia import scale_by_clipped_hessian as scale_by_clipped_hessian
from ._sophia import scale_by_sophia as scale_by_sophia
from ._sophia import sophia as sophia
from ._stable_adamw import ClippedSecondMomentState as ClippedSecondMomentState
from ._stable_adamw import scale_by_clipped_second_moment as scale_by_clipped_second_moment
from ._stable_adamw import scale_by_stable_adamw as scale_by_stable_adamw
from ._stable_adamw import stable_adamw as stable_adamw
from ._storage import DtypeStorage as DtypeStorage
from ._storage import FilledStorage as FilledStorage
from ._storage import MomentStorage as MomentStorage
from ._train import make_train_step as make_train_step
from ._train import nnx_update as nnx_update
from ._update import apply_updates as apply_updates
from ._update import step as step
from ._weight_decay import AddDecayedWeightsState as AddDecayedWeightsState
from ._weight_decay import add_decayed_weights as add_decayed_weights
from ._yogi import YogiMomentState as YogiMomentState
from ._yogi import scale_by_yogi as scale_by_yogi
from ._yogi import yogi as yogi
from ._yogi import yogi_moment as yogi_moment

try:
    __version__ = version("adamx")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AccumulateState",
    "AddDecayedWeightsState",
    "AddNoiseState",
    "AddSlowEmaState",
    "ApplyIfFiniteState",
    "BeliefMomentState",
    "BiasCorrectionState",
    "BlockMeanState",
    "Blocks",
    "Blockwise",
    "CautiousState",
    "ClippedHessianState",
    "ClippedSecondMomentState",
    "DampedTraceState",
    "DecayAfterUpdateState",
    "DelayedSecondMomentState",
    "DozatMomentumState",
    "DtypeStorage",
    "EmaParamsState",
    "EmaState",
    "EmptyState",
    "FactoredRmsState",
    "FlatLayout",
    "FlatParams",
    "FilledStorage",
    "GradientDifferenceState",
    "GradientTransformation",
    "InfinityNormState",
    "InjectHyperparamsState",
    "KahanState",
    "LookaheadParams",
    "LookaheadState",
    "MarsCorrectionState",
    "MaskedNode",
    "MaskedState",
    "MomentStorage",
    "MomentTransformation",
    "MultiSteps",
    "MultiStepsState",
    "PartitionState",
    "ProdigyState",
    "ProximalStepState",
    "QuantizedBuffer",
    "Rank1",
    "RectificationState",
    "RoundedBuffer",
    "RunningMaxState",
    "ScaleByAdanState",
    "ScaleByLionState",
    "ScaleByScheduleState",
    "ScheduleFreeState",
    "SecondMomentState",
    "SoapState",
    "StddevState",
    "StochasticBfloat16",
    "TraceState",
    "UpdateRmsState",
    "WeightedEmaState",
    "YogiMomentState",
    "accumulate",
    "adabelief",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adam_mini",
    "adam_mini_blocks",
    "adam_mini_decay_mask",
    "adam_mini_partition",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "add_noise",
    "add_slow_ema",
    "ademamix",
    "adopt",
    "algoperf_momentum",
    "amsgrad",
    "amsgrad_estimator",
    "apply_if_finite",
    "apply_updates",
    "averaged_params",
    "bias_correction",
    "block_mean",
    "blockwise_4bit",
    "blockwise_8bit",
    "bytes_per_device",
    "cautious",
    "cautious_adamw",
    "cautious_lion",
    "centralize",
    "chain",
    "clip",
    "clip_by_block_norm",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "decay_after_update",
    "dozat_momentum",
    "ema",
    "ema_params",
    "exponential_decay",
    "flatten",
    "freeze",
    "from_optax_state",
    "get_hyperparam",
    "get_state",
    "global_norm",
    "gradient_difference",
    "hutchinson_diagonal",
    "identity",
    "init_sharded",
    "inject_hyperparams",
    "is_embedding_or_head",
    "kahan_summation",
    "join_schedules",
    "lamb",
    "laprop",
    "lars",
    "linear_schedule",
    "lion",
    "lookahead",
    "low_bit_moments",
    "make_train_step",
    "map_state",
    "mars",
    "mars_correction",
    "mars_labels",
    "masked",
    "multi_steps",
    "muon",
    "muon_labels",
    "nadam",
    "nadamw",
    "nesterov_ema",
    "newton_schulz",
    "nnx_update",
    "orthogonalize",
    "partition",
    "path_name",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "prodigy",
    "proximal_step",
    "quarter_power",
    "radam",
    "rank1_4bit",
    "rectification",
    "rmsprop",
    "root_bias_correction",
    "running_max",
    "scale",
    "scale_by_adadelta",
    "scale_by_adafactor",
    "scale_by_adam",
    "scale_by_adam_mini",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_belief_moment",
    "scale_by_clipped_hessian",
    "scale_by_clipped_second_moment",
    "scale_by_delayed_second_moment",
    "scale_by_factored_rms",
    "scale_by_infinity_norm",
    "scale_by_laprop",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_mars",
    "scale_by_muon",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_second_moment",
    "scale_by_shape",
    "scale_by_soap",
    "scale_by_sophia",
    "scale_by_stable_adamw",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "scale_by_update_rms",
    "scale_by_yogi",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "set_hyperparam",
    "set_to_zero",
    "sgd",
    "sgdr_schedule",
    "soap",
    "soap_labels",
    "sophia",
    "stable_adamw",
    "state_shardings",
    "step",
    "stochastic_bfloat16",
    "to_optax_state",
    "trace",
    "unitwise_norm",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_stable_decay_schedule",
    "weighted_ema",
    "yogi",
    "yogi_moment",
    "zero1_shardings",
]
