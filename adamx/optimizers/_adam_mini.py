"""Adam-mini: Adam with one second-moment value per block of parameters (Zhang et al., 2024)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._moments import bias_correction, ema
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import scale_by_second_moment
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import GradientTransformation, MomentTransformation, ScalarOrSchedule
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._layers import batch_count, path_name
from ..core._structural import structural
from ..core._trees import check_not_flat
from ..core._validate import check_decay, check_non_negative

__all__ = [
    "BlockMeanState",
    "Blocks",
    "adam_mini",
    "adam_mini_blocks",
    "adam_mini_decay_mask",
    "adam_mini_partition",
    "block_mean",
    "path_name",
    "scale_by_adam_mini",
]


@dataclass(frozen=True)
class Blocks:
    """How Adam-mini cuts one leaf into blocks that share a second-moment value.

    The leaf is viewed as ``shape`` (``None``: its own shape) and :math:`|g|^2` is averaged over
    ``axes`` of that view, so the stored :math:`v` has ``shape`` with those axes set to 1.
    ``kind`` is a label for people (``"element"``, ``"head"``, ``"neuron"``, ``"token"``,
    ``"tensor"``). ``axes=()`` is Adam (one value per element).
    """

    kind: str
    axes: tuple[int, ...]
    shape: tuple[int, ...] | None = None


Partition = Callable[[Any, Any], Blocks]

# The authors' name patterns (adam_mini.py v1.1.1), matched as substrings of the lower-cased path.
BIAS_NAMES = ("bias",)
QUERY_NAMES = ("q_proj", "wq", "query")
KEY_NAMES = ("k_proj", "wk", "key")
EMBEDDING_NAMES = ("embed", "embd", "wte")
OUTPUT_NAMES = ("lm_head", "output", "final_layer")
NEURON_NAMES = (
    "v_proj",
    "wv",
    "value",
    "o_proj",
    "wo",
    "attn.proj",
    "feed_forward",
    "linear",
    "mlp",
)
NO_DECAY_NAMES = ("norm", "ln", "bias")


def adam_mini_partition(
    *,
    n_heads: int | None = None,
    n_kv_heads: int | None = None,
    batch_dims: int | Callable[[Any], int] = 0,
) -> Partition:
    """The default Adam-mini partition: the authors' name rules, in JAX's ``(in, out)`` layout.

    Rules, first match wins, on the lower-cased dotted key path (see `path_name`):

    1. ``bias`` in the name: one value per element (Adam).
    2. a query (``q_proj``, ``wq``, ``query``) or key (``k_proj``, ``wk``, ``key``) kernel: one
       value per attention head. A 2-D kernel ``(in, heads * head_dim)`` is viewed as
       ``(in, heads, head_dim)`` with ``heads = n_heads`` (``n_kv_heads`` for keys, grouped-query
       attention); a 3-D ``DenseGeneral`` kernel ``(in, heads, head_dim)`` is used as it is.
    3. an embedding (``embed``, ``embd``, ``wte``): one value per token (row of ``(vocab, dim)``).
    4. an output head (``lm_head``, ``output``, ``final_layer``), value, attention output or MLP
       (``v_proj``, ``wv``, ``value``, ``o_proj``, ``wo``, ``attn.proj``, ``feed_forward``,
       ``linear``, ``mlp``) with two or more axes: one value per output neuron, that is per index
       of the last axis (flax's kernels are ``(in, out)``; torch's ``(out, in)`` rows are these
       columns). For the output head an output neuron is a token.
    5. everything else (norm scales, other vectors and scalars, unnamed matrices): one value for
       the whole tensor.

    The first ``batch_dims`` axes of a leaf (stacked layers from ``nn.scan``) are kept: a
    ``(layers, in, out)`` leaf with ``batch_dims=1`` gets the blocks of each of its layers. The
    rules look at the path and shape only.

    Args:
      n_heads: the number of query heads (needed for 2-D query and key kernels).
      n_kv_heads: the number of key heads; ``None``: ``n_heads``.
      batch_dims: leading axes that index stacked layers: an int, or a function ``leaf -> int``.

    Returns:
      A function ``(path, leaf) -> Blocks``.
    """
    for value, name in ((n_heads, "n_heads"), (n_kv_heads, "n_kv_heads")):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive int or None, got {value!r}.")
    kv_heads = n_heads if n_kv_heads is None else n_kv_heads

    def rule(path: Any, leaf: Any) -> Blocks:
        name = path_name(path)
        shape = tuple(jnp.shape(leaf))
        b = batch_count(batch_dims, leaf, name)
        inner = shape[b:]
        rank = len(inner)
        everything = tuple(range(b, len(shape)))

        def has(names: tuple[str, ...]) -> bool:
            return any(n in name for n in names)

        if has(BIAS_NAMES):
            return Blocks("element", ())
        if (has(QUERY_NAMES) or has(KEY_NAMES)) and rank >= 2:
            if rank == 3:
                return Blocks("head", (b, b + 2))
            heads = n_heads if has(QUERY_NAMES) else kv_heads
            if rank != 2 or heads is None or inner[1] % heads:
                raise ValueError(
                    f"Adam-mini splits the query/key kernel `{name}` (shape {shape}) into heads "
                    f"but got n_heads={n_heads}, n_kv_heads={n_kv_heads}; pass `n_heads` (and "
                    "`n_kv_heads` for grouped-query attention) dividing its last axis, or pass "
                    "your own `partition`."
                )
            view = shape[:b] + (inner[0], heads, inner[1] // heads)
            return Blocks("head", (b, b + 2), view)
        if has(EMBEDDING_NAMES) and rank >= 2:
            return Blocks("token", everything[1:])
        if (has(OUTPUT_NAMES) or has(NEURON_NAMES)) and rank >= 2:
            kind = "token" if has(OUTPUT_NAMES) else "neuron"
            return Blocks(kind, everything[:-1])
        return Blocks("tensor", everything)

    return rule


def _checked(partition: Partition, path: Any, leaf: Any) -> tuple[Blocks, tuple[int, ...]]:
    """``partition(path, leaf)`` and the view's shape, checked to describe the leaf."""
    blocks = partition(path, leaf)
    name = path_name(path) or "<root>"
    if not isinstance(blocks, Blocks):
        raise TypeError(
            f"An Adam-mini partition must return `Blocks`, got {blocks!r} for `{name}`; build one "
            "with e.g. `Blocks('tensor', tuple(range(leaf.ndim)))`."
        )
    shape = tuple(jnp.shape(leaf))
    view = shape if blocks.shape is None else tuple(blocks.shape)
    if math.prod(view) != math.prod(shape) or any(not 0 <= a < len(view) for a in blocks.axes):
        raise ValueError(
            f"The Adam-mini blocks {blocks} do not fit `{name}` of shape {shape}: the view must "
            "have as many elements as the leaf, and the axes must be axes of the view."
        )
    return blocks, view


def adam_mini_blocks(params: Any, partition: Partition | None = None) -> Any:
    """The `Blocks` of every leaf of ``params``: which leaves share a second moment, and how.

    Args:
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
      partition: a function ``(path, leaf) -> Blocks``; ``None``: `adam_mini_partition` ``()``.

    Returns:
      A tree like ``params`` with a `Blocks` at each leaf (``kind`` says which rule chose it).
    """
    partition = adam_mini_partition() if partition is None else partition
    return jax.tree_util.tree_map_with_path(lambda p, x: _checked(partition, p, x)[0], params)


def adam_mini_decay_mask(params: Any) -> Any:
    """The authors' weight-decay mask: ``False`` for names containing ``norm``, ``ln`` or ``bias``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(n in path_name(path) for n in NO_DECAY_NAMES), params
    )


class BlockMeanState(NamedTuple):
    """The state of `block_mean`: its estimator's state, over arrays of the block shapes."""

    estimator: Any


def block_mean(estimator: GradientTransformation, partition: Partition) -> MomentTransformation:
    r"""Run ``estimator`` on the block means of its input, and broadcast the result back.

    .. math::
        \bar u_B = \frac{1}{|B|} \sum_{i \in B} u_i, \qquad
        \hat v_i = E(\bar u)_{B(i)} \text{ for } i \in B.

    As the estimator of `scale_by_second_moment` (input :math:`|g|^2`) this is Adam-mini's second
    moment: the estimator's buffers have one value per block.

    Args:
      estimator: the transformation applied to the block means (Adam's
        ``chain(ema(b2), bias_correction(b2))``).
      partition: a function ``(path, leaf) -> Blocks``.

    Returns:
      A `MomentTransformation` with state `BlockMeanState`.
    """

    def block_shape(path, leaf):
        blocks, view = _checked(partition, path, leaf)
        return tuple(1 if i in blocks.axes else n for i, n in enumerate(view))

    def init_fn(params):
        check_not_flat(params, "block_mean", "its Adam-mini blocks are parts of each parameter")
        placeholders = jax.tree_util.tree_map_with_path(
            lambda path, x: jnp.zeros(block_shape(path, x), jnp.result_type(x)), params
        )
        return BlockMeanState(estimator.init(placeholders))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def mean(path, u):
            blocks, view = _checked(partition, path, u)
            return jnp.mean(u.reshape(view), axis=blocks.axes, keepdims=True)

        means = jax.tree_util.tree_map_with_path(mean, updates)
        estimate, estimator_state = estimator.update(means, state.estimator)

        def expand(path, v, u):
            _, view = _checked(partition, path, u)
            return jnp.broadcast_to(v, view).reshape(u.shape)

        expanded = jax.tree_util.tree_map_with_path(expand, estimate, updates)
        return expanded, BlockMeanState(estimator_state)

    return MomentTransformation(init_fn, update_fn)


def scale_by_adam_mini(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    partition: Partition | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""Adam-mini's direction, :math:`\hat m_t / (\sqrt{\hat v_{B,t}} + \epsilon)`.

    ``chain(ema(b1), bias_correction(b1), scale_by_second_moment(eps=eps,
    estimator=block_mean(chain(ema(b2), bias_correction(b2)), partition)))``: Adam whose second
    moment is kept per block. See `adam_mini` for the update and arguments.

    Returns:
      A `MomentTransformation`; its state is ``(EmaState(mu), BiasCorrectionState(count),
      SecondMomentState(BlockMeanState((EmaState(v_blocks), BiasCorrectionState(count)))))``.
    """

    check_decay(b1, "b1")
    check_decay(b2, "b2")
    check_non_negative(eps, "eps")
    partition = adam_mini_partition() if partition is None else partition
    estimator = block_mean(chain(ema(b2, dtype=nu_dtype), bias_correction(b2)), partition)
    return chain(
        ema(b1, dtype=mu_dtype),
        bias_correction(b1),
        scale_by_second_moment(eps=eps, estimator=estimator),
    )


@descent_example(
    "adam_mini(learning_rate=0.1)",
    "12.9540 11.7405 10.6105",
    params='{"mlp": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]])}}',
    loss='jnp.sum(p["mlp"]["kernel"] ** 2)',
)
def adam_mini(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    *,
    n_heads: int | None = None,
    n_kv_heads: int | None = None,
    batch_dims: int | Callable[[Any], int] | None = None,
    partition: Partition | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""Adam-mini (Zhang et al., 2024): AdamW with one second-moment value per parameter block.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
        v_{B,t} &= \beta_2 v_{B,t-1} + (1 - \beta_2)\, \tfrac{1}{|B|}\textstyle\sum_{i \in B}
        |g_{t,i}|^2, \\
        \theta_{t,i} &= \theta_{t-1,i} - \eta_t \left( \frac{m_{t,i} / (1 - \beta_1^t)}
        {\sqrt{v_{B,t} / (1 - \beta_2^t)} + \epsilon} + \lambda\, \theta_{t-1,i} \right)
        && \text{for } i \in B,

    with :math:`m_0 = v_0 = 0` and the blocks :math:`B` given by ``partition`` (default
    `adam_mini_partition`: per head for queries and keys, per output neuron for values, attention
    outputs and MLPs, per token for embeddings and the output head, per element for biases, per
    tensor otherwise). The first moment is full-sized, the second has one value per block: the
    state is about half of AdamW's. Weight decay is decoupled and multiplied by the learning rate
    (the authors' ``p.mul_(1 - lr * wd)``), and by default not applied to names containing
    ``norm``, ``ln`` or ``bias`` (`adam_mini_decay_mask`, the authors' rule). With one-element
    blocks Adam-mini is `adamw`.

    Reference: matches a NumPy transcription of ``adam_mini.py`` (zyushun/Adam-mini v1.1.1)
    step for step, torch's ``(out, in)`` weights being the transposes of the JAX kernels
    (``tests/test_adam_mini.py``). There is no optax or torch.optim Adam-mini. The authors
    require ``dim`` and ``n_heads`` and split *every* query/key weight into rows of
    ``dim * dim / n_heads`` elements; adamx asks for ``n_heads`` only where a 2-D query/key kernel
    is found. Defaults follow the authors (``eps=1e-8``, no decay).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, in ``[0, 1)``.
      b2: :math:`\beta_2`, in ``[0, 1)``.
      eps: :math:`\epsilon`, added to the root.
      weight_decay: :math:`\lambda >= 0`, or a schedule.
      mask: which leaves to decay (a tree of booleans or a function of the params); ``None``
        (the default): `adam_mini_decay_mask`, the authors' rule. To decay every leaf, pass
        ``mask=lambda params: jax.tree.map(lambda _: True, params)``. (A function default would
        be taken for a schedule by ``inject_hyperparams``, hence ``None``.)
      n_heads, n_kv_heads, batch_dims: passed to `adam_mini_partition` (when ``partition`` is
        ``None``).
      partition: a function ``(path, leaf) -> Blocks`` (see `adam_mini_blocks` to inspect it).
      mu_dtype: dtype of :math:`m` (default: the parameter's).
      nu_dtype: dtype of :math:`v` (default: the parameter's real dtype).

    Returns:
      ``chain(scale_by_adam_mini(...), add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate))``.

    References:
      Zhang, Chen, Li, Ding, Wu, Kingma, Ye, Luo & Sun, "Adam-mini: Use Fewer Learning Rates To
      Gain More", ICLR 2025, https://arxiv.org/abs/2406.16793
    """
    batch_dims = structural(batch_dims, "batch_dims", 0)
    if partition is not None and (n_heads, n_kv_heads, batch_dims) != (None, None, 0):
        raise ValueError(
            "Pass either `partition` or `n_heads`/`n_kv_heads`/`batch_dims` (which configure the "
            "default partition), not both; build your own with `adam_mini_partition(...)`."
        )
    if partition is None:
        partition = adam_mini_partition(
            n_heads=n_heads, n_kv_heads=n_kv_heads, batch_dims=batch_dims
        )
    return chain(
        scale_by_adam_mini(b1, b2, eps, partition=partition, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, adam_mini_decay_mask if mask is None else mask),
        scale_by_learning_rate(learning_rate),
    )
