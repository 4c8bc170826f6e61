"""AMSGrad: Adam with a running maximum of the second moment, in optax's and torch's forms."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..blocks._map import update_moment
from ..blocks._moments import _resolve_storage, bias_correction, ema
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import scale_by_second_moment
from ..core._base import GradientTransformation, MomentTransformation, ScalarOrSchedule
from ..core._chain import chain
from ..core._validate import check_decay
from ..storage._storage import MomentStorage, init_buffers

__all__ = ["RunningMaxState", "amsgrad", "amsgrad_estimator", "running_max", "scale_by_amsgrad"]

_MAX_OF = ("corrected", "raw")


class RunningMaxState(NamedTuple):
    """The state of `running_max`: the largest input seen so far, one buffer per parameter."""

    maximum: Any


def running_max(*, dtype: Any = None, storage: MomentStorage | None = None) -> MomentTransformation:
    r"""The element-wise running maximum of the updates: AMSGrad's estimator block.

    .. math::
        \hat v^{\max}_t = \max(\hat v^{\max}_{t-1}, u_t), \qquad \hat v^{\max}_0 = 0.

    Meant for non-negative inputs (the :math:`|g|^2`-based estimates inside
    `scale_by_second_moment`); the zero start makes the first output :math:`\max(0, u_1)`.

    Args:
      dtype: dtype of the stored maximum; ``None`` keeps each parameter's dtype.
      storage: a `MomentStorage` (instead of ``dtype``).

    Returns:
      A `MomentTransformation` with state `RunningMaxState`.
    """
    storage = _resolve_storage(storage, dtype, "dtype")

    def init_fn(params):
        return RunningMaxState(maximum=init_buffers(storage, params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(u, m):
            return jnp.maximum(m, u)

        maximum, buffers = update_moment(step, updates, state.maximum, storage)
        return maximum, RunningMaxState(buffers)

    return MomentTransformation(init_fn, update_fn)


def amsgrad_estimator(
    b2: float = 0.999, *, max_of: str = "corrected", nu_dtype: Any = None
) -> MomentTransformation:
    """The estimator AMSGrad plugs into `scale_by_second_moment` (see `amsgrad` for ``max_of``).

    ``"corrected"``: ``chain(ema(b2), bias_correction(b2), running_max())`` (optax);
    ``"raw"``: ``chain(ema(b2), running_max(), bias_correction(b2))`` (torch).
    """
    check_decay(b2, "b2")
    if max_of not in _MAX_OF:
        raise ValueError(
            f"`max_of` must be 'corrected' (optax's AMSGrad) or 'raw' (torch's), got {max_of!r}."
        )
    average = ema(b2, dtype=nu_dtype)
    maximum = running_max(dtype=nu_dtype)
    if max_of == "corrected":
        return chain(average, bias_correction(b2), maximum)
    return chain(average, maximum, bias_correction(b2))


def scale_by_amsgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    max_of: str = "corrected",
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""AMSGrad's direction, :math:`\hat m_t / (\sqrt{\hat v^{\max}_t + \epsilon_{root}} + \epsilon)`.

    The chain ``ema(b1)``, ``bias_correction(b1)``, ``scale_by_second_moment(estimator=...)`` with
    the estimator of `amsgrad_estimator`. See `amsgrad` for the update and arguments.

    Returns:
      A `MomentTransformation`; its state is ``(EmaState(mu), BiasCorrectionState(count),
      SecondMomentState(estimator_state))``, the estimator's state being ``(EmaState(nu),
      BiasCorrectionState(count), RunningMaxState(nu_max))`` for ``max_of="corrected"`` and
      ``(EmaState(nu), RunningMaxState(nu_max), BiasCorrectionState(count))`` for ``"raw"``.
    """
    check_decay(b1, "b1")
    return chain(
        ema(b1, dtype=mu_dtype),
        bias_correction(b1),
        scale_by_second_moment(
            eps=eps,
            eps_root=eps_root,
            estimator=amsgrad_estimator(b2, max_of=max_of, nu_dtype=nu_dtype),
        ),
    )


def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    max_of: str = "corrected",
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""AMSGrad (Reddi, Kale & Kumar, 2018): Adam whose denominator never decreases.

    With ``max_of="corrected"`` (the default, optax's form) the maximum is taken over the
    bias-corrected second moment:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2, \\
        \hat v^{\max}_t &= \max\!\left(\hat v^{\max}_{t-1}, \frac{v_t}{1 - \beta_2^t}\right), &
        \theta_t &= \theta_{t-1} - \eta_t\, \frac{m_t / (1 - \beta_1^t)}
        {\sqrt{\hat v^{\max}_t + \epsilon_{root}} + \epsilon}.

    With ``max_of="raw"`` (torch's ``Adam(amsgrad=True)``) the maximum is over the raw :math:`v`
    and the result is divided by the *current* correction:
    :math:`\hat v^{\max}_t = \max(v^{\max}_{t-1}, v_t) / (1 - \beta_2^t)`. Since :math:`1/(1 -
    \beta_2^t)` decreases with :math:`t`, the two differ whenever an early large :math:`v` is the
    maximum (after a gradient spike in the first few hundred steps); they agree at :math:`t = 1`.
    The paper's own algorithm has neither bias correction nor :math:`\epsilon`. Both forms are the
    same chain with the blocks of the estimator reordered (`amsgrad_estimator`).

    Reference: ``max_of="corrected"`` matches ``optax.amsgrad`` (0.2.8) and ``max_of="raw"`` matches
    ``torch.optim.Adam(amsgrad=True)`` (2.13) step for step (``tests/test_amsgrad.py``). torch's
    ``weight_decay`` is L2: ``adamx.chain(adamx.add_decayed_weights(wd), amsgrad(lr, max_of="raw"))``;
    ``torch.optim.AdamW(amsgrad=True)`` is ``chain(scale_by_amsgrad(max_of="raw"),
    add_decayed_weights(wd), scale_by_learning_rate(lr))``.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1, b2, eps, eps_root, mu_dtype: as in `adam`.
      max_of: ``"corrected"`` (optax) or ``"raw"`` (torch): which second moment the maximum is over.
      nu_dtype: dtype of :math:`v` and of its maximum (default: the parameter's real dtype).

    Returns:
      A `GradientTransformation`: ``chain(scale_by_amsgrad(...), scale_by_learning_rate(lr))``.

    References:
      Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018,
      https://openreview.net/forum?id=ryQu7f-RZ
    """
    return chain(
        scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype, max_of=max_of, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )
