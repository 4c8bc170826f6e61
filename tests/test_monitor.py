"""`monitor` and `diagnostics`: optimizer statistics recorded inside the step.

References: each statistic recomputed in numpy float64 from an independent numpy AdamW step (the
first step, where the moments are the gradient's), within `RTOL` (float32 arithmetic against
float64); the fused kernel's statistics against the jnp path's within `KERNEL_RTOL` (its sums are
taken in double, in another order than XLA's float32 sums); the monitored optimizer's params and
state against the plain optimizer's, bit for bit.
"""

from __future__ import annotations

import re
import struct

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.kernels import _derived

RTOL = 2e-5  # float32 statistics against float64 numpy
KERNEL_RTOL = 1e-5  # the kernel's double sums against XLA's float32 sums
LR, WD, EPS, CLIP = 1e-2, 1e-2, 1e-6, 0.8

RNG = np.random.default_rng(0)
PARAMS = {
    "emb": jnp.asarray(RNG.standard_normal((3, 6)), jnp.float32),
    "head": {
        "b": jnp.asarray(RNG.standard_normal(4), jnp.float32),
        "w": jnp.asarray(RNG.standard_normal((5, 4)), jnp.float32),
    },
}
GRADS = jax.tree.map(lambda p: jnp.asarray(RNG.standard_normal(p.shape), jnp.float32), PARAMS)
# Coordinates where eps dominates Adam's denominator: |g| below eps (first step: sqrt(v_hat) = |g|).
GRADS["emb"] = GRADS["emb"].at[0, :4].set(jnp.asarray([1e-8, -3e-7, 0.0, 2e-9], jnp.float32))


def _adamw():
    return adamx.adamw(LR, eps=EPS, weight_decay=WD)


def _clipped():
    return adamx.chain(adamx.clip(CLIP), _adamw())


def _reference(params, grads, clip=None):
    """The first step of AdamW in numpy float64, and each statistic of `monitor`'s docstring."""
    p = {k: np.asarray(v, np.float64) for k, v in _items(params)}
    g = {k: np.asarray(v, np.float64) for k, v in _items(grads)}
    gc = {k: np.clip(v, -clip, clip) if clip is not None else v for k, v in g.items()}
    # First step: m_hat = g, v_hat = g^2 (the bias corrections undo (1 - b)).
    d = {k: v / (np.abs(v) + EPS) for k, v in gc.items()}
    u = {k: -LR * (d[k] + WD * p[k]) for k in p}
    v_hat = {k: v**2 for k, v in gc.items()}
    out = {}

    def put(suffix, keys):
        cat = lambda t: np.concatenate([t[k].ravel() for k in keys])  # noqa: E731
        gg, uu, pp, vv, dd = cat(g), cat(u), cat(p), cat(v_hat), cat(d)
        out["grad_norm" + suffix] = np.linalg.norm(gg)
        out["update_norm" + suffix] = np.linalg.norm(uu)
        out["param_norm" + suffix] = np.linalg.norm(pp)
        out["update_ratio" + suffix] = np.sqrt(np.mean(uu**2)) / np.sqrt(np.mean(pp**2))
        out["cosine" + suffix] = uu @ gg / (np.linalg.norm(uu) * np.linalg.norm(gg))
        out["nonfinite_grads" + suffix] = np.sum(~np.isfinite(gg))
        out["eps_fraction" + suffix] = np.mean(EPS > np.sqrt(vv))
        out["v_min" + suffix] = vv.min()
        out["v_max" + suffix] = vv.max()
        if clip is not None:
            out["clip_fraction" + suffix] = np.mean(np.abs(gg) > clip)
        if not suffix:
            out["effective_lr"] = -(uu @ dd) / (dd @ dd)

    put("", list(p))
    for k in p:
        put("/" + k, [k])
    return out


def _items(tree):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path, simple=True, separator="/"), x) for path, x in flat]


@pytest.fixture(scope="module")
def first_step():
    """The monitored clip+AdamW's first step, on the jnp path and through the kernel."""
    opt = adamx.monitor(_clipped())
    state = opt.init(PARAMS)
    _, jnp_state = adamx.step(opt, GRADS, state, PARAMS, fused=False)
    _, fused_state = adamx.step(opt, GRADS, state, PARAMS)
    return opt, state, adamx.diagnostics(jnp_state), adamx.diagnostics(fused_state)


def test_each_statistic_equals_its_numpy_formula(first_step):
    _, _, stats, _ = first_step
    reference = _reference(PARAMS, GRADS, clip=CLIP)
    assert set(stats) == set(reference)
    assert float(reference["eps_fraction/emb"]) == pytest.approx(4 / 18)  # the case is exercised
    assert 0 < float(reference["clip_fraction"]) < 1
    for key, expected in reference.items():
        np.testing.assert_allclose(float(stats[key]), expected, rtol=RTOL, atol=1e-12, err_msg=key)
    assert all(stats[key].dtype == jnp.float32 and stats[key].shape == () for key in stats)


def test_kernel_statistics_match_the_jnp_path(first_step):
    _, _, stats, fused = first_step
    assert set(fused) == set(stats)
    for key in stats:
        np.testing.assert_allclose(
            float(fused[key]), float(stats[key]), rtol=KERNEL_RTOL, atol=1e-12, err_msg=key
        )


def _adamw_16bit():
    return adamx.adamw(LR, eps=EPS, weight_decay=WD, **adamx.low_bit_moments(16))


@pytest.mark.parametrize(
    "every, make",
    [(1, _adamw), (2, _adamw), (1, _adamw_16bit)],
    ids=["every1", "every2", "stochastic_bf16"],
)
def test_monitored_adamw_is_fused_in_one_pass_and_equals_the_plain_one_bit_for_bit(every, make):
    # (Stochastic rounding's loop variable: the values go through block arrays in that pass.)
    plain, opt = make(), adamx.monitor(make(), every=every)
    p_plain, s_plain = PARAMS, plain.init(PARAMS)
    p_mon, s_mon = PARAMS, opt.init(PARAMS)
    assert _derived.why_not(opt, adamx.apply_updates, GRADS, s_mon, PARAMS) is None
    plan = _derived._prepare(opt, adamx.apply_updates, GRADS, s_mon, PARAMS)[0]
    assert plan.reducers == []  # no pass of its own: the sums are taken in the update's pass
    assert all(x.reductions for xs in plan.leaves.values() for x in xs)
    # With nothing due (every > 1) the pass skips the sums: a loop without them, chosen by `due`.
    gated = ["} else {" in program.body for program in plan.programs.values()]
    assert gated == [every > 1] * len(gated)
    step = jax.jit(lambda p, s, g, tx: adamx.step(tx, g, s, p, fused=True), static_argnums=3)
    for k in range(3):
        grads = jax.tree.map(lambda g, k=k: g * (1.0 + k), GRADS)
        p_plain, s_plain = step(p_plain, s_plain, grads, plain)
        p_mon, s_mon = step(p_mon, s_mon, grads, opt)
    bits = lambda x: np.atleast_1d(np.asarray(x)).view(np.uint8)  # noqa: E731
    plain_leaves = jax.tree.leaves((p_plain, s_plain))
    for a, b in zip(plain_leaves, jax.tree.leaves((p_mon, s_mon.inner)), strict=True):
        np.testing.assert_array_equal(bits(a), bits(b))
    assert int(s_mon.count) == 3


def test_every_keeps_the_last_statistics_between_due_steps():
    opt = adamx.monitor(_adamw(), every=2, per_leaf=False)
    params, state = PARAMS, opt.init(PARAMS)
    assert all(np.isnan(float(v)) for v in adamx.diagnostics(state).values())
    seen = []
    for k in range(3):
        grads = jax.tree.map(lambda g, k=k: g * (1.0 + k), GRADS)
        params, state = adamx.step(opt, grads, state, params)
        seen.append(float(adamx.diagnostics(state)["grad_norm"]))
    norm = lambda k: float(adamx.global_norm(GRADS)) * (1.0 + k)  # noqa: E731
    assert seen == pytest.approx([norm(0), norm(0), norm(2)], rel=RTOL)


def test_the_kernel_unpacks_and_derives_the_statistics_only_on_due_steps():
    # Every equation reading the kernel's in-pass sums is inside the `cond` of `every`.
    opt = adamx.monitor(_adamw(), every=2)
    step = lambda p, s, g: adamx.step(opt, g, s, p, fused=True)  # noqa: E731
    jaxpr = jax.make_jaxpr(step)(PARAMS, opt.init(PARAMS), GRADS).jaxpr
    sums = {
        v
        for e in jaxpr.eqns
        if e.primitive.name == "ffi_call"
        for v in e.outvars
        if v.aval.dtype == np.uint32 and v.aval.ndim == 1
    }
    assert len(sums) == len(PARAMS["head"]) + 1  # one vector of sums per leaf
    reads = lambda e: any(not isinstance(v, jex.Literal) and v in sums for v in e.invars)  # noqa: E731
    readers = [e.primitive.name for e in jaxpr.eqns if reads(e)]
    assert readers == ["cond"]


def _outside_branches(text: str) -> tuple[list[str], list[str]]:
    """In a compiled module's text: the reductions XLA runs outside every conditional's branches
    (in the entry computation and what it calls, fusions included), and the arrays the entry
    computation copies."""
    bodies = {}
    for block in text.split("\n\n"):
        head = re.match(r"\s*(ENTRY )?%?([\w.-]+)", block)
        if head:
            bodies["ENTRY" if head.group(1) else head.group(2)] = block
    reductions, seen, todo = [], set(), ["ENTRY"]
    while todo:
        body = bodies[todo.pop()]
        reductions += re.findall(r"= \S+ reduce\(", body)
        for name in re.findall(r"(?:calls|to_apply)=%([\w.-]+)", body):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    copies = re.findall(r"= \w+\[\d[\d,]*\]\S* copy\(", bodies["ENTRY"])
    return reductions, copies


def test_on_the_jnp_path_a_step_with_nothing_due_takes_no_sum():
    """`update` then `apply_updates` under `jit`, params and state donated: with ``every > 1``
    the sums are in the `cond`'s taken branch alone, and the step writes the donated buffers in
    place (no copy of them for the branch). Params and state bit for bit the plain AdamW's; the
    statistics of a due step the ``every=1`` monitor's (same operations, compiled apart:
    within `KERNEL_RTOL`)."""

    def jitted(tx):
        def step(p, s, g):
            updates, s = tx.update(g, s, p)
            return adamx.apply_updates(p, updates), s

        return jax.jit(step, donate_argnums=(0, 1))

    plain, every1, every2 = _adamw(), adamx.monitor(_adamw()), adamx.monitor(_adamw(), every=2)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
    text = jitted(every2).lower(PARAMS, every2.init(PARAMS), GRADS).compile().as_text()
    assert _outside_branches(text) == ([], [])
    text = jitted(every1).lower(PARAMS, every1.init(PARAMS), GRADS).compile().as_text()
    assert _outside_branches(text)[0]  # (the check sees reductions where there are)
    runs = {}
    for name, tx in [("plain", plain), ("every1", every1), ("every2", every2)]:
        p, s, step, seen = copy(PARAMS), tx.init(PARAMS), jitted(tx), []
        for k in range(3):
            p, s = step(p, s, jax.tree.map(lambda g, k=k: g * (1.0 + k), GRADS))
            seen.append({key: float(v) for key, v in adamx.diagnostics(s).items()})
        runs[name] = (p, s, seen)
    bits = lambda x: np.atleast_1d(np.asarray(x)).view(np.uint8)  # noqa: E731
    (p_plain, s_plain, _), (p_mon, s_mon, _) = runs["plain"], runs["every2"]
    plain_leaves = jax.tree.leaves((p_plain, s_plain))
    for a, b in zip(plain_leaves, jax.tree.leaves((p_mon, s_mon.inner)), strict=True):
        np.testing.assert_array_equal(bits(a), bits(b))
    (_, _, want), (_, _, got) = runs["every1"], runs["every2"]
    assert got[1] == got[0]  # kept
    for k in (0, 2):
        assert set(got[k]) == set(want[k])
        for key in want[k]:
            np.testing.assert_allclose(got[k][key], want[k][key], rtol=KERNEL_RTOL, err_msg=key)


def test_keys_are_key_paths_and_foreign_transformations_get_the_basic_statistics():
    stats = adamx.diagnostics(adamx.monitor(adamx.sgd(0.1)).init(PARAMS))
    assert "update_ratio/head/w" in stats and "grad_norm" in stats
    assert not any(k.startswith(("eps_fraction", "v_min", "clip_fraction")) for k in stats)
    per_leaf = adamx.diagnostics(adamx.monitor(_adamw(), per_leaf=False).init(PARAMS))
    assert sorted(per_leaf) == sorted(
        [
            "cosine",
            "effective_lr",
            "eps_fraction",
            "grad_norm",
            "nonfinite_grads",
            "param_norm",
            "update_norm",
            "update_ratio",
            "v_max",
            "v_min",
        ]
    )


def test_nonfinite_gradients_are_counted_per_leaf():
    opt = adamx.monitor(_adamw())
    grads = dict(GRADS, emb=GRADS["emb"].at[1, 2].set(jnp.nan).at[2, 0].set(jnp.inf))
    _, state = adamx.step(opt, grads, opt.init(PARAMS), PARAMS)
    stats = adamx.diagnostics(state)
    assert float(stats["nonfinite_grads"]) == 2.0
    assert float(stats["nonfinite_grads/emb"]) == 2.0
    assert float(stats["nonfinite_grads/head/w"]) == 0.0


def test_layout_depends_on_the_arguments_only():
    opt = adamx.monitor(adamx.inject_hyperparams(adamx.adamw)(learning_rate=LR))
    concrete = jax.tree.structure(opt.init(PARAMS))
    assert jax.tree.structure(jax.eval_shape(opt.init, PARAMS)) == concrete
    params, state = adamx.step(opt, GRADS, opt.init(PARAMS), PARAMS)
    assert jax.tree.structure(state) == concrete
    assert float(adamx.diagnostics(state)["effective_lr"]) == pytest.approx(LR * 1.0, rel=1e-2)


def test_inside_multi_steps_the_statistics_follow_the_inner_steps():
    opt = adamx.MultiSteps(adamx.monitor(_adamw(), per_leaf=False), every_k_schedule=2)
    params, state = PARAMS, opt.init(PARAMS)
    params, state = adamx.step(opt, GRADS, state, params)
    assert np.isnan(float(adamx.diagnostics(state)["grad_norm"]))  # accumulating only
    params, state = adamx.step(opt, GRADS, state, params)
    # The inner step sees the mean of the two gradients, here GRADS itself.
    assert float(adamx.diagnostics(state)["grad_norm"]) == pytest.approx(
        float(adamx.global_norm(GRADS)), rel=RTOL
    )


def test_make_train_step_and_a_checkpoint_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    opt = adamx.monitor(_adamw())

    def loss(p, x):
        return jnp.sum((p["head"]["w"] @ x) ** 2) + jnp.sum(p["emb"] ** 2) + jnp.sum(p["head"]["b"])

    train = adamx.make_train_step(loss, opt)
    params = jax.tree.map(jnp.copy, PARAMS)
    params, state, _ = train(params, opt.init(params), jnp.ones(4, jnp.float32))
    before = adamx.diagnostics(state)
    assert np.isfinite(float(before["update_ratio/head/w"]))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "state", jax.eval_shape(opt.init, params))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    after = adamx.diagnostics(restored)
    assert {k: float(v) for k, v in after.items()} == {k: float(v) for k, v in before.items()}


def test_nnx_optimizer_records_under_both_update_paths():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, adamx.monitor(_adamw()), wrt=nnx.Param)

    def loss(m):
        return jnp.mean((m(jnp.ones((4, 3), jnp.float32)) - 1.0) ** 2)

    @nnx.jit
    def fused(model, optimizer):
        adamx.nnx_update(optimizer, model, nnx.grad(loss)(model))

    @nnx.jit
    def plain(model, optimizer):
        optimizer.update(model, nnx.grad(loss)(model))

    fused(model, optimizer)
    first = adamx.diagnostics(optimizer.opt_state)
    plain(model, optimizer)
    second = adamx.diagnostics(optimizer.opt_state)
    assert set(first) == set(second) and "update_ratio/kernel" in first
    assert float(first["update_ratio/kernel"]) > 0 and float(second["grad_norm"]) > 0


def _events(path):
    """The scalars of a TensorBoard event file: (tag, step, value), read record by record."""
    from tensorboardX.proto import event_pb2

    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
        at += 12 + length + 4
        out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_logging_to_tensorboard(tmp_path):
    tensorboardX = pytest.importorskip("tensorboardX")
    opt = adamx.monitor(_adamw())
    params, state = PARAMS, opt.init(PARAMS)
    with tensorboardX.SummaryWriter(str(tmp_path)) as writer:
        for step in range(2):
            params, state = adamx.step(opt, GRADS, state, params)
            for key, value in adamx.diagnostics(state).items():
                writer.add_scalar(key, float(value), step)
    (events,) = tmp_path.glob("events.out.tfevents.*")
    logged = {(tag, step): value for tag, step, value in _events(events)}
    stats = adamx.diagnostics(state)
    assert len(logged) == 2 * len(stats)
    assert logged[("update_ratio/head/w", 1)] == pytest.approx(float(stats["update_ratio/head/w"]))


def test_update_needs_params_and_every_must_be_a_positive_int():
    opt = adamx.monitor(_adamw())
    with pytest.raises(ValueError, match="needs the params"):
        opt.update(GRADS, opt.init(PARAMS))
    with pytest.raises(ValueError, match="positive int"):
        adamx.monitor(_adamw(), every=0)


def test_kernel_statistics_over_many_blocks_and_chunks():
    # 70,000 elements: three chunks of the kernel's threads, 35 blocks of its in-pass sums.
    params = {"w": jnp.asarray(RNG.standard_normal(70_000), jnp.float32)}
    grads = {"w": jnp.asarray(RNG.standard_normal(70_000), jnp.float32).at[5].set(jnp.nan)}
    opt = adamx.monitor(_adamw(), per_leaf=False)
    state = opt.init(params)
    fused = adamx.diagnostics(adamx.step(opt, grads, state, params, fused=True)[1])
    reference = adamx.diagnostics(adamx.step(opt, grads, state, params, fused=False)[1])
    assert float(fused["nonfinite_grads"]) == 1.0
    assert float(reference["nonfinite_grads"]) == 1.0
    # A max over a NaN is NaN (XLA's semantics; XLA:CPU's own loop over a long leaf may skip it,
    # docs/design.md, section 8).
    assert np.isnan(float(fused["v_max"]))
    grads = {"w": grads["w"].at[5].set(0.5)}
    fused = adamx.diagnostics(adamx.step(opt, grads, state, params, fused=True)[1])
    reference = adamx.diagnostics(adamx.step(opt, grads, state, params, fused=False)[1])
    for key in reference:
        np.testing.assert_allclose(
            float(fused[key]), float(reference[key]), rtol=KERNEL_RTOL, err_msg=key
        )


def test_a_monitored_low_bit_optimizer_has_its_second_moment_statistics_under_jit():
    """16-bit moments (stochastic rounding; 8-bit ones would stay float32 in leaves this small)
    under `jit` take the bounded path (adamx/kernels/_bounded.py), which replays
    the chain's plan a chunk at a time and so would skip the blocks' probe: under a monitor the
    chain runs as written instead, and the second-moment statistics are there on both paths.
    Reference: the eager step's statistics; tolerance `KERNEL_RTOL` (XLA's fused sums)."""
    opt = adamx.monitor(adamx.adamw(LR, eps=EPS, weight_decay=WD, **adamx.low_bit_moments(16)))
    state = opt.init(PARAMS)
    assert "eps_fraction" in state.statistics
    _, eager = opt.update(GRADS, state, PARAMS)
    _, jitted = jax.jit(opt.update)(GRADS, state, PARAMS)
    want, got = adamx.diagnostics(eager), adamx.diagnostics(jitted)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=KERNEL_RTOL, err_msg=key)


@pytest.mark.parametrize("every", [1, 100])
def test_a_state_made_by_another_monitor_is_refused(every):
    """A state from another monitor's ``init`` (global statistics only, so other keys) is refused
    by ``update`` with a sentence naming both key sets and the fix, on the jnp path of each
    ``every``."""
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    state = adamx.monitor(adamx.adamw(1e-2), every=every, per_leaf=False).init(params)
    tx = adamx.monitor(adamx.adamw(1e-2), every=every)
    with pytest.raises(ValueError, match="Make the state with this monitor's `init`"):
        jax.jit(tx.update)(params, state, params)
