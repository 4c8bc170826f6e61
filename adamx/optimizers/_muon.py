"""Muon: momentum orthogonalised by a Newton-Schulz iteration, with AdamW for non-matrix leaves."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ..blocks._collectives import AxisName, axis_size
from ..blocks._moments import bias_correction, ema, nesterov_ema
from ..blocks._orthogonal import (
    KELLER,
    matrix_shape,
    orthogonalize,
)
from ..blocks._scale import scale_by_learning_rate
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import EmptyState, GradientTransformation, ScalarOrSchedule
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._dtypes import as_hyperparameter, compute_dtype
from ..core._layers import BatchDimsTree as BatchDims
from ..core._layers import map_with_batch_dims
from ..core._structural import either, structural
from ..core._trees import check_not_flat
from ..core._validate import check_decay, check_learning_rate, check_non_negative
from ..toolkit._groups import partition
from ._adam import adamw

__all__ = ["is_embedding_or_head", "muon", "muon_labels", "scale_by_muon", "scale_by_shape"]

AdjustLr = Literal["original", "match_rms_adamw"] | None
_ADJUST_LR = ("original", "match_rms_adamw", None)

# Keys (lower-cased, whole) that name an output layer; any key containing "embed" is an embedding.
_HEAD_NAMES = frozenset({"head", "lm_head", "classifier", "logits", "wte", "wpe"})


def _shape_factor(
    shape: tuple[int, ...],
    batch_dims: int = 0,
    adjust_lr: AdjustLr = "original",
    target_rms: float = 0.2,
) -> float:
    r"""The shape-dependent learning-rate factor of a Muon matrix (a Python float).

    ``"original"`` (Keller Jordan's rule, optax's default): :math:`\sqrt{\max(1, n_{out}/n_{in})}`;
    ``"match_rms_adamw"`` (Liu et al. 2025, torch's name; optax's ``consistent_rms``):
    :math:`r \sqrt{\max(n_{in}, n_{out})}`; ``None``: 1. :math:`n_{in}` is the product of the
    non-batch axes but the last, :math:`n_{out}` the last axis (Flax's ``(in, out)`` kernels;
    Keller's torch ``(out, in)`` weights give the same factor for the same layer).
    """
    if adjust_lr is None:
        return 1.0
    fan_in, fan_out = matrix_shape(tuple(shape), batch_dims)
    if fan_in == 0 or fan_out == 0:
        return 1.0  # an empty matrix: no entry to scale
    if adjust_lr == "original":
        return math.sqrt(max(1.0, fan_out / fan_in))
    return float(target_rms) * math.sqrt(max(fan_in, fan_out))


def scale_by_shape(
    adjust_lr: AdjustLr = "original",
    *,
    target_rms: float = 0.2,
    batch_dims: BatchDims = 0,
    axis_name: AxisName = None,
) -> GradientTransformation:
    r"""Multiply each matrix leaf by its shape-dependent learning-rate factor; keeps no state.

    Args:
      adjust_lr: ``"original"`` (Keller, optax), ``"match_rms_adamw"`` (Moonshot) or ``None``.
      target_rms: :math:`r` of ``"match_rms_adamw"`` (0.2 makes the update RMS AdamW's).
      batch_dims: as in `orthogonalize`.
      axis_name: inside ``jax.shard_map``, the mesh axis every leaf is split over along its
        first non-batch axis: the factor is the whole matrix's. ``None`` (default) otherwise.

    Returns:
      A `GradientTransformation` with state `EmptyState`.
    """
    if adjust_lr not in _ADJUST_LR:
        raise ValueError(
            f"`adjust_lr` must be 'original' (Keller Jordan's sqrt(max(1, fan_out/fan_in))), "
            f"'match_rms_adamw' (Moonshot's target_rms * sqrt(max(fan_in, fan_out))) or None, "
            f"got {adjust_lr!r}."
        )
    check_non_negative(target_rms, "target_rms")

    def init_fn(params):
        if adjust_lr is not None:
            check_not_flat(params, "scale_by_shape", "its factor comes from each parameter's shape")
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def one(u, n):
            cdt = compute_dtype(u.dtype)
            shape = list(u.shape)
            if axis_name is not None and len(shape) > n:
                shape[n] *= axis_size(axis_name)  # the whole matrix's shape
            factor = _shape_factor(tuple(shape), n, adjust_lr, target_rms)
            return (u.astype(cdt) * as_hyperparameter(factor, cdt)).astype(u.dtype)

        return map_with_batch_dims(one, updates, batch_dims), state

    return GradientTransformation(init_fn, update_fn)


def scale_by_muon(
    *,
    beta: float = 0.95,
    steps: int | None = None,
    coefficients: tuple[float, float, float] | None = None,
    ns_steps: int | None = None,
    ns_coeffs: tuple[float, float, float] | None = None,
    eps: float = 1e-7,
    nesterov: bool = True,
    debias: bool = False,
    adjust_lr: AdjustLr = "original",
    target_rms: float = 0.2,
    batch_dims: BatchDims | None = None,
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
    ns_dtype: Any = None,
    mu_dtype: Any = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    r"""Muon's direction for matrix leaves: the orthogonalised (Nesterov) momentum, scaled by shape.

    The chain ``ema(beta)``, ``nesterov_ema(beta)`` (or ``bias_correction(beta, nesterov)`` with
    ``debias=True``, or nothing without Nesterov), ``orthogonalize(...)``, ``scale_by_shape(...)``.
    Every leaf must be a matrix (or a batch of them, see ``batch_dims``); `muon` routes the others
    to AdamW. See `muon` for the update and the arguments (``axis_name``: `newton_schulz`).

    Returns:
      A `GradientTransformation`; its state is ``(EmaState(mu), EmptyState() or
      BiasCorrectionState(count), EmptyState(), EmptyState())`` (no middle entry without Nesterov
      and ``debias``).
    """
    batch_dims = structural(batch_dims, "batch_dims", 0)
    steps = either("steps", steps, "ns_steps", ns_steps, 5)
    coefficients = either("coefficients", coefficients, "ns_coeffs", ns_coeffs, KELLER)
    check_decay(beta, "beta")
    momentum: list[GradientTransformation] = [ema(beta, dtype=mu_dtype)]
    if debias:
        momentum.append(bias_correction(beta, nesterov=nesterov))
    elif nesterov:
        momentum.append(nesterov_ema(beta))
    return chain(
        *momentum,
        orthogonalize(
            steps,
            coefficients,
            eps=eps,
            batch_dims=batch_dims,
            precision=precision,
            ns_dtype=ns_dtype,
            axis_name=axis_name,
        ),  # fmt: skip
        scale_by_shape(
            adjust_lr, target_rms=target_rms, batch_dims=batch_dims, axis_name=axis_name
        ),
    )


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def is_embedding_or_head(path: tuple[str, ...]) -> bool:
    """The default exclusion of `muon_labels`: a key containing ``"embed"`` or named a head.

    ``path`` is the leaf's key path as strings (``("Embed_0", "embedding")``). Head names, matched
    whole and case-insensitively: ``head``, ``lm_head``, ``classifier``, ``logits``, ``wte``,
    ``wpe``. Substrings of other names do not count (``MultiHeadDotProductAttention_0`` is not a
    head).
    """
    keys = [key.lower() for key in path]
    return any("embed" in key or key in _HEAD_NAMES for key in keys)


def muon_labels(
    params: Any,
    *,
    batch_dims: BatchDims = 0,
    exclude: Callable[[tuple[str, ...]], bool] = is_embedding_or_head,
) -> Any:
    """Which leaves Muon updates: a tree like ``params`` of ``"muon"`` and ``"adam"``.

    The rule: a leaf is ``"muon"`` when it has exactly two axes after its ``batch_dims`` batch
    axes (a matrix, or a stack of them) and ``exclude(path)`` is False (by default: not an
    embedding or output head, `is_embedding_or_head`); every other leaf (biases, norm scales,
    embeddings, heads, conv kernels) is ``"adam"``. Keller Jordan's advice is the same: Muon for
    hidden matrices only. optax's ``contrib.muon`` sends every 2-D leaf to Muon, embeddings and
    heads included: ``exclude=lambda path: False`` gives that. Conv kernels may be sent to Muon
    by a label function of your own (they are flattened to ``(kh*kw*in, out)``).

    Args:
      params: the parameters (or anything with their structure and shapes).
      batch_dims: an int, a function ``leaf -> int`` or a tree of ints (as in `orthogonalize`).
      exclude: a function of the key path (a tuple of strings) returning True for matrices that
        must stay with AdamW.

    Returns:
      A pytree of ``"muon"``/``"adam"`` strings with the structure of ``params``.
    """

    dims = map_with_batch_dims(lambda leaf, n: n, params, batch_dims)

    def one(path, leaf, n):
        matrix = jnp.ndim(leaf) - n == 2
        return "muon" if matrix and not exclude(tuple(_key_name(k) for k in path)) else "adam"

    return jax.tree_util.tree_map_with_path(one, params, dims)


@descent_example(
    "muon(learning_rate=0.1)",
    "15.1170 14.0922 13.1564",
    params='{"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([1.0, -1.0])}',
    loss='jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)',
)
def muon(
    learning_rate: ScalarOrSchedule,
    *,
    beta: float = 0.95,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    steps: int | None = None,
    coefficients: tuple[float, float, float] | None = None,
    ns_steps: int | None = None,
    ns_coeffs: tuple[float, float, float] | None = None,
    weight_decay_mask: Any = None,
    eps: float = 1e-7,
    nesterov: bool = True,
    debias: bool = False,
    adjust_lr: AdjustLr = "original",
    target_rms: float = 0.2,
    batch_dims: BatchDims | None = None,
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
    ns_dtype: Any = None,
    mu_dtype: Any = None,
    labels: Any = None,
    adam_learning_rate: ScalarOrSchedule | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.95,
    adam_eps: float = 1e-10,
    adam_weight_decay: ScalarOrSchedule = 0.0,
    adam_nesterov: bool = False,
    axis_name: AxisName = None,
) -> GradientTransformation:
    r"""Muon (Jordan et al., 2024): orthogonalised momentum for hidden matrices, AdamW for the rest.

    For each matrix :math:`W \in \mathbb{R}^{n_{in} \times n_{out}}` (labelled ``"muon"``):

    .. math::
        B_t &= \beta B_{t-1} + (1 - \beta)\, G_t, \qquad
        U_t = \beta B_t + (1 - \beta)\, G_t \ \ (\text{or } B_t \text{ without Nesterov}), \\
        W_t &= W_{t-1} - \eta_t \left( s\, \operatorname{NS}_n(U_t) + \lambda W_{t-1} \right),
        \qquad s = \sqrt{\max(1, n_{out} / n_{in})},

    with :math:`B_0 = 0` and :math:`\operatorname{NS}_n` the quintic `newton_schulz` iteration
    (``steps`` :math:`= n = 5`, Keller's coefficients, :math:`\epsilon` on the Frobenius norm).
    Every other leaf (labelled ``"adam"``) is updated by `adamw` with ``adam_*`` arguments.

    Where references disagree adamx follows the authors' code (KellerJordan/Muon ``muon.py``):

    * momentum: an uncorrected EMA with the look-ahead :math:`\beta B_t + (1-\beta) G_t`. optax
      bias-corrects it and uses Dozat's look-ahead (`bias_correction` with ``nesterov``):
      ``debias=True, eps=1e-8`` gives optax's ``contrib.muon``. Without Nesterov the two differ
      only through :math:`\epsilon` (the iteration is scale-invariant).
    * shape factor :math:`s`: Keller's rule, also optax's default (``adjust_lr="original"``);
      ``adjust_lr="match_rms_adamw"`` is Moonshot's :math:`0.2\sqrt{\max(n_{in}, n_{out})}`
      (optax ``consistent_rms=0.2``, torch ``adjust_lr_fn="match_rms_adamw"``).
    * weight decay: decoupled and multiplied by the unadjusted :math:`\eta_t` (all three agree);
      the default ``weight_decay=0`` is Keller's and optax's (torch: 0.1).
    * the AdamW branch: Keller's ``MuonWithAuxAdam`` defaults :math:`(\beta_1, \beta_2) = (0.9,
      0.95)`, :math:`\epsilon = 10^{-10}`, no decay, no Nesterov; optax uses ``b2=0.999``, its
      Muon ``eps`` (``1e-8``) and ``nesterov=True`` (``adam_b2=0.999, adam_eps=1e-8,
      adam_nesterov=True``). Its learning rate is ``adam_learning_rate``, by default
      ``learning_rate`` (optax's); Keller's default is ``3e-4`` beside Muon's ``0.02``.
    * routing: `muon_labels` (hidden matrices only, as Keller advises); optax sends every 2-D
      leaf to Muon.
    * precision: the iteration runs in at least float32 with ``HIGHEST`` matmul precision;
      Keller's and torch's run it in bfloat16 (``ns_dtype=jnp.bfloat16``).

    Weights use Flax's ``(in, out)`` layout (as optax): the last axis is the output. Keller's
    torch ``(out, in)`` weight is the transpose, and the iteration commutes with transposition, so
    the same layer gets the same update.

    Reference: matches a NumPy transcription of KellerJordan/Muon ``muon.py`` (in float64) and
    ``optax.contrib.muon`` (0.2.8, with ``debias=True`` and optax's AdamW settings) step for step
    (``tests/test_muon.py``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule (Keller: 0.02).
      beta: :math:`\beta`, the momentum, in ``[0, 1)``.
      weight_decay: :math:`\lambda >= 0` for the Muon matrices, or a schedule.
      mask: which Muon matrices to decay: a function ``params -> booleans`` (it sees only the
        Muon leaves); ``None`` decays all.
      steps: :math:`n`, Newton-Schulz iterations (default 5); ``ns_steps`` is optax's name for
        it. An integer array (``inject_hyperparams``) is taken too: the loop is then a
        ``fori_loop``, as in optax.
      coefficients: :math:`(a, b, c)` of the iteration (default Keller's); ``ns_coeffs`` is
        optax's name for it.
      ns_steps, ns_coeffs, weight_decay_mask: optax's names for ``steps``, ``coefficients`` and
        ``mask`` (pass one name of each pair). Every argument after ``learning_rate`` is
        keyword-only: optax's positional order differs (``ns_coeffs, ns_steps, beta, ...``).
      eps: :math:`\epsilon` of the iteration (Keller ``1e-7``, optax ``1e-8``).
      nesterov: use the look-ahead :math:`U_t` (default, as Keller).
      debias: bias-correct the momentum, with Dozat's look-ahead (optax's form).
      adjust_lr: the shape factor: ``"original"``, ``"match_rms_adamw"`` or ``None`` (1).
      target_rms: the 0.2 of ``"match_rms_adamw"``.
      batch_dims: leading batch axes of each leaf: an int, a function ``leaf -> int`` or a tree
        of ints (a prefix of the params, as in `orthogonalize`); a stacked ``(layers, rows,
        cols)`` leaf with ``batch_dims=1`` is ``layers`` matrices.
      precision: ``jax.lax`` precision of the iteration's matmuls (default ``HIGHEST``).
      ns_dtype: dtype of the iteration (default: at least float32).
      mu_dtype: dtype of :math:`B` (default: the parameter's).
      labels: a tree of ``"muon"``/``"adam"`` like the params, or a function ``params ->``
        such a tree; ``None`` is ``muon_labels(params, batch_dims=batch_dims)``.
      adam_learning_rate: the AdamW branch's learning rate (``None``: ``learning_rate``).
      adam_b1, adam_b2, adam_eps, adam_weight_decay, adam_nesterov: the AdamW branch's
        :math:`\beta_1, \beta_2, \epsilon, \lambda` and Nesterov switch.
      axis_name: inside ``jax.shard_map``, the mesh axis the Muon matrices are split over along
        their first non-batch axis (see `newton_schulz`); the AdamW branch is elementwise and
        needs none. ``None`` (default) under ``jit``.

    Returns:
      ``partition({"muon": chain(scale_by_muon(...), add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate)), "adam": adamw(...)}, labels)``.

    References:
      Jordan, Jin, Boza, You, Cesista, Newhouse & Bernstein, "Muon: An optimizer for hidden
      layers in neural networks", 2024, https://kellerjordan.github.io/posts/muon/

      Liu et al., "Muon is Scalable for LLM Training", 2025, https://arxiv.org/abs/2502.16982
    """
    batch_dims = structural(batch_dims, "batch_dims", 0)
    steps = either("steps", steps, "ns_steps", ns_steps, 5)
    coefficients = either("coefficients", coefficients, "ns_coeffs", ns_coeffs, KELLER)
    mask = either("mask", mask, "weight_decay_mask", weight_decay_mask, None)
    check_learning_rate(learning_rate)
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    check_learning_rate(adam_learning_rate, "adam_learning_rate")
    matrices = chain(
        scale_by_muon(
            beta=beta,
            steps=steps,
            coefficients=coefficients,
            eps=eps,
            nesterov=nesterov,
            debias=debias,
            adjust_lr=adjust_lr,
            target_rms=target_rms,
            batch_dims=batch_dims,
            precision=precision,
            ns_dtype=ns_dtype,
            mu_dtype=mu_dtype,
            axis_name=axis_name,
        ),  # fmt: skip
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
    others = adamw(
        adam_learning_rate, adam_b1, adam_b2, adam_eps, mu_dtype=mu_dtype,
        weight_decay=adam_weight_decay, nesterov=adam_nesterov,
    )  # fmt: skip

    def default_labels(params: Any) -> Any:
        return muon_labels(params, batch_dims=batch_dims)

    return partition(
        {"muon": matrices, "adam": others}, default_labels if labels is None else labels
    )
