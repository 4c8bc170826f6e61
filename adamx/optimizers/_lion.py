"""Lion: the sign of an interpolation between the momentum and the gradient."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._map import update_moment
from ..blocks._moments import _complement, _resolve_storage
from ..blocks._scale import scale_by_learning_rate
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import GradientTransformation, ScalarOrSchedule, safe_increment, zero_count
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._validate import check_decay
from ..storage._storage import MomentStorage, init_buffers

__all__ = ["ScaleByLionState", "lion", "scale_by_lion"]


class ScaleByLionState(NamedTuple):
    """The state of `scale_by_lion`: the step count (``int32``) and the momentum :math:`m`, laid out
    as optax's ``ScaleByLionState(count, mu)``."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    mu: Any


def scale_by_lion(
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    *,
    storage: MomentStorage | None = None,
) -> GradientTransformation:
    r"""Lion's direction, :math:`\operatorname{sign}(\beta_1 m_{t-1} + (1 - \beta_1) g_t)`.

    .. math::
        c_t = \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
        u_t = \operatorname{sign}(c_t), \qquad
        m_t = \beta_2 m_{t-1} + (1 - \beta_2)\, g_t,

    with :math:`m_0 = 0` and :math:`\operatorname{sign}(0) = 0`. The momentum is updated *after*
    the step is taken, with the other decay :math:`\beta_2`, so no existing moment block fits and
    this is one block. For complex gradients :math:`\operatorname{sign}(c) = c/|c|`. Same signature
    and numbers as ``optax.scale_by_lion`` (its default ``mode="hard"``). See `lion`.

    Args:
      b1: :math:`\beta_1`, the interpolation weight of the momentum, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of the momentum, in ``[0, 1)``.
      mu_dtype: dtype of :math:`m` (default: the parameter's).
      storage: a `MomentStorage` for :math:`m` (instead of ``mu_dtype``).

    Returns:
      A `GradientTransformation` with state `ScaleByLionState`.
    """
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    storage = _resolve_storage(storage, mu_dtype, "mu_dtype")

    def init_fn(params):
        return ScaleByLionState(count=zero_count(), mu=init_buffers(storage, params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(g, m, b1, c1, b2, c2):  # c = 1 - b
            c = b1 * m + c1 * g
            # sign(inf) = 1 would hide an infinite gradient (m stays inf and the coordinate then
            # moves by lr every step); let it propagate as Adam's does.
            return jnp.where(jnp.isfinite(c), jnp.sign(c), c), b2 * m + c2 * g

        hp = (b1, _complement(b1), b2, _complement(b2))
        new_updates, mu = update_moment(step, updates, state.mu, storage, hyperparameters=hp)
        return new_updates, ScaleByLionState(count=safe_increment(state.count), mu=mu)

    return GradientTransformation(init_fn, update_fn)


@descent_example("lion(learning_rate=0.1, weight_decay=0.0)", "4.4200 3.8800 3.3800")
def lion(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: Any = None,
) -> GradientTransformation:
    r"""Lion (Chen et al., 2023): a sign update with two momentum rates and decoupled weight decay.

    .. math::
        c_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
        \theta_t &= \theta_{t-1} - \eta_t \left( \operatorname{sign}(c_t)
        + \lambda\, \theta_{t-1} \right), \\
        m_t &= \beta_2 m_{t-1} + (1 - \beta_2)\, g_t, & m_0 &= 0.

    Every coordinate with :math:`c_t \ne 0` moves by exactly :math:`\eta_t` (plus the decay), so
    the paper advises a learning rate 3-10x smaller than AdamW's and a decay 3-10x larger (keeping
    :math:`\eta\lambda`). There is no bias correction and no :math:`\epsilon`. A non-finite
    :math:`c_t` is passed on as the update (NaN or Inf, as in `adam`; wrap in `apply_if_finite` to
    skip such steps); optax's :math:`\operatorname{sign}(\infty) = 1` would keep the parameter finite
    while :math:`m` stays infinite and moves that coordinate by :math:`\eta` every step after.

    Defaults follow optax (``weight_decay=1e-3``); the authors' code (google/automl
    ``lion_pytorch.py``) defaults to ``weight_decay=0.0`` (pass it for their optimizer) and
    ``lr=1e-4``. The decay is multiplied by the full learning rate in both (the official
    ``p.mul_(1 - lr * wd)`` before the step).

    Reference: matches ``optax.lion`` (0.2.8) and a NumPy transcription of google/automl's
    ``lion_pytorch.py`` step for step in float64 (``tests/test_lion.py``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, in ``[0, 1)``.
      b2: :math:`\beta_2`, in ``[0, 1)``.
      mu_dtype: dtype of :math:`m` (default: the parameter's); bfloat16 is common for Lion.
      weight_decay: :math:`\lambda >= 0`, or a schedule.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.

    Returns:
      ``chain(scale_by_lion(b1, b2, mu_dtype), add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate))``.

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
      https://arxiv.org/abs/2302.06675
    """
    return chain(
        scale_by_lion(b1, b2, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
