"""Step time of adamx against optax, torch and the memory-bandwidth limit, side by side in one process.

Run ``python -m adamx.benchmarks`` (``--help`` for the options). For each configuration (a
parameter count, a number of leaves, a parameter dtype) it builds one AdamW of each library on the
same parameters and gradients, compiles the JAX steps ahead of time (reporting the compile time),
warms each up, and then times them in interleaved rounds: in every round each implementation runs
``--steps`` steps, in an order that rotates between rounds, each after a collection, a 50 ms pause
and one untimed step (so nothing the previous implementation left behind is charged to it). A
configuration of many leaves also times the same step on the params packed by `adamx.flatten` and
on one leaf of the same size (``x 1 leaf``). It reports the median step time of
each; its ratios to the limit and to the peers, each the median over rounds of the two times'
ratio in the same round (`paired_ratio`: a shared machine's slow spells cancel); the state bytes
per parameter measured from the arrays; and the temporary bytes of the compiled adamx step
(``memory_analysis()``).

The limit is measured in the same run by a kernel of this repository: one in-place pass that reads
p, g, m, v and writes p, m, v with the same dtypes as the AdamW state (28 bytes per float32
parameter) and no arithmetic to speak of. A jitted triad ``p + a*g`` is reported beside it; it
under-reports the bandwidth a one-pass kernel reaches on CPUs (performance.md).

Times depend on the machine and the moment: quote ratios measured in one run, not milliseconds
from different runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import adamx
from adamx.core._chain import unbounded
from adamx.kernels import _bounded, _derived, _native

# The peers are optional: the `bench` extra installs them (`pip install -e ".[bench]"`).
NOT_INSTALLED = 'not installed; `pip install -e ".[bench]"` (optax and torch) to compare against it'

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark configuration: ``params`` parameters in ``leaves`` leaves of ``dtype``."""

    params: int
    leaves: int
    dtype: str = "float32"

    @property
    def name(self) -> str:
        size = f"{self.params / 1e6:g}M"
        return f"{size} {self.dtype}, {self.leaves} " + ("leaf" if self.leaves == 1 else "leaves")


DEFAULT_CONFIGS = (
    Config(50_000_000, 1),
    Config(50_000_000, 500),
    Config(5_000_000, 1),
    Config(5_000_000, 2000),
    Config(50_000_000, 1, "bfloat16"),
    Config(50_000_000, 500, "bfloat16"),
    Config(100_000_000, 1),
)
QUICK_CONFIGS = (Config(200_000, 1), Config(200_000, 50), Config(200_000, 50, "bfloat16"))


def leaf_sizes(total: int, leaves: int, seed: int = 0) -> list[int]:
    """``leaves`` sizes summing to ``total``: log-uniform mixed sizes (matrices and small vectors)."""
    if leaves == 1:
        return [total]
    rng = np.random.default_rng(seed)
    weights = np.exp(rng.uniform(0, np.log(4096), leaves))
    sizes = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(int)
    sizes[np.argmax(sizes)] += total - int(sizes.sum())
    return [int(s) for s in sizes]


def _tree_bytes(tree: Any) -> int:
    return sum(
        int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
    )


@dataclasses.dataclass
class Implementation:
    """A step to time: ``run(steps)`` runs ``steps`` steps and blocks until they are done."""

    name: str
    run: Callable[[int], None]
    compile_s: float | None = None
    state_bytes: int | None = None
    temp_bytes: int | None = None
    bytes_per_param: float | None = None  # what the limit kernel moves, for the limit itself


def _jax_step(step, params, state, grads) -> tuple[Callable[[int], None], float, int]:
    """Compile ``step(params, state, grads) -> (params, state)`` with params and state donated."""
    jitted = jax.jit(step, donate_argnums=(0, 1))
    start = time.perf_counter()
    compiled = jitted.lower(params, state, grads).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp = int(getattr(memory, "temp_size_in_bytes", 0)) if memory is not None else 0
    box = [params, state]

    def run(steps: int) -> None:
        p, s = box
        for _ in range(steps):
            p, s = compiled(p, s, grads)
        jax.block_until_ready((p, s))
        box[:] = [p, s]

    return run, compile_s, temp


def stream(moment_dtype: Any) -> adamx.GradientTransformation:
    """The memory-bandwidth limit as a transformation: one pass that reads p, g, m and v and writes
    p, m and v, with an add or two per element (``u = m + v``, ``m' = g``, ``v' = v + g``).

    `adamx.step` runs it through the kernel derived from its jaxpr, like any optimizer, so the
    limit is measured with the same loop, threads and chunks as the steps it bounds."""

    def init(params):
        return tuple(jax.tree.map(lambda p: jnp.zeros(p.shape, moment_dtype), params) for _ in "mv")

    def update(updates: Any, state: Any, params: Any = None, **extra_args: Any) -> tuple[Any, Any]:
        del params, extra_args
        grads = updates
        m, v = state
        u = jax.tree.map(lambda a, b, g: (a + b).astype(g.dtype), m, v, grads)
        new_m = jax.tree.map(lambda g, a: g.astype(a.dtype), grads, m)
        new_v = jax.tree.map(lambda b, g: b + g.astype(b.dtype), v, grads)
        return u, (new_m, new_v)

    return adamx.GradientTransformation(init, update)


def _copy(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def build(config: Config, seed: int = 0) -> tuple[list[Implementation], dict[str, Any]]:
    """Every implementation available here, on the same parameters and gradients."""
    dtype = jnp.dtype(config.dtype)
    rng = np.random.default_rng(seed)
    sizes = leaf_sizes(config.params, config.leaves, seed)
    host = [rng.standard_normal(s, dtype=np.float32) for s in sizes]
    params = {f"leaf{i:05d}": jnp.asarray(x, dtype) for i, x in enumerate(host)}
    grads = {
        k: jnp.asarray(1e-2 * rng.standard_normal(v.shape, dtype=np.float32), dtype)
        for k, v in params.items()
    }
    notes: dict[str, Any] = {}
    impls: list[Implementation] = []

    # The limit: one in-place pass over p, g, m, v with the AdamW state's dtypes.
    available, why = _native.status()
    notes["native_kernel"] = why
    tx = adamx.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    state_dtypes = [x.dtype for x in jax.tree.leaves(tx.init(params)) if np.ndim(x) > 0]
    moment_dtype = state_dtypes[0] if state_dtypes else dtype
    if available and jax.default_backend() == "cpu":
        limit = stream(moment_dtype)

        def stream_step(p, s, g):
            return adamx.step(limit, g, s, p, fused=True)

        run, compile_s, temp = _jax_step(stream_step, _copy(params), limit.init(params), grads)
        moved = 3 * dtype.itemsize + 4 * np.dtype(moment_dtype).itemsize  # p r/w, g r; m, v r/w
        impls.append(Implementation("limit (1-pass kernel)", run, compile_s, None, temp, moved))

    # A jitted triad on the same number of elements (reported beside the limit).
    def triad(p, s, g):
        return jax.tree.map(lambda a, b: a + jnp.asarray(0.5, a.dtype) * b, p, g), s

    run, compile_s, _ = _jax_step(triad, _copy(params), (), grads)
    impls.append(Implementation("triad p+a*g", run, compile_s, None, None, 3 * dtype.itemsize))

    # adamx: the fused kernel, and the jnp path.
    for label, fused in (("adamx fused", True), ("adamx jnp", False)):
        if fused and not available:
            notes["adamx fused"] = why
            continue
        state = tx.init(params)

        def adamx_step(p, s, g, fused=fused):
            return adamx.step(tx, g, s, p, fused=fused)

        run, compile_s, temp = _jax_step(adamx_step, _copy(params), state, grads)
        impls.append(Implementation(label, run, compile_s, _tree_bytes(state), temp))

    # Many leaves: the same step on the params packed by `adamx.flatten` (one buffer, so one
    # moment buffer each), and on one leaf of the same size (the time the flat step should match).
    if config.leaves > 1:
        flat_params, flat_grads = adamx.flatten(params), adamx.flatten(grads)
        one_leaf = {"leaf": jnp.concatenate([x.reshape(-1) for x in params.values()])}
        one_grad = {"leaf": jnp.concatenate([x.reshape(-1) for x in grads.values()])}
        label = "adamx fused" if available else "adamx jnp"
        for name, packed, packed_grads in (
            ("flat", flat_params, flat_grads),
            ("1 leaf", one_leaf, one_grad),
        ):
            state = tx.init(packed)

            def packed_step(p, s, g):
                return adamx.step(tx, g, s, p)

            run, compile_s, temp = _jax_step(packed_step, packed, state, packed_grads)
            impls.append(
                Implementation(f"{label} {name}", run, compile_s, _tree_bytes(state), temp)
            )

    # optax.
    try:
        import optax

        otx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        ostate = otx.init(params)

        def optax_step(p, s, g):
            updates, s = otx.update(g, s, p)
            return optax.apply_updates(p, updates), s

        run, compile_s, temp = _jax_step(optax_step, _copy(params), ostate, grads)
        impls.append(Implementation("optax", run, compile_s, _tree_bytes(ostate), temp))
    except ImportError:
        notes["optax"] = NOT_INSTALLED

    # torch, fused and foreach.
    try:
        import torch

        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
        for label, option in (("torch fused", "fused"), ("torch foreach", "foreach")):
            tensors = [torch.tensor(x).to(torch_dtype).requires_grad_() for x in host]
            for t, g in zip(tensors, grads.values(), strict=True):
                t.grad = torch.tensor(np.asarray(g, np.float32)).to(torch_dtype)
            try:
                opt = torch.optim.AdamW(
                    tensors,
                    lr=LEARNING_RATE,
                    weight_decay=WEIGHT_DECAY,
                    fused=option == "fused" or None,
                    foreach=option == "foreach" or None,
                )
                opt.step()
            except Exception as error:  # e.g. fused=True unsupported for a dtype on this build
                notes[label] = f"unavailable: {error}"
                continue

            def torch_run(steps: int, opt=opt) -> None:
                for _ in range(steps):
                    opt.step()

            state_bytes = sum(
                v.numel() * v.element_size()
                for s in opt.state.values()
                for v in s.values()
                if torch.is_tensor(v) and v.dim() > 0
            )
            impls.append(Implementation(label, torch_run, None, state_bytes, None))
    except ImportError:
        notes["torch"] = NOT_INSTALLED
    return impls, notes


def measure(impls: list[Implementation], rounds: int, steps: int) -> dict[str, list[float]]:
    """Per-step seconds of each implementation, one entry per round, in interleaved rounds."""
    for impl in impls:
        impl.run(2)  # warm up: page in buffers, first-call costs
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for r in range(rounds):
        order = impls[r % len(impls) :] + impls[: r % len(impls)]
        for impl in order:
            # Settle: the previous run's garbage is collected, and its thread pool (XLA's spins
            # after work) goes idle, so neither is charged to this run (measured: the step that
            # followed a 2000-leaf jnp step took 1.7x its time after a 50 ms pause).
            gc.collect()
            time.sleep(0.05)
            # and one untimed step: the first call after another implementation's pays for what
            # that one left behind (measured: the step run after a 2000-leaf step took 1.7x its
            # time over 5 steps, whichever step it was, and 0.98-1.01x of itself alone).
            impl.run(1)
            start = time.perf_counter()
            impl.run(steps)
            times[impl.name].append((time.perf_counter() - start) / steps)
    return times


def paired_ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """The median over rounds of ``name``'s time over ``base``'s in the same round.

    The two ran seconds apart, under the same load, so a shared machine's slow spells cancel in
    the ratio; a ratio of the two medians mixes rounds run under different loads.
    """
    return statistics.median(a / b for a, b in zip(times[name], times[base], strict=True))


def run_config(config: Config, rounds: int, steps: int, seed: int = 0) -> dict[str, Any]:
    """Build, time and summarise one configuration; returns a JSON-ready record."""
    impls, notes = build(config, seed)
    times = measure(impls, rounds, steps)
    median = {name: statistics.median(values) for name, values in times.items()}
    limit = next((i for i in impls if i.name.startswith("limit")), None)
    results = []
    for impl in impls:
        t = median[impl.name]
        row: dict[str, Any] = {
            "name": impl.name,
            "median_ms": 1e3 * t,
            "per_round_ms": [1e3 * x for x in times[impl.name]],
            "compile_s": impl.compile_s,
            "state_bytes_per_param": None
            if impl.state_bytes is None
            else impl.state_bytes / config.params,
            "temp_bytes": impl.temp_bytes,
        }
        one_leaf = next((name for name in median if name.endswith(" 1 leaf")), None)
        if one_leaf is not None and impl.name != one_leaf:
            row["ratio_to_1_leaf"] = paired_ratio(times, impl.name, one_leaf)
        for peer in ("limit (1-pass kernel)", "optax", "torch fused"):
            if peer in median and peer != impl.name:
                row[f"ratio_to_{peer.split()[0]}"] = paired_ratio(times, impl.name, peer)
        if impl.bytes_per_param is not None:
            row["bandwidth_GBps"] = impl.bytes_per_param * config.params / t / 1e9
        results.append(row)
    return {
        "config": dataclasses.asdict(config) | {"name": config.name},
        "limit_bytes_per_param": None if limit is None else limit.bytes_per_param,
        "results": results,
        "notes": notes,
    }


def _format(record: dict[str, Any]) -> str:
    lines = [f"\n## {record['config']['name']}"]
    if record["limit_bytes_per_param"]:
        lines[0] += f"  (limit moves {record['limit_bytes_per_param']:g} B/param)"
    header = f"{'implementation':<26}{'ms':>9}{'x limit':>9}{'x optax':>9}{'x torch':>9}"
    header += f"{'x 1 leaf':>9}{'compile s':>11}{'state B/p':>11}{'GB/s':>8}"
    lines += [header, "-" * len(header)]

    def cell(value, fmt, width):
        return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"

    for row in record["results"]:
        lines.append(
            f"{row['name']:<26}{row['median_ms']:>9.2f}"
            + cell(row.get("ratio_to_limit"), ".2f", 9)
            + cell(row.get("ratio_to_optax"), ".2f", 9)
            + cell(row.get("ratio_to_torch"), ".2f", 9)
            + cell(row.get("ratio_to_1_leaf"), ".2f", 9)
            + cell(row["compile_s"], ".2f", 11)
            + cell(row["state_bytes_per_param"], ".2f", 11)
            + cell(row.get("bandwidth_GBps"), ".1f", 8)
        )
    for key, note in record["notes"].items():
        lines.append(f"  {key}: {note}")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
    }
    for name in ("optax", "torch"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


# ---- other optimizers against AdamW on one tree -------------------------------------------------

# name -> builder(learning_rate): the optimizers `--compare` can time (``adamx.<name>`` by default).
BUILDERS: dict[str, Callable[[float], Any]] = {
    "adamw": lambda lr: adamx.adamw(lr, weight_decay=WEIGHT_DECAY),
    "adam": lambda lr: adamx.adam(lr),
    "lion": lambda lr: adamx.lion(lr),
    "adafactor": lambda lr: adamx.adafactor(lr),
    "lamb": lambda lr: adamx.lamb(lr),
    "adan": lambda lr: adamx.adan(lr),
    "ademamix": lambda lr: adamx.ademamix(lr),
    "schedule_free_adamw": lambda lr: adamx.schedule_free_adamw(lr),
    "prodigy": lambda lr: adamx.prodigy(lr),
    # AdamW with low-bit moments (docs/low_bit.md): the 8-bit pair runs its own fused kernel.
    "adamw_bf16_moments": lambda lr: adamx.adamw(
        lr, weight_decay=WEIGHT_DECAY, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16
    ),
    "adamw_16bit": lambda lr: adamx.adamw(
        lr, weight_decay=WEIGHT_DECAY, **adamx.low_bit_moments(16)
    ),
    "adamw_8bit": lambda lr: adamx.adamw(lr, weight_decay=WEIGHT_DECAY, **adamx.low_bit_moments(8)),
    # Kahan-compensated params (a third state buffer), fused with AdamW's step.
    "adamw_kahan": lambda lr: adamx.chain(
        adamx.adamw(lr, weight_decay=WEIGHT_DECAY), adamx.kahan_summation()
    ),
    "adamw_4bit": lambda lr: adamx.adamw(lr, weight_decay=WEIGHT_DECAY, **adamx.low_bit_moments(4)),
    # AdamW assembled from its blocks, as a user would: the same kernel (adamx/kernels/_derived.py).
    "adamw_built": lambda lr: adamx.chain(
        adamx.ema(0.9),
        adamx.bias_correction(0.9),
        adamx.scale_by_second_moment(0.999, eps=1e-8),
        adamx.add_decayed_weights(WEIGHT_DECAY),
        adamx.scale_by_learning_rate(lr),
    ),
    # AdamW after clipping by the global norm: a reduction pass, then the elementwise one.
    "clipped_adamw": lambda lr: adamx.chain(
        adamx.clip_by_global_norm(1.0), adamx.adamw(lr, weight_decay=WEIGHT_DECAY)
    ),
    "sgd_momentum": lambda lr: adamx.sgd(lr, 0.9),
    "sgd_nesterov": lambda lr: adamx.sgd(lr, 0.9, nesterov=True),
    # AdamW with its diagnostics recorded in the step (`--monitor`, docs/diagnostics.md).
    "monitored_adamw": lambda lr: adamx.monitor(adamx.adamw(lr, weight_decay=WEIGHT_DECAY)),
    "monitored_adamw_every100": lambda lr: adamx.monitor(
        adamx.adamw(lr, weight_decay=WEIGHT_DECAY), every=100
    ),
}
MONITORED = "monitored_adamw,monitored_adamw_every100"  # `--monitor`

# The optimizers whose step is elementwise, all fused on CPU (`--compare elementwise`).
ELEMENTWISE = (
    "adam,adamw,adamw_built,nadam,nadamw,adamax,adamaxw,amsgrad,radam,adabelief,yogi,adopt,"
    "ademamix,laprop,rmsprop,adagrad,sgd_momentum,sgd_nesterov,lion,adamw_bf16_moments,adamw_16bit"
)


def _path(tx: Any, params: Any, state: Any, grads: Any) -> str:
    """Which path `adamx.step` takes: ``"kernel"`` (one compiled pass) or ``"jnp"``."""
    try:
        jax.eval_shape(lambda p, s, g: adamx.step(tx, g, s, p, fused=True), params, state, grads)
    except ValueError:
        return "jnp"
    return "kernel"


def _moved_bytes(params: Any, state: Any, tx: Any = None, grads: Any = None) -> int:
    """What the step must move: params read and written, gradients read, state read and written
    in its elementwise pass, and what each reduction pass before it reads (LAMB's norms: a pass
    for the max, one for the sum of squares; `tx` and `grads` given, on the kernel's path;
    clipping's rescaled sum, taken only where the squares overflow, not counted)."""
    moved = 3 * _tree_bytes(params) + 2 * _tree_bytes(state)
    if tx is None:
        return moved
    from adamx.kernels import _derived

    plan, leaves, _ = _derived._prepare(tx, adamx.apply_updates, grads, state, params)
    if isinstance(plan, str):
        return moved
    for reducer in _derived.eager_passes(plan):  # not a pass only a cond's other branch runs
        for node, _ in reducer.slots:
            moved += math.prod(plan.flat.shapes[node]) * plan.flat.dtypes[node].itemsize
    return moved


def matrix_tree(seed: int = 0, size: int = 1024, dtype: Any = jnp.float32) -> dict[str, Any]:
    """A transformer-like tree: four ``size x size`` matrices, a stacked ``(4, size/4, size)`` leaf
    and vectors (biases, a norm scale)."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[-1]), dtype)

    return {
        "attention": {"q": normal(size, size), "k": normal(size, size), "v": normal(size, size)},
        "mlp": {"w": normal(size, size), "b": normal(size)},
        "stacked": normal(4, size // 4, size),
        "norm": {"scale": jnp.ones((size,), dtype)},
    }


def compare_optimizers(
    names: list[str], rounds: int = 7, steps: int = 5, seed: int = 0, size: int = 1024
) -> dict[str, Any]:
    """Step time of each optimizer relative to AdamW on `matrix_tree`, and its state bytes/param.

    A name ending in ``@jnp`` (``lamb@jnp``) times that optimizer's jnp path (``fused=False``)."""
    params = matrix_tree(seed, size)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    rng = np.random.default_rng(seed + 1)
    grads = jax.tree.map(
        lambda x: jnp.asarray(1e-2 * rng.standard_normal(x.shape, dtype=np.float32), x.dtype),
        params,
    )
    impls = []
    paths, moved = {}, {}
    names = [m for n in names for m in (ELEMENTWISE.split(",") if n == "elementwise" else [n])]
    for label in ["adamw", *[n for n in names if n != "adamw"]]:
        name, _, forced = label.partition("@")
        if forced not in ("", "jnp"):
            raise ValueError(
                f"`--compare` takes names, or names ending in `@jnp` for the jnp path; "
                f"got {label!r}. Write, e.g., `lamb@jnp`."
            )
        if name in BUILDERS:
            tx = BUILDERS[name](LEARNING_RATE)
        elif callable(getattr(adamx, name, None)):
            tx = getattr(adamx, name)(LEARNING_RATE)
        else:
            raise ValueError(
                f"`--compare` takes adamx optimizer names; got {name!r}, which adamx does not have."
            )
        state = tx.init(params)
        fused = False if forced else None
        paths[label] = "jnp" if forced else _path(tx, params, state, grads)
        moved[label] = _moved_bytes(params, state, tx, grads)  # the same work on either path

        def opt_step(p, s, g, tx=tx, fused=fused):
            return adamx.step(tx, g, s, p, fused=fused)

        run, compile_s, temp = _jax_step(opt_step, _copy(params), state, grads)
        impls.append(Implementation(label, run, compile_s, _tree_bytes(state), temp))
    times = measure(impls, rounds, steps)
    median = {name: statistics.median(values) for name, values in times.items()}
    rows = [
        {
            "name": impl.name,
            "median_ms": 1e3 * median[impl.name],
            "ratio_to_adamw": paired_ratio(times, impl.name, "adamw"),
            "compile_s": impl.compile_s,
            "state_bytes_per_param": (impl.state_bytes or 0) / n_params,
            "path": paths[impl.name],
            # time over AdamW's, divided by the bytes its passes must move over AdamW's: 1 is as
            # close to the memory-bandwidth limit as AdamW's own step
            "per_byte_to_adamw": paired_ratio(times, impl.name, "adamw")
            / (moved[impl.name] / moved["adamw"]),
        }
        for impl in impls
    ]
    return {"tree": f"matrix_tree(size={size})", "params": n_params, "results": rows}


# Optimizer and moment storage, for `--memory` (docs/low_bit.md): the step's peak, not only the state.
MEMORY_CASES: dict[str, Callable[[], Any]] = {
    "adamw float32": lambda: adamx.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
    "adamw bfloat16": lambda: BUILDERS["adamw_bf16_moments"](LEARNING_RATE),
    "adamw stochastic bfloat16": lambda: BUILDERS["adamw_16bit"](LEARNING_RATE),
    "adamw 8-bit": lambda: BUILDERS["adamw_8bit"](LEARNING_RATE),
    "adamw 4-bit": lambda: BUILDERS["adamw_4bit"](LEARNING_RATE),
    "adamw 4-bit (both blockwise)": lambda: adamx.adamw(
        LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        mu_dtype=adamx.blockwise_4bit(True),
        nu_dtype=adamx.blockwise_4bit(False),
    ),
    "lion 8-bit": lambda: adamx.lion(LEARNING_RATE, mu_dtype=adamx.blockwise_8bit(True)),
    "ademamix 8-bit": lambda: adamx.ademamix(LEARNING_RATE, **adamx.low_bit_moments(8)),
    "adopt 8-bit": lambda: adamx.adopt(LEARNING_RATE, **adamx.low_bit_moments(8)),
}


def step_memory(
    params: int = 1 << 24, leaves: int = 1, rounds: int = 0, steps: int = 1
) -> dict[str, Any]:
    """Per optimizer and storage: the state's bytes per parameter and the temporaries of the
    compiled step (``memory_analysis().temp_size_in_bytes``, params and state donated), for
    ``update`` + ``apply_updates`` and for `adamx.step`; compiled, so the numbers are exact and
    any machine gives them. With ``rounds``, beside them each of the two steps' time, in
    interleaved rounds of ``steps`` steps, and its ratio to float32 AdamW's ``update`` +
    ``apply_updates`` in the same round."""
    sizes = [params // leaves] * leaves
    like = {f"leaf{i:03d}": jax.ShapeDtypeStruct((n,), jnp.float32) for i, n in enumerate(sizes)}
    total = sum(sizes)
    rows = []
    impls: list[Implementation] = []
    rng = np.random.default_rng(0)
    values = {
        k: jnp.asarray(rng.standard_normal(x.shape, dtype=np.float32)) for k, x in like.items()
    }
    grads = jax.tree.map(lambda x: 1e-2 * x, values) if rounds else None
    for name, make in MEMORY_CASES.items():
        tx = make()
        state = jax.eval_shape(tx.init, like)
        for label in ("update_apply", "step") if rounds else ():

            def timed(p, s, g, tx=tx, label=label):
                if label == "step":
                    return adamx.step(tx, g, s, p)
                updates, s = tx.update(g, s, p)
                return adamx.apply_updates(p, updates), s

            run, _, _ = _jax_step(timed, _copy(values), tx.init(values), grads)
            impls.append(Implementation(f"{name}: {label}", run))

        temps = {}
        # Each compiled from a function of its own: the path is chosen when `jit` traces, and a
        # traced function is cached by identity.
        for label in ("update_apply", "written", "step", "step_without_kernel"):
            context: Any = contextlib.nullcontext()
            if label == "written":  # the chain op by op (the reference), not its bounded form
                context = unbounded()
            elif label == "step_without_kernel":  # as on GPU and TPU
                context = mock.patch.object(_derived, "_unavailable", lambda: "off")

            def fn(p, s, g, tx=tx, label=label):
                if label.startswith("step"):
                    return adamx.step(tx, g, s, p)
                updates, s = tx.update(g, s, p)
                return adamx.apply_updates(p, updates), s

            with context:
                compiled = jax.jit(fn, donate_argnums=(0, 1)).lower(like, state, like).compile()
            memory = compiled.memory_analysis()
            temps[label] = int(getattr(memory, "temp_size_in_bytes", 0)) if memory else 0
        state_bytes = _tree_bytes(state)
        path = _path(tx, like, state, like) if jax.default_backend() == "cpu" else "jnp"
        if path == "jnp" and _bounded.has_low_bit(state):
            # the step without the kernel: the bounded path where it takes the step (traced)
            reasons: list = []

            def check(p, s, g, tx=tx, reasons=reasons):
                reasons.append(_bounded.why_not(tx, adamx.apply_updates, g, s, p))
                return p

            jax.eval_shape(check, like, state, like)
            path = "bounded" if reasons[0] is None else path
        rows.append(
            {
                "name": name,
                "state_bytes_per_param": state_bytes / total,
                "temp_bytes_per_param_written": temps["written"] / total,
                "temp_bytes_per_param_update_apply": temps["update_apply"] / total,
                "temp_bytes_per_param_step": temps["step"] / total,
                "temp_bytes_per_param_step_without_kernel": temps["step_without_kernel"] / total,
                "peak_bytes_per_param_update_apply": (state_bytes + temps["update_apply"]) / total,
                "peak_bytes_per_param_step": (state_bytes + temps["step"]) / total,
                "step_path": path,
            }
        )
    if rounds:
        times = measure(impls, rounds, steps)
        base = f"{next(iter(MEMORY_CASES))}: update_apply"
        for row in rows:
            for label in ("update_apply", "step"):
                key = f"{row['name']}: {label}"
                row[f"ms_{label}"] = 1e3 * statistics.median(times[key])
                row[f"x_{label}"] = paired_ratio(times, key, base)
    return {"params": total, "leaves": leaves, "results": rows}


def _format_memory(record: dict[str, Any]) -> str:
    lines = [
        f"\n## step memory, {record['params'] / 1e6:.1f}M float32 params in {record['leaves']} "
        "leaves (bytes per param; temporaries from memory_analysis, params and state donated)"
    ]
    header = (
        f"{'optimizer, storage':<30}{'state':>7}{'temp op by op':>15}{'temp update+apply':>19}"
        f"{'peak':>7}{'temp step':>11}{'peak':>7}{'no kernel':>11}{'path':>8}"
    )
    if record["results"] and "x_step" in record["results"][0]:
        header += f"{'time u+a':>10}{'step':>8}"
        lines[0] += "; times over float32 update+apply, same rounds"
    lines += [header, "-" * len(header)]
    for row in record["results"]:
        lines.append(
            f"{row['name']:<30}{row['state_bytes_per_param']:>7.2f}"
            f"{row['temp_bytes_per_param_written']:>15.2f}"
            f"{row['temp_bytes_per_param_update_apply']:>19.2f}"
            f"{row['peak_bytes_per_param_update_apply']:>7.2f}"
            f"{row['temp_bytes_per_param_step']:>11.2f}{row['peak_bytes_per_param_step']:>7.2f}"
            f"{row['temp_bytes_per_param_step_without_kernel']:>11.2f}{row['step_path']:>8}"
            + (f"{row['x_update_apply']:>10.2f}{row['x_step']:>8.2f}" if "x_step" in row else "")
        )
    return "\n".join(lines)


def _format_comparison(record: dict[str, Any]) -> str:
    lines = [f"\n## optimizers on {record['tree']} ({record['params'] / 1e6:.2f}M params)"]
    header = (
        f"{'optimizer':<24}{'path':>7}{'ms':>9}{'x adamw':>9}{'per byte':>10}{'compile s':>11}"
        f"{'state B/p':>11}"
    )
    lines += [header, "-" * len(header)]
    for row in record["results"]:
        lines.append(
            f"{row['name']:<24}{row['path']:>7}{row['median_ms']:>9.2f}{row['ratio_to_adamw']:>9.2f}"
            f"{row['per_byte_to_adamw']:>10.2f}{row['compile_s']:>11.2f}"
            f"{row['state_bytes_per_param']:>11.2f}"
        )
    return "\n".join(lines)


def parse_configs(text: str) -> list[Config]:
    """``"50e6x1,50e6x500:bfloat16"`` -> configurations (params x leaves [: dtype])."""
    configs = []
    for item in text.split(","):
        spec, _, dtype = item.partition(":")
        params, _, leaves = spec.partition("x")
        configs.append(Config(int(float(params)), int(leaves or 1), dtype or "float32"))
    return configs


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m adamx.benchmarks",
        description="AdamW step time: adamx (fused kernel and jnp path), optax, torch fused and "
        "foreach, and the memory-bandwidth limit, measured side by side in one process. optax and "
        'torch come with the `bench` extra: pip install -e ".[bench]".',
    )
    parser.add_argument(
        "--configs",
        type=parse_configs,
        default=None,
        help="comma-separated PARAMSxLEAVES[:DTYPE], e.g. 50e6x1,50e6x500,5e6x2000:bfloat16 "
        "(default: the standard set; see --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="three 200k-parameter configurations instead of the default 5M to 50M ones: about "
        "a minute on 2 CPU cores with optax and torch installed, half that without (65 s and 29 s "
        "measured), compiles and imports included",
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--steps", type=int, default=5, help="steps per round (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="adamx-benchmark.json", help="where to write results")
    parser.add_argument(
        "--compare",
        default=None,
        help="comma-separated adamx optimizers to time against AdamW on a transformer-like tree "
        "of matrices (e.g. lion,adafactor,muon), or `elementwise` for every optimizer the kernel "
        "fuses, each with its time per byte moved over AdamW's; skips the AdamW configurations "
        "unless --configs is also given",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="--compare's tree: matrices of SIZE x SIZE, 5 SIZE^2 params in all (default 1024, "
        "5.24M params; 256 with --quick)",
    )
    parser.add_argument(
        "--monitor",
        action="store_true",
        help="`adamx.monitor(adamw)` recording every step and every 100 steps against the plain "
        "AdamW, both through `adamx.step`, as ratios (`--compare` of the two; --size as there: "
        "2000 is 20M params, 3164 50M)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="per optimizer and moment storage (float32, bfloat16, stochastic bfloat16, 8-bit, "
        "4-bit), the state's bytes and the compiled step's temporaries and peak per param, 16M "
        "params in 1 and in 16 leaves, beside each step's time over float32 AdamW's update + "
        "apply_updates (in --rounds interleaved rounds); skips the AdamW configurations unless "
        "--configs is also given",
    )
    args = parser.parse_args(argv)
    if args.size is not None and (args.size < 4 or args.size % 4):
        parser.error(f"--size must be a positive multiple of 4 (the stacked leaf); got {args.size}")
    if args.monitor:
        args.compare = ",".join(filter(None, [args.compare, MONITORED]))
    if (args.compare or args.memory) and not args.configs:
        configs: list[Config] = []
    else:
        configs = args.configs or list(QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS)
    env = environment()
    print(f"adamx benchmark: jax {env['jax']} on {env['backend']}, {env['cpus']} CPUs; "
          f"optax {env['optax']}, torch {env['torch']}; median of {args.rounds} rounds x "
          f"{args.steps} steps")  # fmt: skip
    missing = [name for name in ("optax", "torch") if env[name] is None]
    if missing:
        print(f"{' and '.join(missing)} not installed: the ratios to them are left out; "
              '`pip install -e ".[bench]"` installs them.')  # fmt: skip
    records = []
    for config in configs:
        record = run_config(config, args.rounds, args.steps, args.seed)
        print(_format(record), flush=True)
        records.append(record)
    output: dict[str, Any] = {"environment": env, "configs": records}
    if args.compare:
        names = [n.strip() for n in args.compare.split(",") if n.strip()]
        size = args.size or (256 if args.quick else 1024)
        comparison = compare_optimizers(names, args.rounds, args.steps, args.seed, size)
        print(_format_comparison(comparison), flush=True)
        output["optimizers"] = comparison
    if args.memory:
        output["memory"] = []
        for leaves in (1, 16):
            output["memory"].append(step_memory(1 << 24, leaves, args.rounds, args.steps))
            print(_format_memory(output["memory"][-1]), flush=True)
    with open(args.json, "w") as f:
        json.dump(output, f, indent=1)
    print(f"\nwrote {args.json}")
    return records
