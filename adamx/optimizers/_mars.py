"""MARS-AdamW: AdamW on a variance-reduced, norm-clipped gradient (Yuan et al., 2024)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._map import update_moment
from ..blocks._moments import _resolve_storage
from ..blocks._scale import scale_by_learning_rate
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import GradientTransformation, ScalarOrSchedule
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._layers import BatchDims, batch_count, path_name
from ..core._structural import structural
from ..core._validate import check_decay, check_learning_rate, check_non_negative
from ..storage._storage import MomentStorage, init_buffers
from ..toolkit._clipping import clip_by_block_norm
from ..toolkit._groups import partition
from ._adam import adamw, scale_by_adam

__all__ = ["MarsCorrectionState", "mars", "mars_correction", "mars_labels", "scale_by_mars"]


class MarsCorrectionState(NamedTuple):
    """The state of `mars_correction`: the previous gradient :math:`g_{t-1}` (zeros at first)."""

    previous: Any


def mars_correction(
    gamma: float = 0.025,
    b1: float = 0.95,
    *,
    dtype: Any = None,
    storage: MomentStorage | None = None,
) -> GradientTransformation:
    r"""MARS's variance-reduced gradient, the approximate form of the authors' code.

    .. math::
        c_t = g_t + \gamma\, \frac{\beta_1}{1 - \beta_1}\, (g_t - g_{t-1}), \qquad g_0 = 0,

    with :math:`g_{t-1}` the gradient given to the previous step, kept in the state (the authors'
    ``is_approx=True``; the exact form needs the gradient of the previous parameters on the current
    batch). As in their code :math:`g_0 = 0`, so :math:`c_1 = (1 + \gamma\beta_1/(1-\beta_1))\, g_1`.

    Args:
      gamma: :math:`\gamma >= 0`, the weight of the correction (0: :math:`c_t = g_t`).
      b1: the :math:`\beta_1` of the momentum that follows.
      dtype: dtype of the stored :math:`g_{t-1}`; ``None`` keeps each parameter's dtype.
      storage: a `MomentStorage` (instead of ``dtype``).

    Returns:
      A `GradientTransformation` with state `MarsCorrectionState`.
    """
    check_non_negative(gamma, "gamma")
    check_decay(b1, "b1")
    storage = _resolve_storage(storage, dtype, "dtype")
    weight = gamma * (b1 / (1.0 - b1))

    def init_fn(params):
        return MarsCorrectionState(init_buffers(storage, params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(g, previous, w):
            return (g - previous) * w + g, g

        corrected, previous = update_moment(
            step, updates, state.previous, storage, hyperparameters=(weight,)
        )
        return corrected, MarsCorrectionState(previous)

    return GradientTransformation(init_fn, update_fn)


def mars_labels(params: Any, *, optimize_1d: bool = False, batch_dims: BatchDims = 0) -> Any:
    """Which leaves MARS updates (``"mars"``) and which go to plain AdamW (``"adamw"``).

    The authors' rule: a leaf with exactly two axes (after the ``batch_dims`` stacking axes) is a
    matrix and gets MARS; every other leaf (vectors, scalars, convolution kernels, and, with the
    default ``batch_dims=0``, stacked ``(layers, rows, cols)`` leaves) gets AdamW, unless
    ``optimize_1d=True``, which sends every leaf to MARS.

    Args:
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
      optimize_1d: the authors' ``optimize_1d``.
      batch_dims: leading axes that index stacked layers (an int or a function ``leaf -> int``).

    Returns:
      A tree like ``params`` of ``"mars"`` and ``"adamw"``.
    """

    def label(path, leaf):
        b = batch_count(batch_dims, leaf, path_name(path))
        return "mars" if optimize_1d or jnp.ndim(leaf) - b == 2 else "adamw"

    return jax.tree_util.tree_map_with_path(label, params)


def scale_by_mars(
    b1: float = 0.95,
    b2: float = 0.99,
    eps: float = 1e-8,
    gamma: float = 0.025,
    *,
    batch_dims: BatchDims | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""MARS-AdamW's direction: Adam's :math:`\hat m_t / (\sqrt{\hat v_t} + \epsilon)` on :math:`c_t`.

    ``chain(mars_correction(gamma, b1), clip_by_block_norm(1.0), scale_by_adam(b1, b2, eps))``:
    both moments see the corrected, clipped :math:`c_t`. See `mars` for the update and arguments.

    Returns:
      A `GradientTransformation`; its state is ``(MarsCorrectionState(previous), EmptyState(),
      adam's state)``.
    """
    batch_dims = structural(batch_dims, "batch_dims", 0)
    return chain(
        mars_correction(gamma, b1, dtype=mu_dtype),
        clip_by_block_norm(1.0, batch_dims=batch_dims),
        scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    )


@descent_example(
    "mars(learning_rate=0.1)",
    "14.5742 13.0323 11.6226",
    params='{"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([1.0, -1.0])}',
    loss='jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)',
)
def mars(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.95,
    b2: float = 0.99,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    gamma: float = 0.025,
    *,
    optimize_1d: bool = False,
    learning_rate_1d: ScalarOrSchedule | None = None,
    b1_1d: float = 0.9,
    b2_1d: float = 0.95,
    weight_decay_1d: ScalarOrSchedule = 0.1,
    batch_dims: BatchDims | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""MARS-AdamW (Yuan et al., 2024): AdamW on a variance-reduced gradient, as the authors' code.

    .. math::
        c_t &= g_t + \gamma\, \tfrac{\beta_1}{1 - \beta_1}\, (g_t - g_{t-1}), \qquad
        c_t \leftarrow c_t \min(1, 1 / \lVert c_t \rVert_F), \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, c_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, |c_t|^2, \\
        \theta_t &= \theta_{t-1} - \eta_t \left( \frac{m_t / (1 - \beta_1^t)}
        {\sqrt{v_t / (1 - \beta_2^t)} + \epsilon} + \lambda\, \theta_{t-1} \right)

    for matrices, with :math:`g_0 = m_0 = v_0 = 0` and :math:`g_{t-1}` the previous step's
    gradient (the authors' default approximate form, ``is_approx=True``; the exact form, the
    gradient at the previous parameters on the current batch, needs a second backward pass and
    is not provided). The norm is per leaf (per matrix with ``batch_dims``). Every other leaf is
    updated by plain `adamw` with ``(b1_1d, b2_1d)``, ``learning_rate_1d`` and
    ``weight_decay_1d``, as the authors' ``optimize_1d=False``; `mars_labels` shows the routing.
    ``optimize_1d=True`` sends every leaf through MARS with ``weight_decay``.

    Reference: matches a NumPy transcription of ``MARS/optimizers/mars.py`` (AGI-Arena/MARS,
    ``mars_type="mars-adamw"``, ``is_approx=True``, ``amsgrad=False``) step for step
    (``tests/test_mars.py``); there is no optax or torch.optim MARS. Defaults follow the
    authors. They give the 1-D learning rate as ``lr_1d`` and scale it with the schedule of
    ``lr`` (``lr_1d / lr`` times the current lr): pass a schedule to ``learning_rate_1d`` for the
    same effect. Their Lion and Shampoo variants are not provided.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, in ``[0, 1)``.
      b2: :math:`\beta_2`, in ``[0, 1)``.
      eps: :math:`\epsilon`, added to the root (also of the AdamW leaves).
      weight_decay: :math:`\lambda >= 0` of the MARS leaves, or a schedule.
      gamma: :math:`\gamma >= 0`, the weight of the gradient correction.
      optimize_1d: update every leaf with MARS.
      learning_rate_1d: the AdamW leaves' learning rate; ``None``: ``learning_rate``.
      b1_1d, b2_1d: the AdamW leaves' :math:`\beta_1, \beta_2`.
      weight_decay_1d: the AdamW leaves' decoupled weight decay.
      batch_dims: leading axes that index stacked layers, an int or a function ``leaf -> int``:
        a ``(layers, rows, cols)`` leaf with ``batch_dims=1`` is ``layers`` matrices.
      mu_dtype: dtype of :math:`m` and the stored :math:`g_{t-1}` (default: the parameter's).
      nu_dtype: dtype of :math:`v` (default: the parameter's real dtype).

    Returns:
      ``partition({"mars": chain(scale_by_mars(...), add_decayed_weights(weight_decay),
      scale_by_learning_rate(learning_rate)), "adamw": adamw(...)}, mars_labels)``, or the first
      chain alone with ``optimize_1d=True``.

    References:
      Yuan, Liu, Wu, Zhou & Gu, "MARS: Unleashing the Power of Variance Reduction for Training
      Large Models", ICML 2025, https://arxiv.org/abs/2411.10438
    """
    batch_dims = structural(batch_dims, "batch_dims", 0)
    check_learning_rate(learning_rate)
    check_non_negative(weight_decay, "weight_decay")
    matrices = chain(
        scale_by_mars(
            b1, b2, eps, gamma, batch_dims=batch_dims, mu_dtype=mu_dtype, nu_dtype=nu_dtype
        ),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )
    if optimize_1d:
        return matrices
    rest = adamw(
        learning_rate if learning_rate_1d is None else learning_rate_1d,
        b1_1d,
        b2_1d,
        eps,
        weight_decay=weight_decay_1d,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
    return partition(
        {"mars": matrices, "adamw": rest},
        lambda params: mars_labels(params, batch_dims=batch_dims),
    )
