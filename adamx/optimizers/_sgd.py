"""SGD, with heavy-ball or Nesterov momentum, as a chain of the core blocks."""

from __future__ import annotations

from typing import Any

from ..blocks._moments import trace
from ..blocks._scale import scale_by_learning_rate
from ..core._base import GradientTransformation, ScalarOrSchedule, identity
from ..core._chain import chain
from ..core._validate import check_decay

__all__ = ["sgd"]


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    *,
    dampening: float | None = None,
) -> GradientTransformation:
    r"""Stochastic gradient descent (Robbins & Monro, 1951), with optional momentum.

    .. math::
        b_t = \mu\, b_{t-1} + g_t, \qquad
        \theta_t = \theta_{t-1} - \eta_t \cdot
        \begin{cases} g_t & \text{no momentum} \\ b_t & \text{heavy ball (Polyak 1964)} \\
        g_t + \mu\, b_t & \text{Nesterov (Sutskever et al. 2013's form)} \end{cases}

    with :math:`b_0 = 0` and :math:`\eta_t` the learning rate (a schedule is evaluated at
    :math:`t - 1`). The learning rate multiplies the whole buffer (lr outside the buffer), as in
    torch and optax; with a schedule this differs from SGDW's ``m_t = mu m_{t-1} + eta_t g_t``.

    Reference: matches ``optax.sgd`` (0.2.8) and ``torch.optim.SGD`` (2.13) step for step
    (``tests/test_sgd.py``). Where they differ:

    * torch initialises the buffer to :math:`g_1` and skips ``dampening`` on the first step; with
      ``dampening = 0`` (torch's default, and required for Nesterov) that equals the zero-initialised
      trace here. ``dampening`` :math:`\tau` gives torch's damped buffer
      :math:`b_t = \mu b_{t-1} + (1-\tau) g_t` with its undamped first step (optax has no
      dampening).
    * torch's ``weight_decay`` is coupled L2: ``adamx.chain(adamx.add_decayed_weights(wd),
      sgd(lr, momentum))``. Without momentum L2 and decoupled decay coincide.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      momentum: :math:`\mu` in ``[0, 1)``, or ``None`` for plain SGD (no state).
      nesterov: use Nesterov momentum (needs ``momentum``).
      accumulator_dtype: dtype of the momentum buffer (default: the parameter's).
      dampening: torch's dampening :math:`\tau` in ``[0, 1]`` (needs ``momentum``, not Nesterov);
        ``None`` (the default): optax's undamped trace. Given (0 included), the momentum state
        is `DampedTraceState`: the layout follows the arguments given, never their values.

    Returns:
      ``chain(trace(momentum, nesterov=nesterov) or identity(), scale_by_learning_rate(lr))``; the
      state is ``(TraceState(trace) or EmptyState(), EmptyState() or ScaleByScheduleState)``, laid
      out like optax's.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> from adamx import sgd
      >>> opt = sgd(0.1, momentum=0.9)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = opt.init(params)
      >>> updates, state = opt.update(2 * params, state, params)
      >>> print(updates)
      [-0.2  0.4]

    References:
      Robbins & Monro, "A Stochastic Approximation Method", Ann. Math. Statist. 1951.
      Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
      Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and momentum in deep
      learning", ICML 2013.
    """
    if momentum is None:
        if nesterov:
            raise ValueError(
                "`nesterov=True` needs momentum, got `momentum=None`; pass e.g. `momentum=0.9`."
            )
        if dampening is not None:
            raise ValueError(
                f"`dampening={dampening}` needs momentum, got `momentum=None`; pass e.g. "
                "`momentum=0.9`, or drop `dampening`."
            )
        direction = identity()
    else:
        check_decay(momentum, "momentum")
        direction = trace(momentum, nesterov=nesterov, dampening=dampening, dtype=accumulator_dtype)
    return chain(direction, scale_by_learning_rate(learning_rate))
