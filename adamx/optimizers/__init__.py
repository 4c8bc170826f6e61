"""The optimizer families, one module each, built from `adamx.core`, `adamx.blocks` and `adamx.toolkit`.
A family uses another only through its public names (Muon's AdamW, LAMB's Adam).
"""

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
from ._cautious import CautiousState as CautiousState
from ._cautious import cautious as cautious
from ._cautious import cautious_adamw as cautious_adamw
from ._cautious import cautious_lion as cautious_lion
from ._lamb import lamb as lamb
from ._lamb import lars as lars
from ._lamb import scale_by_trust_ratio as scale_by_trust_ratio
from ._laprop import WeightedEmaState as WeightedEmaState
from ._laprop import laprop as laprop
from ._laprop import scale_by_laprop as scale_by_laprop
from ._laprop import weighted_ema as weighted_ema
from ._lion import ScaleByLionState as ScaleByLionState
from ._lion import lion as lion
from ._lion import scale_by_lion as scale_by_lion
from ._mars import MarsCorrectionState as MarsCorrectionState
from ._mars import mars as mars
from ._mars import mars_correction as mars_correction
from ._mars import mars_labels as mars_labels
from ._mars import scale_by_mars as scale_by_mars
from ._muon import is_embedding_or_head as is_embedding_or_head
from ._muon import muon as muon
from ._muon import muon_labels as muon_labels
from ._muon import scale_by_muon as scale_by_muon
from ._muon import scale_by_shape as scale_by_shape
from ._nadam import DozatMomentumState as DozatMomentumState
from ._nadam import algoperf_momentum as algoperf_momentum
from ._nadam import dozat_momentum as dozat_momentum
from ._nadam import nadam as nadam
from ._nadam import nadamw as nadamw
from ._nadam import scale_by_nadam as scale_by_nadam
from ._prodigy import ProdigyState as ProdigyState
from ._prodigy import prodigy as prodigy
from ._radam import radam as radam
from ._radam import scale_by_radam as scale_by_radam
from ._rmsprop import StddevState as StddevState
from ._rmsprop import rmsprop as rmsprop
from ._rmsprop import scale_by_rms as scale_by_rms
from ._rmsprop import scale_by_stddev as scale_by_stddev
from ._schedule_free import ScheduleFreeState as ScheduleFreeState
from ._schedule_free import schedule_free as schedule_free
from ._schedule_free import schedule_free_adamw as schedule_free_adamw
from ._schedule_free import schedule_free_eval_params as schedule_free_eval_params
from ._sgd import sgd as sgd
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
from ._yogi import YogiMomentState as YogiMomentState
from ._yogi import scale_by_yogi as scale_by_yogi
from ._yogi import yogi as yogi
from ._yogi import yogi_moment as yogi_moment

__all__ = [
    "AddSlowEmaState",
    "BeliefMomentState",
    "BlockMeanState",
    "Blocks",
    "CautiousState",
    "ClippedHessianState",
    "ClippedSecondMomentState",
    "DelayedSecondMomentState",
    "DozatMomentumState",
    "FactoredRmsState",
    "GradientDifferenceState",
    "InfinityNormState",
    "MarsCorrectionState",
    "ProdigyState",
    "ProximalStepState",
    "RunningMaxState",
    "ScaleByAdanState",
    "ScaleByLionState",
    "ScheduleFreeState",
    "SoapState",
    "StddevState",
    "UpdateRmsState",
    "WeightedEmaState",
    "YogiMomentState",
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
    "add_slow_ema",
    "ademamix",
    "adopt",
    "algoperf_momentum",
    "amsgrad",
    "amsgrad_estimator",
    "block_mean",
    "cautious",
    "cautious_adamw",
    "cautious_lion",
    "dozat_momentum",
    "gradient_difference",
    "hutchinson_diagonal",
    "is_embedding_or_head",
    "lamb",
    "laprop",
    "lars",
    "lion",
    "mars",
    "mars_correction",
    "mars_labels",
    "muon",
    "muon_labels",
    "nadam",
    "nadamw",
    "path_name",
    "prodigy",
    "proximal_step",
    "quarter_power",
    "radam",
    "rmsprop",
    "running_max",
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
    "scale_by_lion",
    "scale_by_mars",
    "scale_by_muon",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
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
    "sgd",
    "soap",
    "soap_labels",
    "sophia",
    "stable_adamw",
    "weighted_ema",
    "yogi",
    "yogi_moment",
]
