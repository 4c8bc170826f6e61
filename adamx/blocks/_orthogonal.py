"""Orthogonalisation: Newton-Schulz iterations towards the nearest semi-orthogonal matrix (Muon's core)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from ..core._base import EmptyState, GradientTransformation
from ..core._dtypes import as_hyperparameter, compute_dtype
from ..core._layers import BatchDimsTree as BatchDims
from ..core._layers import batch_count, map_with_batch_dims
from ..core._structural import check_count, structural
from ..core._trees import check_not_flat
from ..core._validate import check_dtype, check_non_negative
from ._collectives import AxisName

__all__ = ["newton_schulz", "orthogonalize"]

# Keller Jordan's quintic coefficients (a, b, c): the largest slope at 0 (KellerJordan/Muon).
KELLER = (3.4445, -4.7750, 2.0315)


def matrix_shape(shape: tuple[int, ...], batch_dims: int) -> tuple[int, int]:
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
    coefficients: tuple[float, float, float] = KELLER,
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
    batch_dims = batch_count(batch_dims, x)
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
    rows, cols = matrix_shape(x.shape, batch_dims)
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
    coefficients: tuple[float, float, float] = KELLER,
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
        map_with_batch_dims(lambda p, n: matrix_shape(jnp.shape(p), n), params, batch_dims)
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def one(u, n):
            return newton_schulz(
                u, steps, coefficients, eps=eps, batch_dims=n, precision=precision,
                dtype=ns_dtype, axis_name=axis_name,
            )  # fmt: skip

        return map_with_batch_dims(one, updates, batch_dims), state

    return GradientTransformation(init_fn, update_fn)
