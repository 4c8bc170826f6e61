"""RAdam: Adam whose adaptive step is rectified by the variance of its learning rate."""

from __future__ import annotations

from typing import Any

from ..blocks._moments import bias_correction, ema
from ..blocks._rectification import (
    rectification,
    root_bias_correction,
)
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import scale_by_second_moment
from ..blocks._weight_decay import optional_decay
from ..core._base import (
    GradientTransformation,
    MomentTransformation,
    ScalarOrSchedule,
)
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._validate import check_decay

__all__ = ["radam", "scale_by_radam"]


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    threshold: float = 5.0,
    inclusive: bool = False,
    fallback: str = "sgd",
    eps_before_correction: bool = True,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""RAdam's direction: the rectified Adam step, or the corrected momentum in early steps.

    The chain ``ema(b1)``, ``bias_correction(b1)``, ``rectification(A, b2)`` where the adaptive
    block :math:`A` is ``chain(scale_by_second_moment(b2, bias_correction=False),
    root_bias_correction(b2))`` (``eps_before_correction=True``, torch's) or
    ``scale_by_second_moment(b2)`` (``False``, optax's). See `radam` for the update and arguments.

    Returns:
      A `MomentTransformation`; its state is ``(EmaState(mu), BiasCorrectionState(count),
      RectificationState(count, adaptive))``, ``adaptive`` holding :math:`v` in an `EmaState`.
    """
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    if eps_before_correction:
        adaptive = chain(
            scale_by_second_moment(
                b2, eps=eps, eps_root=eps_root, bias_correction=False, nu_dtype=nu_dtype
            ),
            root_bias_correction(b2),
        )
    else:
        adaptive = scale_by_second_moment(b2, eps=eps, eps_root=eps_root, nu_dtype=nu_dtype)
    return chain(
        ema(b1, dtype=mu_dtype),
        bias_correction(b1),
        rectification(adaptive, b2, threshold=threshold, inclusive=inclusive, fallback=fallback),
    )


@descent_example("radam(learning_rate=0.1)", "3.2000 1.9285 1.0686 0.5211 0.2033 0.2007 0.1977")
def radam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    threshold: float = 5.0,
    inclusive: bool = False,
    fallback: str = "sgd",
    eps_before_correction: bool = True,
    weight_decay: ScalarOrSchedule | None = None,
    mask: Any = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""RAdam (Liu et al., 2019): Adam with its adaptive step rectified, as ``torch.optim.RAdam``.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2, \\
        \hat m_t &= \frac{m_t}{1 - \beta_1^t}, &
        \rho_t &= \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t}, \quad
        \rho_\infty = \frac{2}{1 - \beta_2} - 1, \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\, \rho_\infty}
        {(\rho_\infty - 4)(\rho_\infty - 2)\, \rho_t}}, &
        u_t &= \begin{cases} r_t\, \dfrac{\sqrt{1 - \beta_2^t}\, \hat m_t}
        {\sqrt{v_t + \epsilon_{root}} + \epsilon} & \rho_t > \tau \\
        \hat m_t & \text{otherwise,} \end{cases} \\
        \theta_t &= \theta_{t-1} - \eta_t\, (u_t + \lambda\, \theta_{t-1})

    with :math:`m_0 = v_0 = 0`, :math:`\tau` = ``threshold``. For :math:`\beta_2 = 0.999`,
    :math:`\rho_1, \ldots, \rho_6 = 1, 1.9995, 2.9987, 3.9975, 4.996, 5.994`: steps 1 to 5 are SGD with
    corrected momentum (the first is :math:`-\eta g_1`) and :math:`r_t \to 1` as :math:`t \to
    \infty`.

    The references disagree in three places; the defaults are torch's, each has an option:

    * the test: torch :math:`\rho_t > 5`; optax and the authors' code :math:`\rho_t \ge 5`
      (``inclusive=True``); the paper's Algorithm 2 :math:`\rho_t > 4` (``threshold=4.0``). For
      :math:`\beta_2 = 0.999` only the paper's differs (at :math:`t = 5`).
    * below the threshold: torch, optax and the paper step along :math:`\hat m_t`; the authors'
      code (``degenerated_to_sgd=False``, its default since 2021) makes no step at all
      (``fallback="none"``), and decays no weights either: give the decay as a schedule that is 0
      for those steps to match it.
    * :math:`\epsilon`: torch and the authors' code add it before the correction of :math:`v`, as
      above (``eps_before_correction=True``); optax adds it after, :math:`r_t \hat m_t /
      (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)` (``False``). The two agree for ``eps=0``.

    ``weight_decay`` is decoupled, :math:`\lambda` times the full learning rate (torch's
    ``decoupled_weight_decay=True``, the authors' code); torch's default ``weight_decay`` is L2:
    ``adamx.chain(adamx.add_decayed_weights(wd), radam(lr))``.

    Reference: matches ``torch.optim.RAdam`` (2.13, with either decay) with the defaults,
    ``optax.radam`` (0.2.8) with ``inclusive=True, eps_before_correction=False``, and NumPy
    transcriptions of the authors' code (``inclusive=True, fallback="none"``) and of the paper
    (``threshold=4.0``, ``eps=0``) step for step (``tests/test_radam.py``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1, b2, eps, eps_root, mu_dtype, nu_dtype: as in `adam`.
      threshold: :math:`\tau >= 4`; rectify when :math:`\rho_t > \tau`.
      inclusive: rectify when :math:`\rho_t \ge \tau` (optax, the authors' code).
      fallback: ``"sgd"`` (step along :math:`\hat m_t`) or ``"none"`` (no step) below the
        threshold.
      eps_before_correction: :math:`\epsilon` before (torch) or after (optax) the correction of
        :math:`v`.
      weight_decay: :math:`\lambda >= 0` (decoupled), or a schedule; ``None`` (the default):
        no decay block in the chain (any value given, 0 included, keeps the block).
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.

    Returns:
      A `GradientTransformation`: ``chain(scale_by_radam(...), [add_decayed_weights(weight_decay,
      mask)], scale_by_learning_rate(lr))``, the decay only when ``weight_decay`` is given.

    References:
      Liu, Jiang, He, Chen, Liu, Gao & Han, "On the Variance of the Adaptive Learning Rate and
      Beyond", ICLR 2020, https://arxiv.org/abs/1908.03265
    """
    return chain(
        scale_by_radam(
            b1,
            b2,
            eps,
            eps_root,
            threshold=threshold,
            inclusive=inclusive,
            fallback=fallback,
            eps_before_correction=eps_before_correction,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        *optional_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
