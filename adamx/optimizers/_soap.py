"""SOAP: Adam run in the slowly refreshed eigenbasis of Shampoo's preconditioner."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._moments import _correction, _resolve_storage
from ..blocks._scale import _evaluate, scale_by_learning_rate
from ..blocks._second_moment import _real_like
from ..blocks._weight_decay import decay_after_update
from ..core._base import GradientTransformation, ScalarOrSchedule, safe_increment, zero_count
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._dtypes import as_hyperparameter, compute_dtype, real_dtype
from ..core._layers import BatchDims, batch_count
from ..core._structural import check_count, structural
from ..core._trees import check_not_flat, map_like
from ..core._validate import check_decay, check_learning_rate, check_non_negative
from ..storage._storage import init_buffers, stored_dtypes

__all__ = ["SoapState", "scale_by_soap", "soap", "soap_labels"]

SOAP, ADAM = "soap", "adam"


class Unrotated(NamedTuple):
    """The statistic and basis of an axis SOAP does not rotate: a pytree node with no leaves.

    Not ``None``, so that the state has ``None`` only where the parameters do (Equinox's filtered
    models), and every tree utility skips it.
    """


class SoapState(NamedTuple):
    """The state of `scale_by_soap`.

    ``count`` is the number of calls (``int32``; the authors' step is ``count - 1``, their first
    call being skipped). Per parameter: ``mu`` and ``nu``, Adam's moments *in the eigenbasis*;
    ``stats``, a tuple with one Shampoo statistic per axis of the matrix (:math:`L`, :math:`R`;
    shape ``batch + (d, d)``, ``Unrotated()`` for an axis that is not rotated); ``bases``, their
    eigenbases :math:`Q` laid out alike.
    """

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    mu: Any
    nu: Any
    stats: Any
    bases: Any


def soap_labels(params: Any, *, batch_dims: BatchDims = 0, precondition_1d: bool = False) -> Any:
    """Which leaves SOAP rotates: a tree like ``params`` of ``"soap"`` and ``"adam"``.

    The rule is the authors' (``nikhilvyas/SOAP``): every leaf with at least two axes besides its
    ``batch_dims`` is ``"soap"`` (each of its axes of length <= ``max_precond_dim`` gets an
    eigenbasis, longer axes, such as a vocabulary, stay in the standard basis); vectors and
    scalars are ``"adam"`` (identity basis: Adam with SOAP's hyperparameters), vectors become
    ``"soap"`` with ``precondition_1d=True``. Unlike Muon's rule, embeddings and output heads are
    rotated too, as in the authors' code. Pass a tree or function of your own to
    ``scale_by_soap(labels=...)`` to override it, or route leaves to another optimizer with
    ``adamx.partition({"soap": soap(...), "adam": adamw(...)}, soap_labels)``.

    Args:
      params: the parameters (arrays or shape-dtype structs).
      batch_dims: leading axes that index a stack of matrices (an int, or a function of the leaf).
      precondition_1d: rotate vectors too (the authors' ``precondition_1d``).

    Returns:
      A tree like ``params`` whose leaves are ``"soap"`` or ``"adam"``.
    """
    minimum = 1 if precondition_1d else 2

    def one(leaf):
        core = jnp.ndim(leaf) - batch_count(batch_dims, leaf)
        return SOAP if core >= minimum else ADAM

    return jax.tree.map(one, params)


def _matmul(a: jax.Array, b: jax.Array, precision: Any) -> jax.Array:
    return jnp.matmul(a, b, precision=precision)


def _to_rows(x: jax.Array, axis: int, nb: int) -> tuple[jax.Array, tuple[int, ...]]:
    """``x`` with ``axis`` moved last and the other core axes flattened: ``batch + (r, d)``."""
    moved = jnp.moveaxis(x, axis, -1)
    rows = math.prod(moved.shape[nb:-1])  # explicit, not -1: a zero-size leaf has no inferable axis
    return moved.reshape(*moved.shape[:nb], rows, moved.shape[-1]), moved.shape


def _rotate(x: jax.Array, bases: tuple, nb: int, precision: Any, *, back: bool) -> jax.Array:
    r"""Project ``x`` onto the eigenbases (:math:`Q_L^H X Q_R`), or back (:math:`Q_L X Q_R^H`)."""
    for i, q in enumerate(bases):
        if isinstance(q, Unrotated):
            continue
        axis = nb + i
        rows, moved_shape = _to_rows(x, axis, nb)
        # Along one axis: forward y[j] = sum_a x[a] conj(Q[a, j]); back y[a] = sum_j x[j] Q[a, j].
        matrix = jnp.swapaxes(q, -1, -2) if back else jnp.conj(q)
        x = jnp.moveaxis(_matmul(rows, matrix, precision).reshape(moved_shape), -1, axis)
    return x


def _outer(g: jax.Array, axis: int, nb: int, precision: Any) -> jax.Array:
    r"""The Shampoo statistic of one axis, :math:`G G^H` contracted over every other core axis."""
    rows, _ = _to_rows(g, axis, nb)
    return _matmul(jnp.swapaxes(rows, -1, -2), jnp.conj(rows), precision)


def _eigenbasis(s: jax.Array) -> jax.Array:
    """Eigenvectors of ``s``, columns by descending eigenvalue (the authors' ``eigh`` + ``flip``)."""
    d = s.shape[-1]
    identity = jnp.broadcast_to(jnp.eye(d, dtype=s.dtype), s.shape)
    _, vectors = jnp.linalg.eigh(s + as_hyperparameter(1e-30, s.dtype) * identity)
    return jnp.flip(vectors, axis=-1)


def _refresh(s: jax.Array, q: jax.Array, v: jax.Array, axis: int, nb: int, precision: Any):
    """One power-iteration step and QR (the authors' ``get_orthogonal_matrix_QR``), for one axis.

    The columns of ``q`` are sorted by their Rayleigh quotients ``diag(Q^H S Q)``, descending, and
    ``v`` is permuted alike along ``axis``; the new basis is ``qr(S Q_sorted)``'s ``Q``.
    """
    product = _matmul(s, q, precision)
    estimate = jnp.sum(jnp.real(jnp.conj(q) * product), axis=-2)
    order = jnp.argsort(-estimate, axis=-1, stable=True)
    power = jnp.take_along_axis(product, order[..., None, :], axis=-1)
    new_q, _ = jnp.linalg.qr(power)
    core = v.ndim - nb
    shape = order.shape[:nb] + tuple(order.shape[-1] if j == axis - nb else 1 for j in range(core))
    index = jnp.broadcast_to(order.reshape(shape), v.shape)
    return new_q.astype(q.dtype), jnp.take_along_axis(v, index, axis=axis)


def scale_by_soap(
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    *,
    shampoo_beta: float | None = None,
    precondition_frequency: int = 10,
    max_precond_dim: int | None = None,
    precondition_1d: bool = False,
    correct_bias: bool = True,
    batch_dims: BatchDims | None = None,
    labels: Any = None,
    precision: Any = jax.lax.Precision.HIGHEST,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""SOAP's direction: Adam in the eigenbasis of Shampoo's preconditioner, without learning rate.

    See `soap` for the update and the arguments. The first call only builds the statistics and
    their eigenbases and returns zero updates (the authors skip it).

    Returns:
      A `GradientTransformation` with state `SoapState`.
    """
    max_precond_dim = structural(max_precond_dim, "max_precond_dim", 10000)
    batch_dims = structural(batch_dims, "batch_dims", 0)
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    beta_s = b2 if shampoo_beta is None else shampoo_beta
    check_decay(beta_s, "shampoo_beta")
    check_non_negative(eps, "eps")
    check_count(precondition_frequency, "precondition_frequency", 1, "the calls between basis "
                "refreshes (e.g. 10)")  # fmt: skip
    check_count(max_precond_dim, "max_precond_dim", 1, "the largest side that is rotated")
    mu_storage = _resolve_storage(None, mu_dtype, "mu_dtype")
    nu_storage = _resolve_storage(None, nu_dtype, "nu_dtype")

    def plan(tree):
        """Per leaf: (batch dims, which core axes are rotated), from shapes only."""
        chosen = labels(tree) if callable(labels) else labels
        if chosen is None:
            chosen = soap_labels(tree, batch_dims=batch_dims, precondition_1d=precondition_1d)

        def one(leaf, label):
            if label not in (SOAP, ADAM):
                raise ValueError(
                    f"SOAP's labels must be 'soap' or 'adam', got {label!r}; see `soap_labels`."
                )
            nb = batch_count(batch_dims, leaf)
            shape = jnp.shape(leaf)[nb:]
            rotated = tuple(label == SOAP and d <= max_precond_dim for d in shape)
            return nb, rotated

        return jax.tree.map(one, tree, chosen)

    def init_fn(params):
        check_not_flat(params, "scale_by_soap", "it preconditions each parameter along its axes")
        layout = plan(params)

        def statistics(leaf, lay):
            nb, rotated = lay
            cdt = compute_dtype(jnp.result_type(leaf))
            batch, core = jnp.shape(leaf)[:nb], jnp.shape(leaf)[nb:]
            return tuple(
                jnp.zeros(batch + (d, d), cdt) if r else Unrotated()
                for d, r in zip(core, rotated, strict=True)
            )

        stats = jax.tree.map(statistics, params, layout)
        return SoapState(
            count=zero_count(),
            mu=init_buffers(mu_storage, params),
            nu=init_buffers(nu_storage, jax.tree.map(_real_like, params)),
            stats=stats,
            # Separate buffers (not `stats` again), so a donated state holds no buffer twice.
            bases=jax.tree.map(statistics, params, layout),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        map_like(lambda *_: None, updates, state.mu, "optimizer state")  # names a mismatch's key
        layout = plan(updates if params is None else params)
        count = state.count

        def cdt_of(g, m, v):
            return compute_dtype(g.dtype, *stored_dtypes(m), *stored_dtypes(v))

        def lerp_stats(g, stats, lay, weight):
            nb, _ = lay
            cdt = compute_dtype(g.dtype)
            x = g.astype(cdt)
            w = as_hyperparameter(weight, cdt)
            return tuple(
                s if isinstance(s, Unrotated) else s + w * (_outer(x, nb + i, nb, precision) - s)
                for i, s in enumerate(stats)
            )

        def first(operands):
            stats, bases, mu, nu = operands

            def one(g, s, lay):
                new = lerp_stats(g, s, lay, 1 - beta_s)
                return new, tuple(x if isinstance(x, Unrotated) else _eigenbasis(x) for x in new)

            pairs = jax.tree.map(one, updates, stats, layout)
            new_stats = jax.tree.map(lambda _, p: p[0], updates, pairs)
            new_bases = jax.tree.map(lambda _, p: p[1], updates, pairs)
            zeros = jax.tree.map(jnp.zeros_like, updates)
            return zeros, new_stats, new_bases, mu, nu

        def later(operands):
            stats, bases, mu, nu = operands
            k = count  # the authors' step: calls so far, the skipped first one excluded

            def step(g, m_stored, v_stored, s, q, lay):
                nb, _ = lay
                cdt = cdt_of(g, m_stored, v_stored)
                rdt = real_dtype(cdt)
                x = g.astype(cdt)
                projected = _rotate(x, q, nb, precision, back=False)
                m = mu_storage.read(m_stored, cdt)
                v = nu_storage.read(v_stored, rdt)
                m = as_hyperparameter(b1, cdt) * m + as_hyperparameter(1 - b1, cdt) * projected
                v = as_hyperparameter(b2, rdt) * v + as_hyperparameter(1 - b2, rdt) * jnp.real(
                    projected * jnp.conj(projected)
                )
                direction = m / (jnp.sqrt(v) + as_hyperparameter(eps, rdt)).astype(cdt)
                direction = _rotate(direction, q, nb, precision, back=True)
                if correct_bias:
                    factor = jnp.sqrt(_correction(b2, k, rdt)) / _correction(b1, k, rdt)
                    direction = direction * factor.astype(cdt)
                return direction.astype(g.dtype), m, v, lerp_stats(g, s, lay, 1 - beta_s)

            results = jax.tree.map(step, updates, mu, nu, stats, bases, layout)
            pick = [jax.tree.map(lambda _, r, i=i: r[i], updates, results) for i in range(4)]
            out, m_new, v_new, new_stats = pick

            def refresh(operands):
                m_new, v_new, new_stats, bases = operands

                def one(m, v, s, q, lay):
                    nb, _ = lay
                    back = _rotate(m, q, nb, precision, back=True)
                    new_q = []
                    for i, (si, qi) in enumerate(zip(s, q, strict=True)):
                        if isinstance(si, Unrotated):
                            new_q.append(si)
                            continue
                        qi, v = _refresh(si, qi, v, nb + i, nb, precision)
                        new_q.append(qi)
                    new_q = tuple(new_q)
                    return _rotate(back, new_q, nb, precision, back=False), v, new_q

                res = jax.tree.map(one, m_new, v_new, new_stats, bases, layout)
                return tuple(jax.tree.map(lambda _, r, i=i: r[i], m_new, res) for i in range(3))

            def keep(operands):
                m_new, v_new, _, bases = operands
                return m_new, v_new, bases

            m_new, v_new, new_bases = jax.lax.cond(
                (k % jnp.asarray(precondition_frequency).astype(k.dtype)) == 0,
                refresh,
                keep,
                (m_new, v_new, new_stats, bases),
            )
            mu_out = jax.tree.map(mu_storage.write, m_new, mu)
            nu_out = jax.tree.map(nu_storage.write, v_new, nu)
            return out, new_stats, new_bases, mu_out, nu_out

        # One tuple per leaf, whatever container a framework rebuilt it as (Flax NNX's state
        # returns a tuple of arrays as a dict keyed 0, 1, ...).
        def per_axis(container):
            return tuple(jax.tree.leaves(container, is_leaf=lambda x: isinstance(x, Unrotated)))

        stats = jax.tree.map(lambda _, s: per_axis(s), updates, state.stats)
        bases = jax.tree.map(lambda _, q: per_axis(q), updates, state.bases)
        operands = (stats, bases, state.mu, state.nu)
        out, stats, bases, mu, nu = jax.lax.cond(count == 0, first, later, operands)
        return out, SoapState(safe_increment(count), mu, nu, stats, bases)

    return GradientTransformation(init_fn, update_fn)


def _decay_schedule(learning_rate: ScalarOrSchedule, weight_decay: ScalarOrSchedule):
    """:math:`\\eta_t \\lambda_t`, 0 on the first (skipped) call: the authors' decay after the step."""

    def schedule(count):
        lr = (
            _evaluate(learning_rate, count, "learning-rate")
            if callable(learning_rate)
            else (learning_rate)
        )
        wd = (
            _evaluate(weight_decay, count, "weight-decay")
            if callable(weight_decay)
            else (weight_decay)
        )
        return jnp.where(count == 0, 0, lr * wd)

    return schedule


@descent_example(
    "soap(learning_rate=0.1)",
    "9.5000 8.4267 7.4160 6.5060",
    params='{"w": jnp.array([[1.0, -2.0], [0.5, 1.5]]), "b": jnp.array([1.0, -1.0])}',
    loss='jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)',
)
def soap(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0.01,
    mask: Any = None,
    *,
    shampoo_beta: float | None = None,
    precondition_frequency: int = 10,
    max_precond_dim: int | None = None,
    precondition_1d: bool = False,
    correct_bias: bool = True,
    batch_dims: BatchDims | None = None,
    labels: Any = None,
    precision: Any = jax.lax.Precision.HIGHEST,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""SOAP (Vyas et al., 2024): Adam in the eigenbasis of Shampoo's preconditioner.

    For a matrix parameter with gradient :math:`G_t` (a stack of matrices for ``batch_dims``; a
    tensor gets one basis per axis), after a first call that only builds
    :math:`L = (1-\beta_s) G G^H`, :math:`R = (1-\beta_s) G^H G` and their eigenbases, call
    :math:`k = 1, 2, \ldots` does

    .. math::
        G'_k &= Q_L^H G_k Q_R, \qquad
        M_k = \beta_1 M_{k-1} + (1-\beta_1) G'_k, \qquad
        V_k = \beta_2 V_{k-1} + (1-\beta_2) |G'_k|^2, \\
        \theta_k &= (1 - \eta_k\lambda)\left(\theta_{k-1} - \eta_k
        \frac{\sqrt{1-\beta_2^k}}{1-\beta_1^k}\, Q_L \frac{M_k}{\sqrt{V_k} + \epsilon} Q_R^H
        \right), \\
        L &\leftarrow \beta_s L + (1-\beta_s) G_k G_k^H, \qquad
        R \leftarrow \beta_s R + (1-\beta_s) G_k^H G_k,

    and every ``precondition_frequency`` calls (:math:`k \bmod f = 0`) each basis is refreshed by
    one power-iteration step, :math:`Q \leftarrow \operatorname{qr}(L\, Q_{\text{sorted}})`, its
    columns first sorted by :math:`\operatorname{diag}(Q^H L Q)` descending and :math:`V` permuted
    alike; :math:`M` is rotated into the new basis. :math:`\epsilon` is added to :math:`\sqrt{V}`
    before the bias correction (the authors' form), and the decay acts on the parameters *after*
    the step. Axes longer than ``max_precond_dim`` keep the standard basis; leaves labelled
    ``"adam"`` (by default vectors and scalars, see `soap_labels`) keep it on every axis, which is
    Adam with the same hyperparameters, as in the authors' code.

    Numerics: eigenbases come from ``eigh`` of the statistic plus :math:`10^{-30} I`, columns in
    *descending* eigenvalue order (the authors' ``flip``); the refresh sorts descending with a
    stable sort. Column signs are whatever ``eigh``/``qr`` return: the update does not depend on
    them, since :math:`M` and :math:`V` live in the same basis. A statistic with a repeated
    eigenvalue (the first :math:`L` of a non-square matrix is rank-deficient) has no unique
    eigenbasis; there two implementations legitimately take different steps. All matrix products
    use ``precision`` (default ``HIGHEST``: on TPU a float32 matmul otherwise runs in bfloat16
    passes, which spoils the eigenbases); statistics and bases are kept in the compute dtype
    (float32 for bfloat16/float32 parameters).

    Reference: matches the authors' ``SOAP`` (``nikhilvyas/SOAP`` ``soap.py`` at a1e5535, without
    ``merge_dims`` and ``normalize_grads``), transcribed in NumPy, to 1e-10 in float64
    (``tests/test_soap.py``). Defaults are the authors'; ``shampoo_beta=None`` is their
    ``-1`` (use ``b2``). optax 0.2.8 has no SOAP.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the call count (0-based).
      b1: :math:`\beta_1`, decay of :math:`M`, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of :math:`V`, in ``[0, 1)``.
      eps: :math:`\epsilon`, added to :math:`\sqrt{V}`.
      weight_decay: :math:`\lambda >= 0` (or a schedule), scaled by :math:`\eta_k`, applied after
        the step.
      mask: which leaves to decay (a tree of booleans or a function of the params); ``None``: all.
      shampoo_beta: :math:`\beta_s`, decay of :math:`L, R`; ``None`` uses ``b2``.
      precondition_frequency: :math:`f`, calls between basis refreshes.
      max_precond_dim: longer axes are not rotated.
      precondition_1d: rotate vectors too.
      correct_bias: multiply by :math:`\sqrt{1-\beta_2^k}/(1-\beta_1^k)`.
      batch_dims: leading axes that index a stack of matrices (``nn.scan`` layers): an int or a
        function ``leaf -> int``; a (layers, rows, cols) leaf with 1 is ``layers`` matrices.
      labels: ``"soap"``/``"adam"`` per leaf, a tree or a function of the params; default
        `soap_labels`.
      precision: ``jax.lax.Precision`` of the matrix products.
      mu_dtype: dtype of :math:`M` (default: the parameter's).
      nu_dtype: dtype of :math:`V` (default: the parameter's real dtype).

    Returns:
      ``chain(scale_by_soap(...), scale_by_learning_rate(learning_rate),
      decay_after_update(eta * weight_decay, mask))``.

    References:
      Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson & Kakade, "SOAP: Improving and
      Stabilizing Shampoo using Adam", ICLR 2025, https://arxiv.org/abs/2409.11321
    """
    max_precond_dim = structural(max_precond_dim, "max_precond_dim", 10000)
    batch_dims = structural(batch_dims, "batch_dims", 0)
    check_learning_rate(learning_rate)
    check_non_negative(weight_decay, "weight_decay")
    direction = scale_by_soap(
        b1, b2, eps, shampoo_beta=shampoo_beta, precondition_frequency=precondition_frequency,
        max_precond_dim=max_precond_dim, precondition_1d=precondition_1d,
        correct_bias=correct_bias, batch_dims=batch_dims, labels=labels, precision=precision,
        mu_dtype=mu_dtype, nu_dtype=nu_dtype,
    )  # fmt: skip
    if isinstance(weight_decay, int | float) and weight_decay == 0:
        return chain(direction, scale_by_learning_rate(learning_rate))
    return chain(
        direction,
        scale_by_learning_rate(learning_rate),
        decay_after_update(_decay_schedule(learning_rate, weight_decay), mask),
    )
