"""Muon: momentum orthogonalised by a Newton-Schulz iteration, with AdamW for non-matrix leaves."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._adam import adamw
from ._base import EmptyState, GradientTransformation, MomentTransformation, ScalarOrSchedule
from ._chain import chain
from ._clipping import AxisName, axis_size
from ._dtypes import as_hyperparameter, compute_dtype
from ._flat import check_not_flat
from ._groups import partition
from ._moments import _complement, bias_correction, ema, require_gradient
from ._scale import scale_by_learning_rate
from ._structural import check_count, either, structural
from ._validate import check_decay, check_dtype, check_learning_rate, check_non_negative
from ._weight_decay import add_decayed_weights

# Keller Jordan's quintic coefficients (a, b, c): the largest slope at 0 (KellerJordan/Muon).
_KELLER = (3.4445, -4.7750, 2.0315)

BatchDims = int | Callable[[Any], int] | Any  # or a tree of ints (a prefix of the params)
AdjustLr = Literal["original", "match_rms_adamw"] | None
_ADJUST_LR = ("original", "match_rms_adamw", None)

# Keys (lower-cased, whole) that name an output layer; any key containing "embed" is an embedding.
_HEAD_NAMES = frozenset({"head", "lm_head", "classifier", "logits", "wte", "wpe"})


def _check_batch_dims(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(
            f"`batch_dims` must be an int >= 0, a function `leaf -> int` or a tree of ints like the "
            f"params (or a prefix of them), got {value!r}{where}; a stacked (layers, rows, cols) "
            "leaf from `nn.scan` has `batch_dims=1`."
        )
    return value


def _map_with_batch_dims(fn: Callable[[Any, int], Any], tree: Any, batch_dims: Any) -> Any:
    """``fn(leaf, batch_dims_of_leaf)`` for every leaf of ``tree``.

    ``batch_dims`` is an int, a function ``leaf -> int``, or a tree of ints that is a prefix of
    ``tree`` (a leaf an outer `masked` replaced by a `MaskedNode` is skipped).
    """
    if isinstance(batch_dims, int) and not isinstance(batch_dims, bool):
        number = _check_batch_dims(batch_dims, "")
        return jax.tree.map(lambda leaf: fn(leaf, number), tree)
    if callable(batch_dims):

        def one(leaf: Any) -> Any:
            where = f" from the `batch_dims` function for a leaf of shape {jnp.shape(leaf)}"
            return fn(leaf, _check_batch_dims(batch_dims(leaf), where))

        return jax.tree.map(one, tree)

    def subtree(number: Any, sub: Any) -> Any:
        number = _check_batch_dims(number, " in the `batch_dims` tree")
        return jax.tree.map(lambda leaf: fn(leaf, number), sub)

    try:
        return jax.tree.map(subtree, batch_dims, tree)
    except ValueError as cause:
        raise ValueError(
            f"The `batch_dims` tree must have the structure of the params or a prefix of it, "
            f"got structure {jax.tree.structure(batch_dims)} for params with structure "
            f"{jax.tree.structure(tree)}; e.g. `{{'layers': 1, 'head': 0}}` for top-level keys "
            "'layers' and 'head', or pass a function `leaf -> int`."
        ) from cause


def _matrix_shape(shape: tuple[int, ...], batch_dims: int) -> tuple[int, int]:
    """``(rows, cols)`` = ``(fan_in, fan_out)`` of the matrices in a leaf: all non-batch axes but the
    last flattened into rows (a Flax conv kernel ``(kh, kw, in, out)`` is ``(kh*kw*in, out)``)."""
    if len(shape) < batch_dims + 2:
        raise ValueError(
            f"Muon orthogonalises matrices: a leaf needs at least 2 axes after its {batch_dims} "
            f"batch axes, got shape {shape}. Route vectors and scalars to AdamW (`muon` does so "
            "by `muon_labels`), or set `batch_dims` for stacked leaves."
        )
    return math.prod(shape[batch_dims:-1]), shape[-1]


def _adjoint(x: jax.Array) -> jax.Array:
    x = jnp.swapaxes(x, -1, -2)
    return jnp.conj(x) if jnp.iscomplexobj(x) else x


def newton_schulz(
    x: jax.typing.ArrayLike,
    steps: int = 5,
    coefficients: tuple[float, float, float] = _KELLER,
    *,
    eps: float = 1e-7,
    batch_dims: int = 0,
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
    dtype: Any = None,
    axis_name: AxisName = None,
) -> jax.Array:
    r"""Orthogonalise a matrix (or a batch of them) by the quintic Newton-Schulz iteration.

    .. math::
        X_0 = \frac{G}{\|G\|_F + \epsilon}, \qquad
        A_k = X_k X_k^{\mathsf H}, \qquad
        X_{k+1} = a X_k + (b A_k + c A_k^2)\, X_k, \qquad k = 0, \ldots, n - 1,

    computed on the wide orientation (:math:`G^{\mathsf H}` when :math:`G` has more rows than
    columns, transposed back after), so :math:`A_k` is the smaller Gram matrix. For
    :math:`G = U S V^{\mathsf H}` the result is :math:`U S' V^{\mathsf H}` with :math:`S' \approx 1`:
    Keller Jordan's coefficients :math:`(a, b, c) = (3.4445, -4.7750, 2.0315)` maximise the slope
    at 0 rather than converge: the output's singular values are :math:`p^n(\sigma_i/(\|G\|_F +
    \epsilon))` with :math:`p(x) = ax + bx^3 + cx^5`, never above :math:`\max_{[0,1]} p = 1.2023`,
    and after 5 steps in about :math:`[0.68, 1.13]` for a rectangular Gaussian matrix (not exactly
    1; a singular value below about :math:`10^{-3} \|G\|_F` is not lifted that far). A zero
    matrix gives zeros.

    Precision: the matmuls run with ``precision`` (default ``HIGHEST``): on TPU the default
    precision of a float32 matmul is one bfloat16 pass, which degrades the iteration. ``dtype``
    chooses the arithmetic: the default is at least float32 (the input's if wider); Keller's and
    torch's code use ``jnp.bfloat16``.

    Reference: ``zeropower_via_newtonschulz5`` of KellerJordan/Muon (there in bfloat16) and
    ``optax.contrib.orthogonalize_via_newton_schulz`` (0.2.8, ``eps=1e-8``).

    Args:
      x: an array with ``batch_dims`` leading batch axes and then at least two axes; the last is
        the columns (fan-out), all others are flattened into the rows (fan-in).
      steps: :math:`n`, the number of iterations (Keller: 5).
      coefficients: :math:`(a, b, c)`.
      eps: :math:`\epsilon`, added to the Frobenius norm (Keller: ``1e-7``, optax: ``1e-8``).
      batch_dims: how many leading axes index independent matrices.
      precision: the ``jax.lax`` precision of the matmuls.
      dtype: the dtype of the iteration; ``None``: at least float32.
      axis_name: inside ``jax.shard_map``, the mesh axis ``x`` is split over along its first
        non-batch axis (blocks of rows). The blocks are gathered (``jax.lax.all_gather``), each
        device iterates on the whole matrix, and keeps its own block of the result: the numbers
        are those of the unsharded matrix. ``None`` (default) under ``jit``, where XLA inserts
        the collectives of the matmuls itself.

    Returns:
      :math:`X_n`, with the shape and dtype of ``x``.
    """
    x = jnp.asarray(x)
    _check_batch_dims(batch_dims, "")
    if axis_name is not None:
        if x.ndim <= batch_dims:
            raise ValueError(
                f"With `axis_name` the matrix is split along its first non-batch axis, but shape "
                f"{x.shape} with {batch_dims} batch axes has none; drop `axis_name` for this leaf."
            )
        whole = jax.lax.all_gather(x, axis_name, axis=batch_dims, tiled=True)
        result = newton_schulz(
            whole, steps, coefficients, eps=eps, batch_dims=batch_dims, precision=precision,
            dtype=dtype,
        )  # fmt: skip
        block = x.shape[batch_dims]
        start = jax.lax.axis_index(axis_name) * block
        return jax.lax.dynamic_slice_in_dim(result, start, block, axis=batch_dims)
    rows, cols = _matrix_shape(x.shape, batch_dims)
    work = compute_dtype(x.dtype) if dtype is None else jnp.dtype(dtype)
    m = x.reshape(x.shape[:batch_dims] + (rows, cols)).astype(work)
    tall = rows > cols
    if tall:
        m = _adjoint(m)
    norm = jnp.linalg.norm(m, axis=(-2, -1), keepdims=True)
    denominator = norm + as_hyperparameter(eps, norm.dtype)
    # With eps = 0 a zero matrix would give 0/0; it stays zero instead.
    denominator = jnp.where(denominator > 0, denominator, jnp.ones((), norm.dtype))
    m = m / denominator.astype(work)
    a, b, c = (as_hyperparameter(k, work) for k in coefficients)

    def iteration(m):
        gram = jnp.matmul(m, _adjoint(m), precision=precision)
        poly = b * gram + c * jnp.matmul(gram, gram, precision=precision)
        return a * m + jnp.matmul(poly, m, precision=precision)

    if isinstance(steps, int):
        for _ in range(steps):
            m = iteration(m)
    else:  # an array count (traced under `jit` after `inject_hyperparams`), as optax's muon
        m = jax.lax.fori_loop(0, steps, lambda _, m: iteration(m), m)
    if tall:
        m = _adjoint(m)
    return m.reshape(x.shape).astype(x.dtype)


def _check_newton_schulz(steps: Any, coefficients: Any, eps: Any, dtype: Any) -> None:
    # An integer array (`inject_hyperparams` makes one) runs the iteration as a `fori_loop`.
    check_count(steps, "steps", 1, "the number of Newton-Schulz iterations (Keller Jordan's: 5)")
    if len(tuple(coefficients)) != 3:
        raise ValueError(
            f"`coefficients` must be the three numbers (a, b, c) of the quintic iteration, got "
            f"{coefficients!r}; Keller Jordan's are (3.4445, -4.7750, 2.0315)."
        )
    check_non_negative(eps, "eps")
    check_dtype(dtype, "ns_dtype")


def orthogonalize(
    steps: int = 5,
    coefficients: tuple[float, float, float] = _KELLER,
    *,
    eps: float = 1e-7,
    batch_dims: BatchDims | None = None,
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
    ns_dtype: Any = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    r"""Replace each update leaf by its `newton_schulz` orthogonalisation; keeps no state.

    Args:
      steps, coefficients, eps, precision: as in `newton_schulz`.
      batch_dims: leading batch axes of each leaf: an int, a function ``leaf -> int`` (e.g.
        ``lambda x: 1 if x.ndim == 3 else 0`` for stacked layers), or a tree of ints with the
        structure of the params or a prefix of it (``{"layers": 1, "head": 0}``: every leaf under
        ``layers``, stacked biases included, has one batch axis).
      ns_dtype: the dtype of the iteration (`newton_schulz`'s ``dtype``).
      axis_name: inside ``jax.shard_map``, the mesh axis every leaf is split over along its
        first non-batch axis (see `newton_schulz`); ``None`` (default) under ``jit``.

    Returns:
      A `GradientTransformation` with state `EmptyState`.
    """
    batch_dims = structural(batch_dims, "batch_dims", 0)
    _check_newton_schulz(steps, coefficients, eps, ns_dtype)
    coefficients = tuple(float(k) for k in coefficients)  # type: ignore[assignment]

    def init_fn(params):
        check_not_flat(params, "orthogonalize", "Muon orthogonalises each parameter as a matrix")
        # Refuse a leaf that is not a matrix now, not at the first update.
        _map_with_batch_dims(lambda p, n: _matrix_shape(jnp.shape(p), n), params, batch_dims)
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def one(u, n):
            return newton_schulz(
                u, steps, coefficients, eps=eps, batch_dims=n, precision=precision,
                dtype=ns_dtype, axis_name=axis_name,
            )  # fmt: skip

        return _map_with_batch_dims(one, updates, batch_dims), state

    return GradientTransformation(init_fn, update_fn)


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
    fan_in, fan_out = _matrix_shape(tuple(shape), batch_dims)
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

        return _map_with_batch_dims(one, updates, batch_dims), state

    return GradientTransformation(init_fn, update_fn)


def nesterov_ema(decay: float) -> MomentTransformation:
    r"""The Nesterov look-ahead of an uncorrected EMA, after `ema`: Keller Jordan's Muon momentum.

    .. math::
        \bar m_t = \beta\, m_t + (1 - \beta)\, g_t

    (``grad.lerp_(momentum, beta)``), with :math:`m_t` the input and :math:`g_t` the gradient of
    this block's run in `adamx.chain`. ``bias_correction(decay, nesterov=True)`` is optax's
    corrected form.

    Returns:
      A `MomentTransformation` with state `EmptyState`.
    """
    check_decay(decay, "decay")

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del params, extra_args
        gradient = require_gradient(gradient, updates, "nesterov_ema")

        def one(m, g):
            cdt = compute_dtype(m.dtype, g.dtype)
            out = as_hyperparameter(decay, cdt) * m.astype(cdt) + as_hyperparameter(
                _complement(decay), cdt
            ) * g.astype(cdt)
            return out.astype(m.dtype)

        return jax.tree.map(one, updates, gradient), state

    return MomentTransformation(init_fn, update_fn)


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
    coefficients = either("coefficients", coefficients, "ns_coeffs", ns_coeffs, _KELLER)
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

    dims = _map_with_batch_dims(lambda leaf, n: n, params, batch_dims)

    def one(path, leaf, n):
        matrix = jnp.ndim(leaf) - n == 2
        return "muon" if matrix and not exclude(tuple(_key_name(k) for k in path)) else "adam"

    return jax.tree_util.tree_map_with_path(one, params, dims)


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

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([1.0, -1.0])}
      >>> loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)
      >>> opt = adamx.muon(learning_rate=0.1)
      >>> state = opt.init(params)
      >>> for _ in range(3):
      ...     grads = jax.grad(loss)(params)
      ...     updates, state = opt.update(grads, state, params)
      ...     params = adamx.apply_updates(params, updates)
      ...     print(f"{loss(params):.4f}")
      15.1170
      14.0922
      13.1564

    References:
      Jordan, Jin, Boza, You, Cesista, Newhouse & Bernstein, "Muon: An optimizer for hidden
      layers in neural networks", 2024, https://kellerjordan.github.io/posts/muon/

      Liu et al., "Muon is Scalable for LLM Training", 2025, https://arxiv.org/abs/2502.16982
    """
    batch_dims = structural(batch_dims, "batch_dims", 0)
    steps = either("steps", steps, "ns_steps", ns_steps, 5)
    coefficients = either("coefficients", coefficients, "ns_coeffs", ns_coeffs, _KELLER)
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
