"""adamx optimizers, unchanged, inside the libraries that duck-type optax's protocol.

optax (`chain`, `MultiSteps`, `tree_map_params`), flax (`nnx.Optimizer`, linen `TrainState`),
optimistix (`OptaxMinimiser`), equinox (filtered models with ``None`` leaves), Haiku, ``jax.eval_shape``
and orbax checkpoints; and optax's transforms as members of an adamx chain. Everything here runs under the suite's strict promotion except
``optax.MultiSteps``, whose own bookkeeping is not strict-clean (wrapped in `relaxed()`).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import pytest
from flax import nnx
from flax.training import train_state

import adamx
from tests.helpers import OPTIMIZER_IDS, OPTIMIZERS, parabola, random_tree, relaxed

STEPS = 5
# Training runs inside nnx, equinox and plain jit: long enough for the slowest starter in the
# registry (AdaDelta's first steps are ~sqrt(eps) small) to halve the loss.
TRAIN_STEPS = 60


def _grad_sequence(params, n, seed=1, scale=3.0):
    """``n`` gradient trees shaped like ``params`` (global norm well above 1, so clipping bites)."""
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(
            lambda p: jnp.asarray(scale * rng.standard_normal(np.shape(p)), jnp.float32), params
        )
        for _ in range(n)
    ]


def _stepper(tx):
    """One jitted step of ``tx`` on given gradients: ``(params, state, grads) -> (params, state)``."""

    @jax.jit
    def one(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    return one


def _run(tx, params, grads_seq, state=None, one=None):
    """Apply ``tx`` to the fixed gradients ``grads_seq``, jitted; returns ``(params, state)``."""
    state = tx.init(params) if state is None else state
    one = _stepper(tx) if one is None else one
    for grads in grads_seq:
        params, state = one(params, state, grads)
    return params, state


@functools.cache
def _plain_run(name):
    """The registry optimizer ``name`` alone on `random_tree` and `_grad_sequence` (shared, cached)."""
    case = OPTIMIZERS[OPTIMIZER_IDS.index(name)]
    params = random_tree(0)
    return _run(case.make(case.learning_rate), params, _grad_sequence(params, STEPS))


def _assert_trees_close(actual, expected, rtol=1e-6, atol=1e-7):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def _assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert np.asarray(a).dtype == np.asarray(e).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def _inline_clip_by_global_norm(max_norm: float) -> adamx.GradientTransformation:
    """A stateless clip written against the protocol only, the arithmetic of optax's."""

    def init_fn(params):
        del params
        return adamx.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves = jax.tree.leaves(updates)
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(u)) for u in leaves))
        bound = jnp.asarray(max_norm, norm.dtype)
        trigger = norm < bound
        clipped = jax.tree.map(
            lambda u: jax.lax.select(trigger, u, (u / norm.astype(u.dtype)) * bound), updates
        )
        return clipped, state

    return adamx.GradientTransformation(init_fn, update_fn)


# ---- 1. optax.chain ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_alone_in_optax_chain_is_bitwise_the_same(case):
    params = random_tree(0)
    grads_seq = _grad_sequence(params, STEPS)
    opt = case.make(case.learning_rate)
    expected, expected_state = _plain_run(case.name)
    actual, actual_state = _run(optax.chain(opt), params, grads_seq)  # optax.chain only forwards
    _assert_trees_equal(actual, expected)
    _assert_trees_equal(actual_state, (expected_state,))
    assert not np.allclose(np.asarray(actual["dense"]["w"]), params["dense"]["w"])


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_after_optax_clip_in_optax_chain(case):
    params = random_tree(0)
    grads_seq = _grad_sequence(params, STEPS)
    assert all(float(optax.tree.norm(g)) > 2.0 for g in grads_seq)  # the clip is active
    opt = case.make(case.learning_rate)
    actual, actual_state = _run(optax.chain(optax.clip_by_global_norm(1.0), opt), params, grads_seq)
    inline = adamx.chain(_inline_clip_by_global_norm(1.0), opt)
    expected, expected_state = _run(inline, params, grads_seq)
    _assert_trees_close(actual, expected)
    # optax's and adamx's chains hold their own EmptyState for the clip; the optimizer's state agrees.
    _assert_trees_close(actual_state[1], expected_state[1])
    # ... and the clip changed the trajectory (Adam is invariant to a constant scale of the
    # gradients, not to a per-step one), so the comparison is not vacuous.
    unclipped, _ = _plain_run(case.name)
    assert not np.allclose(np.asarray(unclipped["conv"]), np.asarray(actual["conv"]), rtol=1e-4)


# ---- 2. optax.MultiSteps -------------------------------------------------------------------------


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_optax_multisteps_equals_steps_on_averaged_gradients(case):
    k = 3
    params = random_tree(0)
    micro = _grad_sequence(params, 2 * k, seed=2)
    opt = case.make(case.learning_rate)
    multi = optax.MultiSteps(opt, every_k_schedule=2)
    one = _stepper(multi)
    with relaxed():  # MultiSteps' own bookkeeping mixes float32 and int32
        after_one, multi_state = _run(multi, params, micro[:1], one=one)
        actual, multi_state = _run(multi, after_one, micro[1:], multi_state, one=one)
    # A micro-step that does not end the accumulation leaves the params alone.
    _assert_trees_equal(after_one, jax.tree.map(jnp.asarray, params))
    # MultiSteps' running mean, a + (b - a) / 2, so both runs see the same floats: SOAP's first
    # eigenbases are those of a rank-deficient statistic, whose degenerate eigenvectors an ulp
    # moves anywhere in their subspace.
    mean = lambda a, b: a + (b - a) / 2  # noqa: E731
    averaged = [jax.tree.map(mean, micro[2 * i], micro[2 * i + 1]) for i in range(k)]
    expected, expected_state = _run(opt, params, averaged)
    _assert_trees_close(actual, expected, rtol=1e-6, atol=1e-6)
    _assert_trees_close(multi_state.inner_opt_state, expected_state, rtol=1e-6, atol=1e-6)
    assert int(multi_state.gradient_step) == k


# ---- 3. flax nnx.Optimizer -----------------------------------------------------------------------


def _regression_data(n_in=3, n_out=2, n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(x @ w + 0.5)


# `nnx.Optimizer.update` keeps each pytree node of the state as an `nnx.State` of its children and
# drops the node's static data: a `QuantizedBuffer`'s shape. `adamx.nnx_update` rebuilds the state
# by key path (adamx/training/_train.py), so 8- and 4-bit moments train through it.
NNX_STATIC_DATA = {"adamw_8bit", "adamw_4bit"}


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_flax_nnx_optimizer(case):
    x, y = _regression_data()
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    opt = case.make(case.learning_rate)
    # `tx` is a static attribute of nnx.Optimizer: this raises if `opt` holds any array data.
    optimizer = nnx.Optimizer(model, opt, wrt=nnx.Param)
    assert optimizer.tx is opt

    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        if case.name in NNX_STATIC_DATA:
            adamx.nnx_update(optimizer, model, grads)
        else:
            optimizer.update(model, grads)
        return loss

    first = float(loss_fn(model))
    for _ in range(TRAIN_STEPS):
        train_step(model, optimizer)
    last = float(loss_fn(model))
    assert last < 0.5 * first
    assert int(optimizer.step[...]) == TRAIN_STEPS
    # nnx keeps and advances the state adamx's init built: its step counts read 10.
    leaves = jax.tree.leaves(nnx.state(optimizer.opt_state))
    counts = [leaf for leaf in leaves if leaf.dtype == jnp.int32]
    assert all(int(c) == TRAIN_STEPS for c in counts)  # (SGD and RMSprop keep no count)


def test_flax_nnx_optimizer_check_is_live():
    """The control for the test above: nnx does reject a transformation that carries an array."""
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    opt = adamx.adam(0.1)
    carrying = adamx.GradientTransformation(
        opt.init, jax.tree_util.Partial(lambda _, *a, **k: opt.update(*a, **k), jnp.ones(1))
    )
    with pytest.raises(ValueError, match="static attribute"):
        nnx.Optimizer(model, carrying, wrt=nnx.Param)


# ---- 4. flax linen TrainState --------------------------------------------------------------------


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_flax_linen_train_state(case):
    import flax.linen as nn

    x, y = _regression_data()
    module = nn.Dense(2)
    params = module.init(jax.random.key(0), x)["params"]
    opt = case.make(case.learning_rate)

    def loss_fn(params):
        return jnp.mean((module.apply({"params": params}, x) - y) ** 2)

    state = train_state.TrainState.create(apply_fn=module.apply, params=params, tx=opt)

    @jax.jit
    def train_step(state):
        return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))

    @jax.jit
    def by_hand(params, opt_state):
        updates, opt_state = opt.update(jax.grad(loss_fn)(params), opt_state, params)
        return adamx.apply_updates(params, updates), opt_state

    first = float(loss_fn(params))
    for _ in range(10):
        state = train_step(state)
    hand_params, hand_state = params, opt.init(params)
    for _ in range(10):
        hand_params, hand_state = by_hand(hand_params, hand_state)
    assert float(loss_fn(state.params)) < first
    assert int(state.step) == 10
    _assert_trees_close(state.params, hand_params, rtol=1e-6, atol=1e-7)
    _assert_trees_close(state.opt_state, hand_state, rtol=1e-6, atol=1e-7)


# ---- 5. optimistix -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_optimistix_optax_minimiser(case):
    """OptaxMinimiser drives the optimizer (passing ``value=``, ``grad=``, ``value_fn=``) to the
    minimum. Whether optimistix then *terminates* is its step-size test, which a constant-step
    method such as RMSprop never meets (it hovers at its noise floor), so the solve may end at
    ``max_steps``; any other result (NaN, an error) fails."""
    target = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(3.0)}

    def fn(y, args):
        del args
        return sum(jnp.sum((y[k] - target[k]) ** 2) for k in y)

    y0 = jax.tree.map(jnp.zeros_like, target)
    solver = optx.OptaxMinimiser(case.make(case.learning_rate / 2), rtol=1e-6, atol=1e-6)
    solution = optx.minimise(fn, solver, y0, max_steps=3000, throw=False)
    assert solution.result in (optx.RESULTS.successful, optx.RESULTS.nonlinear_max_steps_reached)
    assert int(solution.stats["num_steps"]) > 0
    # Weight decay (<= 1e-3) pulls the minimum in by a hair.
    _assert_trees_close(solution.value, target, rtol=0, atol=5e-3)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_optimistix_extra_arguments_are_ignored(case):
    """What OptaxMinimiser passes (``value=``, ``grad=``, ``value_fn=``) changes nothing."""
    params = random_tree(0)
    grads = _grad_sequence(params, 1)[0]
    opt = case.make(case.learning_rate)
    state = opt.init(params)
    plain = opt.update(grads, state, params)
    extra = opt.update(grads, state, params, value=jnp.array(2.0), grad=grads, value_fn=parabola)
    _assert_trees_equal(extra, plain)


# ---- 6. equinox: filtered models with None leaves ------------------------------------------------


def _none_count(tree):
    return sum(leaf is None for leaf in jax.tree.leaves(tree, is_leaf=lambda v: v is None))


def _is_leaf(tree):
    return tree is not None and jax.tree_util.treedef_is_leaf(jax.tree.structure(tree))


def _buffer_counts(tree, params):
    """``(arrays, nones)`` if ``tree`` is laid out like ``params``, else ``None``.

    Laid out like the params: ``None`` exactly where the params have ``None``; per parameter an
    array, or a small tuple of arrays (SOAP's per-axis statistics, a stochastically rounded
    moment's value and counter), or a `adamx.QuantizedBuffer` (codes, scales and shape); and `adamx.MaskedNode` for a
    subtree that belongs to another group of a `partition` (Muon's AdamW branch, say).
    """
    if isinstance(tree, adamx.MaskedNode):
        return 0, 0
    if params is None:
        return (0, 1) if tree is None else None
    if _is_leaf(params):
        if tree is None or not (_is_leaf(tree) or isinstance(tree, (tuple, adamx.QuantizedBuffer))):
            return None
        return len(jax.tree.leaves(tree)), 0
    with_none = lambda t: jax.tree.flatten(t, is_leaf=lambda x: x is not t)  # noqa: E731
    (tree_children, tree_node), (param_children, param_node) = with_none(tree), with_none(params)
    if tree_node != param_node:
        return None
    counts = [_buffer_counts(t, p) for t, p in zip(tree_children, param_children, strict=True)]
    if any(c is None for c in counts):
        return None
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _param_shaped_subtrees(state, params):
    """The per-parameter buffers of ``state`` (moments, per-leaf scalars such as torch NAdam's
    mu_product, per-axis statistics), each as ``(arrays, nones)``: its array count and its
    ``None`` count (``None`` where the params have one, outside other groups' leaves)."""
    found = []

    def visit(tree):
        counts = _buffer_counts(tree, params)
        if counts is not None and counts != (0, 0):
            found.append(counts)
            return
        children, node = jax.tree.flatten(tree, is_leaf=lambda x: x is not tree)
        if not jax.tree_util.treedef_is_leaf(node):
            for child in children:
                visit(child)

    visit(state)
    return found


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_equinox_filtered_model_with_none_leaves(case):
    x, y = _regression_data()
    model = eqx.nn.MLP(3, 2, width_size=8, depth=1, key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_inexact_array)
    n_none = _none_count(params)
    assert n_none > 0  # the activation functions are filtered out to None
    opt = case.make(case.learning_rate)
    state = opt.init(params)
    # init passes None through: every per-parameter buffer has None where the params do, and
    # there is no None anywhere else.
    buffers = _param_shaped_subtrees(state, params)
    assert _none_count(state) == sum(nones for _, nones in buffers)

    def loss_fn(model):
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    @eqx.filter_jit
    def train_step(model, state):
        grads = eqx.filter_grad(loss_fn)(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, updates

    first = float(loss_fn(model))
    for _ in range(TRAIN_STEPS):
        model, state, updates = train_step(model, state)
    assert float(loss_fn(model)) < 0.5 * first
    # updates have None exactly where the filtered params do ...
    none_mask = lambda t: jax.tree.map(lambda v: v is None, t, is_leaf=lambda v: v is None)  # noqa: E731
    assert none_mask(updates) == none_mask(params)
    # ... and adamx.apply_updates keeps them, agreeing with eqx.apply_updates elsewhere.
    by_adamx = adamx.apply_updates(params, updates)
    assert none_mask(by_adamx) == none_mask(params)
    _assert_trees_equal(by_adamx, eqx.apply_updates(params, updates))


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_none_leaves_pass_through_strict(case):
    """The same None handling, without any library code in the loop (so it runs strict)."""
    params = {
        "w": jnp.array([3.0, -2.0]),
        "frozen": None,
        "nested": {"b": jnp.array(0.5), "f": None},
    }
    opt = case.make(case.learning_rate)
    state = opt.init(params)
    loss = lambda p: parabola({"w": p["w"], "b": p["nested"]["b"]})  # noqa: E731

    @jax.jit
    def one(params, state):
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return adamx.apply_updates(params, updates), state, grads, updates

    first = float(loss(params))
    for _ in range(TRAIN_STEPS):
        params, state, grads, updates = one(params, state)
    for tree in (grads, updates, params):
        assert tree["frozen"] is None and tree["nested"]["f"] is None
    buffers = _param_shaped_subtrees(state, params)
    assert _none_count(state) == sum(nones for _, nones in buffers)
    assert float(loss(params)) < 0.5 * first


# ---- 7. eval_shape and optax.tree_map_params -----------------------------------------------------


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_eval_shape_of_init(case):
    params = random_tree(0)
    opt = case.make(case.learning_rate)
    shapes = jax.eval_shape(opt.init, params)
    concrete = opt.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(concrete)
    for s, c in zip(jax.tree.leaves(shapes), jax.tree.leaves(concrete), strict=True):
        assert isinstance(s, jax.ShapeDtypeStruct)
        assert s.shape == c.shape and s.dtype == c.dtype


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_optax_tree_map_params(case):
    params = random_tree(0)
    opt = case.make(case.learning_rate)
    state = opt.init(params)
    mapped = optax.tree_map_params(
        opt,
        lambda p: jnp.full(p.shape, 7.0, p.dtype),
        state,
        transform_non_params=lambda v: jnp.full(v.shape, -1, v.dtype),
    )
    assert jax.tree.structure(mapped) == jax.tree.structure(state)
    sevens = [leaf for leaf in jax.tree.leaves(mapped) if np.all(np.asarray(leaf) == 7)]
    others = [leaf for leaf in jax.tree.leaves(mapped) if np.all(np.asarray(leaf) == -1)]
    # Every per-parameter buffer (Adam: the two moments) is mapped; the rest are scalars: counts,
    # and for a few optimizers (Schedule-Free's weight sum, Prodigy's d) float statistics.
    assert len(sevens) == sum(arrays for arrays, _ in _param_shaped_subtrees(state, params))
    assert len(sevens) + len(others) == len(jax.tree.leaves(state))
    assert all(leaf.shape == () for leaf in others)


# ---- 8. orbax checkpoint round trip --------------------------------------------------------------


def test_orbax_checkpoint_round_trip(tmp_path):
    import orbax.checkpoint as ocp

    # A schedule, so the checkpoint also carries its step count.
    opt = adamx.adamw(lambda t: 0.1 / (1 + 1e-3 * t.astype(jnp.float32)), weight_decay=1e-3)
    params = random_tree(0)
    grads_seq = _grad_sequence(params, 6, seed=3)

    straight_params, straight_state = _run(opt, params, grads_seq)

    mid_params, mid_state = _run(opt, params, grads_seq[:3])
    target = {
        "params": jax.eval_shape(lambda p: p, mid_params),
        "opt_state": jax.eval_shape(opt.init, params),
    }
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": mid_params, "opt_state": mid_state})
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    checkpointer.close()
    _assert_trees_equal(restored, {"params": mid_params, "opt_state": mid_state})
    assert type(restored["opt_state"][0][0]) is adamx.EmaState  # the state's classes come back
    assert int(restored["opt_state"][2].count) == 3  # so does the schedule's step count

    resumed_params, resumed_state = _run(
        opt, restored["params"], grads_seq[3:], restored["opt_state"]
    )
    _assert_trees_equal(resumed_params, straight_params)
    _assert_trees_equal(resumed_state, straight_state)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_haiku_transformed_model(case):
    """A Haiku ``transform``ed MLP trains with an adamx optimizer; params stay a Haiku mapping."""
    import haiku as hk

    net = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([16, 1])(x)))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((32, 3)), jnp.float32)
    y = jnp.sum(x, axis=1, keepdims=True)
    with relaxed():  # Haiku's initialisers are not strict-clean
        params = net.init(jax.random.PRNGKey(0), x)

    def loss(p):
        with relaxed():
            return jnp.mean((net.apply(p, x) - y) ** 2)

    opt = case.make(case.learning_rate / 10)
    state = opt.init(params)
    start = float(loss(params))
    train = jax.jit(lambda p, s: adamx.step(opt, jax.grad(loss)(p), s, p))
    for _ in range(50):
        params, state = train(params, state)
    assert float(loss(params)) < 0.5 * start
    assert set(params) == {"mlp/~/linear_0", "mlp/~/linear_1"}


def test_optax_transforms_inside_adamx_chain():
    """optax's own transforms are members of adamx.chain like any other; the moments see their
    output: chain(optax clip, adamx blocks) equals optax's clip followed by optax's adam."""
    params = jax.tree.map(jnp.asarray, random_tree(0))
    grads = _grad_sequence(params, 10)
    ours = adamx.chain(
        optax.clip_by_global_norm(1.0),
        adamx.ema(0.9),
        adamx.bias_correction(0.9),
        adamx.scale_by_second_moment(0.999),
        optax.scale(-1e-2),
    )
    with relaxed():
        reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
        p_ref, _ = _run(reference, params, grads)
    p_ours, _ = _run(ours, params, grads)
    # float32; the gap is optax's float32 bias correction (~2e-5 relative in early steps, see
    # tests/test_adam.py): 10 steps of lr 1e-2 stay within 1e-6. Without the tap (moments fed the
    # first moment instead of the clipped gradient) the difference is O(lr).
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_inside_optax_inject_hyperparams(case):
    """``optax.inject_hyperparams`` rebuilds the optimizer inside ``update`` from traced values
    (every numeric argument, e.g. AdaGrad's initial accumulator, arrives traced there). The first
    step equals the plain optimizer's; changing the injected learning rate needs no recompile."""
    params = jax.tree.map(jnp.asarray, random_tree(0))
    grads = _grad_sequence(params, 2)
    traces = []
    with relaxed():  # optax's own bookkeeping is not strict-clean
        tx = optax.inject_hyperparams(case.make)(case.learning_rate)
        state = tx.init(params)

        @jax.jit
        def update(grads, state):
            traces.append(None)
            return tx.update(grads, state, params)

        injected, state = update(grads[0], state)
        # `Case.make` takes `learning_rate`
        state.hyperparams["learning_rate"] = 2 * state.hyperparams["learning_rate"]
        doubled, state = update(grads[1], state)
    plain = case.make(case.learning_rate)
    expected, plain_state = plain.update(grads[0], plain.init(params), params)
    _assert_trees_close(injected, expected, rtol=1e-6, atol=1e-7)
    undoubled, _ = plain.update(grads[1], plain_state, params)
    assert len(traces) == 1
    assert any(
        not np.allclose(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(doubled), jax.tree.leaves(undoubled), strict=True)
    )
