"""Wrappers and tools around any optimizer: schedules, clipping, groups and masks, accumulation,
lookahead and parameter EMA, injected hyperparameters, Kahan summation, optax state conversion.
"""

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
from ._clipping import AddNoiseState as AddNoiseState
from ._clipping import adaptive_grad_clip as adaptive_grad_clip
from ._clipping import add_noise as add_noise
from ._clipping import centralize as centralize
from ._clipping import clip as clip
from ._clipping import clip_by_block_norm as clip_by_block_norm
from ._clipping import clip_by_block_rms as clip_by_block_rms
from ._clipping import clip_by_global_norm as clip_by_global_norm
from ._clipping import global_norm as global_norm
from ._clipping import unitwise_norm as unitwise_norm
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
from ._monitor import MonitorState as MonitorState
from ._monitor import diagnostics as diagnostics
from ._monitor import monitor as monitor
from ._optax_compat import from_optax_state as from_optax_state
from ._optax_compat import to_optax_state as to_optax_state
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

__all__ = [
    "AddNoiseState",
    "ApplyIfFiniteState",
    "EmaParamsState",
    "InjectHyperparamsState",
    "KahanState",
    "LookaheadParams",
    "LookaheadState",
    "MaskedNode",
    "MaskedState",
    "MonitorState",
    "MultiSteps",
    "MultiStepsState",
    "PartitionState",
    "adaptive_grad_clip",
    "add_noise",
    "apply_if_finite",
    "averaged_params",
    "centralize",
    "clip",
    "clip_by_block_norm",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "diagnostics",
    "ema_params",
    "exponential_decay",
    "freeze",
    "from_optax_state",
    "get_hyperparam",
    "get_state",
    "global_norm",
    "inject_hyperparams",
    "join_schedules",
    "kahan_summation",
    "linear_schedule",
    "lookahead",
    "map_state",
    "masked",
    "monitor",
    "multi_steps",
    "partition",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "set_hyperparam",
    "set_to_zero",
    "sgdr_schedule",
    "to_optax_state",
    "unitwise_norm",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_stable_decay_schedule",
]
