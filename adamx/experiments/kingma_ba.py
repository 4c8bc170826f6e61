"""Kingma & Ba (2014), section 6, in miniature: Adam against the classic optimizers on digits.

Adam's paper compares it with SGD with Nesterov momentum, AdaGrad, RMSProp and AdaDelta on
(6.1) L2-regularised multinomial logistic regression with the step size decayed as
:math:`\\alpha_t = \\alpha / \\sqrt{t}`, (6.2) a multilayer perceptron of two ReLU hidden layers
trained with dropout, and (6.3) a convolutional network with dropout; (6.4, Figure 4) it ablates
the bias correction. This module repeats the protocol on scikit-learn's bundled 8x8 digits (1797
images, no download), small enough for two CPU cores:

* data: the digits standardised with the training set's statistics, one fixed 80/20 split
  (1438 train / 359 test), minibatches of 128 (the remainder of an epoch is dropped);
* ``logreg``: softmax regression 64 -> 10 on the pixels, cost = cross-entropy +
  ``L2 / 2 * ||W||^2``, zero initialisation, every optimizer's step size multiplied by
  ``1 / sqrt(t)`` (``adamx.scale_by_schedule`` chained after the optimizer);
* ``mlp``: 64 -> 256 -> 256 -> 10 ReLU (the paper: 1000 units), dropout 0.2 on the input and 0.5
  on the hidden layers;
* ``cnn``: conv 3x3x32 - conv 3x3x32 - max-pool 2x2 - dense 128 - dense 10, ReLU, dropout 0.2 on
  the input and 0.5 on the dense layer (the paper's c64-c64-c128-1000 on CIFAR-10, shrunk);
* every optimizer starts from the same initialisation and sees the same minibatches (both drawn
  from the seed); Adam uses the paper's defaults ``b1=0.9, b2=0.999, eps=1e-8``; SGD uses Nesterov
  momentum 0.9, RMSProp decay 0.9, AdaDelta Zeiler's ``rho=0.95, eps=1e-6``, AdaGrad adamx's
  (optax's) defaults;
* learning rates: the paper searched "a dense grid" and reported the best. `LEARNING_RATES` holds
  the best of `SEARCH_GRID` (lowest mean final training cost over 2 seeds) found by
  ``--search`` with the default epochs; ``--search`` reruns that grid (every rate and seed of an
  optimizer in one vmapped, jitted step) and reports the best;
* the reported cost is the paper's y-axis: the training cost of the (stochastic, with dropout)
  objective, averaged over the minibatches of each epoch.

Each train step is ``adamx.step`` inside ``jax.jit`` with the params and optimizer state donated,
vmapped over "lanes" (seeds, or seeds x learning rates): one compile per (model, optimizer). The
learning rate lives in the optimizer state (``adamx.inject_hyperparams``), so lanes differ by value
only.

Run it from the repository root, after ``pip install -e ".[examples]"``::

    python -m adamx.experiments.kingma_ba [--epochs N] [--seeds N] [--optimizers adam,sgd_nesterov]
        [--experiments logreg,mlp,cnn] [--out DIR] [--search] [--ablation]

It prints one table per experiment and writes ``DIR/kingma_ba.png`` (training cost against epochs,
one panel per experiment, like the paper's Figures 1-3) and ``DIR/kingma_ba.json`` (every curve).
``--ablation`` runs Figure 4 instead: Adam with and without bias correction, each assembled from
adamx's blocks (`adam_from_blocks`), over ``b1 in {0, 0.9}``, ``b2 in {0.99, 0.999, 0.9999}`` and
``log10(lr) in {-5, ..., -1}`` on the MLP after 10 epochs, and writes ``DIR/ablation.png`` (a
heat map of the final cost) and ``DIR/ablation.json``.

From Python (the notebooks)::

    from adamx.experiments import kingma_ba
    results = kingma_ba.run(experiments=["mlp"], optimizers=["adam", "adagrad"], epochs=20)
    print(kingma_ba.table(results))
    kingma_ba.plot(results, "kingma_ba.png")

scikit-learn, matplotlib and (optionally) tqdm are imported inside the functions that use them;
adamx itself needs only jax.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import adamx

EXPERIMENTS = ("logreg", "mlp", "cnn")
OPTIMIZERS = ("adam", "sgd_nesterov", "adagrad", "rmsprop", "adadelta")
EXTRA_OPTIMIZERS = ("adamw", "adamax", "nadam")
ALL_OPTIMIZERS = OPTIMIZERS + EXTRA_OPTIMIZERS
TITLES = {
    "logreg": "Logistic regression (paper 6.1)",
    "mlp": "MLP with dropout (paper 6.2)",
    "cnn": "CNN with dropout (paper 6.3)",
}
LABELS = {
    "adam": "Adam",
    "sgd_nesterov": "SGDNesterov",
    "adagrad": "AdaGrad",
    "rmsprop": "RMSProp",
    "adadelta": "AdaDelta",
    "adamw": "AdamW",
    "adamax": "AdaMax",
    "nadam": "Nadam",
}
#: Epochs of the default run (the paper: 45, 200 and 45; digits has 11 minibatches an epoch).
DEFAULT_EPOCHS = {"logreg": 30, "mlp": 40, "cnn": 10}
DEFAULT_SEEDS = 3
BATCH_SIZE = 128
TEST_FRACTION = 0.2
SPLIT_SEED = 0
L2 = 1e-4
HIDDEN = 256
CNN_CHANNELS = 16
CNN_DENSE = 128
INPUT_DROPOUT = 0.2
HIDDEN_DROPOUT = 0.5
NUM_CLASSES = 10

#: The step sizes searched by ``--search``: half decades from 1e-4 to 1.
SEARCH_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)

#: Base learning rate per experiment and optimizer. For the paper's five it is the best of
#: `SEARCH_GRID` by mean final training cost (seeds 0 and 1, the default epochs; ``python -m
#: adamx.experiments.kingma_ba --search --seeds 2``). AdamW, AdaMax and Nadam were not searched:
#: they reuse Adam's rate. For ``logreg`` every rate is multiplied by ``1 / sqrt(t)``.
LEARNING_RATES: dict[str, dict[str, float]] = {
    "logreg": {
        "adam": 3e-1,
        "sgd_nesterov": 1.0,
        "adagrad": 1.0,
        "rmsprop": 3e-1,
        "adadelta": 1.0,
        "adamw": 3e-1,
        "adamax": 3e-1,
        "nadam": 3e-1,
    },
    "mlp": {
        "adam": 3e-3,
        "sgd_nesterov": 3e-2,
        "adagrad": 1e-1,
        "rmsprop": 3e-3,
        "adadelta": 1.0,
        "adamw": 3e-3,
        "adamax": 3e-3,
        "nadam": 3e-3,
    },
    "cnn": {
        "adam": 1e-2,
        "sgd_nesterov": 3e-2,
        "adagrad": 1e-1,
        "rmsprop": 3e-3,
        "adadelta": 1.0,
        "adamw": 1e-2,
        "adamax": 1e-2,
        "nadam": 1e-2,
    },
}

Params = Any


# ----------------------------------------------------------------------------------------------
# Optimizers


def adam_from_blocks(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    *,
    bias_corrected: bool = True,
) -> adamx.GradientTransformation:
    """Adam assembled from adamx's blocks; ``bias_corrected=False`` drops both corrections.

    With the corrections it is ``adamx.adam``; without, it is RMSProp with momentum (the paper's
    section 6.4): ``chain(ema(b1), scale_by_second_moment(b2, bias_correction=False),
    scale_by_learning_rate(lr))``.
    """
    if bias_corrected:
        return adamx.chain(
            adamx.ema(b1),
            adamx.bias_correction(b1),
            adamx.scale_by_second_moment(b2, eps=eps),
            adamx.scale_by_learning_rate(learning_rate),
        )
    return adamx.chain(
        adamx.ema(b1),
        adamx.scale_by_second_moment(b2, eps=eps, bias_correction=False),
        adamx.scale_by_learning_rate(learning_rate),
    )


def _optimizer_spec(name: str) -> tuple[Callable[..., adamx.GradientTransformation], dict]:
    """``(factory, fixed keyword arguments)``; the factory's first argument is the learning rate."""
    specs: dict[str, tuple[Callable[..., adamx.GradientTransformation], dict]] = {
        "adam": (adamx.adam, {"b1": 0.9, "b2": 0.999, "eps": 1e-8}),
        "sgd_nesterov": (adamx.sgd, {"momentum": 0.9, "nesterov": True}),
        "adagrad": (adamx.adagrad, {}),
        "rmsprop": (adamx.rmsprop, {"decay": 0.9, "eps": 1e-8}),
        "adadelta": (adamx.adadelta, {"rho": 0.95, "eps": 1e-6}),
        "adamw": (adamx.adamw, {"weight_decay": 1e-4}),
        "adamax": (adamx.adamax, {}),
        "nadam": (adamx.nadam, {}),
    }
    if name not in specs:
        raise ValueError(f"Unknown optimizer {name!r}; choose from {', '.join(ALL_OPTIMIZERS)}.")
    return specs[name]


def _inv_sqrt_decay(count: jax.Array) -> jax.Array:
    """``1 / sqrt(t)`` with ``t = count + 1`` (the paper's section 6.1 decay)."""
    return jax.lax.rsqrt((count + 1).astype(jnp.float32))


# ----------------------------------------------------------------------------------------------
# Data and models (pure JAX)


@dataclasses.dataclass(frozen=True)
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data() -> Data:
    """The digits, split 80/20 by a fixed permutation and standardised with the training set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = int(round(TEST_FRACTION * len(x)))
    test, train = order[:n_test], order[n_test:]
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.where(std > 0, std, np.float32(1.0)).astype(np.float32)
    x = (x - mean) / std
    return Data(x[train], y[train], x[test], y[test])


def _dense(key: jax.Array, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
    """He-initialised dense layer: ``N(0, 2 / fan_in)`` weights, zero biases."""
    scale = np.float32(math.sqrt(2.0 / fan_in))
    w = jax.random.normal(key, (fan_in, fan_out), jnp.float32) * scale
    return {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}


def _conv(key: jax.Array, c_in: int, c_out: int) -> dict[str, jax.Array]:
    scale = np.float32(math.sqrt(2.0 / (9 * c_in)))
    w = jax.random.normal(key, (3, 3, c_in, c_out), jnp.float32) * scale
    return {"w": w, "b": jnp.zeros((c_out,), jnp.float32)}


def _affine(layer: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return x @ layer["w"] + layer["b"][None, :]


def _dropout(key: jax.Array | None, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout; the identity when ``key`` is None (evaluation)."""
    if key is None:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _logreg_init(key: jax.Array) -> Params:
    del key  # convex: start at zero, as usual
    return {"w": jnp.zeros((64, NUM_CLASSES), jnp.float32), "b": jnp.zeros((10,), jnp.float32)}


def _logreg_apply(params: Params, x: jax.Array, key: jax.Array | None) -> jax.Array:
    del key
    return _affine(params, x)


def _logreg_penalty(params: Params) -> jax.Array:
    return 0.5 * L2 * jnp.sum(params["w"] ** 2)


def _mlp_init(key: jax.Array) -> Params:
    k1, k2, k3 = jax.random.split(key, 3)
    return [_dense(k1, 64, HIDDEN), _dense(k2, HIDDEN, HIDDEN), _dense(k3, HIDDEN, NUM_CLASSES)]


def _mlp_apply(params: Params, x: jax.Array, key: jax.Array | None) -> jax.Array:
    keys: list[jax.Array | None] = list(jax.random.split(key, 3)) if key is not None else [None] * 3
    x = _dropout(keys[0], x, INPUT_DROPOUT)
    for i, layer in enumerate(params[:-1]):
        x = _dropout(keys[i + 1], jax.nn.relu(_affine(layer, x)), HIDDEN_DROPOUT)
    return _affine(params[-1], x)


def _cnn_init(key: jax.Array) -> Params:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "conv1": _conv(k1, 1, CNN_CHANNELS),
        "conv2": _conv(k2, CNN_CHANNELS, CNN_CHANNELS),
        "dense": _dense(k3, 4 * 4 * CNN_CHANNELS, CNN_DENSE),
        "out": _dense(k4, CNN_DENSE, NUM_CLASSES),
    }


def _conv_apply(layer: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """3x3 "SAME" convolution + ReLU as one matmul over the 9 shifted copies (im2col).

    Under ``vmap`` over lanes this stays a batched matmul, where XLA's CPU convolution with
    per-lane kernels becomes a slow grouped convolution.
    """
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate(
        [padded[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)], axis=-1
    )
    y = patches.reshape(n * h * w, 9 * c) @ layer["w"].reshape(9 * c, -1)
    return jax.nn.relu(y + layer["b"][None, :]).reshape(n, h, w, -1)


def _cnn_apply(params: Params, x: jax.Array, key: jax.Array | None) -> jax.Array:
    k_in, k_dense = jax.random.split(key) if key is not None else (None, None)
    x = _dropout(k_in, x, INPUT_DROPOUT)
    n = x.shape[0]
    x = x.reshape(n, 8, 8, 1)
    x = _conv_apply(params["conv2"], _conv_apply(params["conv1"], x))
    x = x.reshape(n, 4, 2, 4, 2, CNN_CHANNELS).max(axis=(2, 4)).reshape(n, -1)
    x = _dropout(k_dense, jax.nn.relu(_affine(params["dense"], x)), HIDDEN_DROPOUT)
    return _affine(params["out"], x)


@dataclasses.dataclass(frozen=True)
class Model:
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array, jax.Array | None], jax.Array]
    penalty: Callable[[Params], jax.Array] | None = None
    decay: Callable[[jax.Array], jax.Array] | None = None  # step-size schedule for all optimizers


MODELS = {
    "logreg": Model(_logreg_init, _logreg_apply, _logreg_penalty, _inv_sqrt_decay),
    "mlp": Model(_mlp_init, _mlp_apply),
    "cnn": Model(_cnn_init, _cnn_apply),
}


def _cost(model: Model, params: Params, x: jax.Array, y: jax.Array, key: jax.Array | None):
    """The training cost: mean cross-entropy (plus the L2 penalty where the model has one)."""
    log_probs = jax.nn.log_softmax(model.apply(params, x, key), axis=-1)
    one_hot = jax.nn.one_hot(y, NUM_CLASSES, dtype=log_probs.dtype)
    cost = -jnp.mean(jnp.sum(one_hot * log_probs, axis=-1))
    if model.penalty is not None:
        cost = cost + model.penalty(params)
    return cost


# ----------------------------------------------------------------------------------------------
# Training: one jitted, donated step per (model, optimizer), vmapped over lanes


def _train(
    model: Model,
    data: Data,
    factory: Callable[..., adamx.GradientTransformation],
    fixed: dict[str, Any],
    lane_hparams: dict[str, np.ndarray],
    lane_seeds: np.ndarray,
    epochs: int,
    on_epoch: Callable[[], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train one model with one optimizer in ``L`` lanes at once.

    Lane ``i`` has seed ``lane_seeds[i]`` (initialisation, minibatch order, dropout) and the
    hyperparameters ``{name: values[i]}`` of ``lane_hparams`` (at least ``learning_rate``).

    Returns:
      ``(costs, test_accuracy)``: the mean minibatch training cost of each epoch, ``(L, epochs)``,
      and the final test accuracy, ``(L,)``.
    """
    n_lanes = len(lane_seeds)
    names = sorted(lane_hparams)
    first = {name: float(lane_hparams[name][0]) for name in names}
    # Only the per-lane values live in the state; everything else is passed through unchanged.
    static = [n for n in inspect.signature(factory).parameters if n not in lane_hparams]
    tx = adamx.inject_hyperparams(factory, static_args=static)(**first, **fixed)
    if model.decay is not None:
        tx = adamx.chain(tx, adamx.scale_by_schedule(model.decay))

    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    seeds = np.unique(lane_seeds)
    keys = jax.vmap(jax.random.key)(jnp.asarray(lane_seeds, jnp.uint32))
    init_keys, dropout_keys = jax.vmap(jax.random.split, out_axes=1)(keys)

    def init(key, hparams):
        params = model.init(key)
        state = tx.init(params)
        for name in names:
            state = adamx.set_hyperparam(state, name, hparams[name])
        return params, state

    hparams = {name: jnp.asarray(lane_hparams[name], jnp.float32) for name in names}
    params, state = jax.jit(jax.vmap(init))(init_keys, hparams)

    def train_step(params, state, idx, keys, step):
        def one(p, s, i, k):
            k = jax.random.fold_in(k, step)
            cost, grads = jax.value_and_grad(lambda q: _cost(model, q, x_train[i], y_train[i], k))(
                p
            )
            p, s = adamx.step(tx, grads, s, p)
            return p, s, cost

        return jax.vmap(one)(params, state, idx, keys)

    train_step = jax.jit(train_step, donate_argnums=(0, 1))

    def test_accuracy(params):
        logits = model.apply(params, jnp.asarray(data.x_test), None)
        predicted = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jnp.mean((predicted == jnp.asarray(data.y_test)).astype(jnp.float32))

    rngs = {int(s): np.random.default_rng(int(s)) for s in seeds}
    n_train = len(data.x_train)
    n_batches = n_train // BATCH_SIZE
    costs = np.zeros((n_lanes, epochs))
    step = 0
    for epoch in range(epochs):
        orders = {s: rng.permutation(n_train).astype(np.int32) for s, rng in rngs.items()}
        lane_orders = np.stack([orders[int(s)] for s in lane_seeds])
        epoch_costs = []
        for b in range(n_batches):
            idx = lane_orders[:, b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
            params, state, cost = train_step(params, state, idx, dropout_keys, np.int32(step))
            epoch_costs.append(cost)
            step += 1
        costs[:, epoch] = np.asarray(jnp.mean(jnp.stack(epoch_costs), axis=0))
        if on_epoch is not None:
            on_epoch()
    accuracy = np.asarray(jax.jit(jax.vmap(test_accuracy))(params))
    return costs, accuracy


# ----------------------------------------------------------------------------------------------
# Progress


class _TextBar:
    """A minimal in-place progress bar on stderr, used when tqdm is not installed."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.desc, self.start = total, 0, "", time.perf_counter()

    def set_description(self, desc: str) -> None:
        self.desc = desc
        self._draw()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw()

    def _draw(self) -> None:
        width = 30
        filled = int(width * self.n / max(self.total, 1))
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(
            f"\r{self.desc:<22} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.n}/{self.total} epochs {elapsed:5.0f} s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class _NoBar:
    def set_description(self, desc: str) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _TextBar(total)
    return tqdm(total=total, unit="epoch", file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# The comparison


@dataclasses.dataclass
class Results:
    """What `run` returns.

    Attributes:
      costs: ``costs[experiment][optimizer]``, the training cost per seed and epoch,
        ``(n_seeds, epochs)``.
      test_accuracy: ``test_accuracy[experiment][optimizer]``, ``(n_seeds,)``.
      learning_rates: the base learning rate used for each ``[experiment][optimizer]``.
      search: with ``search=True``, ``search[experiment][optimizer][lr]`` is the mean final cost of
        each learning rate of the grid (``inf`` when it diverged); else empty.
      seeds: the seeds.
      wall_time: seconds, compiles included.
    """

    costs: dict[str, dict[str, np.ndarray]]
    test_accuracy: dict[str, dict[str, np.ndarray]]
    learning_rates: dict[str, dict[str, float]]
    search: dict[str, dict[str, dict[float, float]]]
    seeds: list[int]
    wall_time: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of everything (NaN and infinities as ``null``)."""

        def clean(a: Any) -> Any:
            return [clean(v) for v in a] if np.ndim(a) else (float(a) if np.isfinite(a) else None)

        return {
            "paper": "Kingma & Ba (2014), Adam, section 6, on scikit-learn's digits",
            "seeds": self.seeds,
            "batch_size": BATCH_SIZE,
            "wall_time_s": self.wall_time,
            "experiments": {
                exp: {
                    opt: {
                        "learning_rate": self.learning_rates[exp][opt],
                        "train_cost": clean(self.costs[exp][opt]),
                        "test_accuracy": clean(self.test_accuracy[exp][opt]),
                        **(
                            {
                                "search": {
                                    repr(k): clean(v) for k, v in self.search[exp][opt].items()
                                }
                            }
                            if self.search.get(exp, {}).get(opt)
                            else {}
                        ),
                    }
                    for opt in self.costs[exp]
                }
                for exp in self.costs
            },
        }


def _as_list(
    value: str | Iterable[str] | None, default: Sequence[str], known: Sequence[str], what: str
):
    if value is None:
        return list(default)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    unknown = [v for v in items if v not in known]
    if unknown or not items:
        raise ValueError(f"Unknown {what} {unknown}; choose from {', '.join(known)}.")
    return items


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"`seeds` must be >= 1, got {seeds}.")
        return list(range(seeds))
    return [int(s) for s in seeds]


def _final(costs: np.ndarray) -> np.ndarray:
    """The last epoch's cost, ``inf`` where a lane diverged."""
    last = costs[..., -1]
    return np.where(np.isfinite(last), last, np.inf)


def run(
    experiments: str | Iterable[str] | None = None,
    optimizers: str | Iterable[str] | None = None,
    epochs: int | dict[str, int] | None = None,
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    progress: bool = True,
    *,
    search: bool = False,
    learning_rates: dict[str, dict[str, float]] | None = None,
    grid: Sequence[float] = SEARCH_GRID,
) -> Results:
    """Train every optimizer on every experiment and collect the curves.

    Args:
      experiments: names from `EXPERIMENTS` (a list or a comma-separated string); default all.
      optimizers: names from `ALL_OPTIMIZERS`; default the paper's five, `OPTIMIZERS`.
      epochs: one number for all experiments, or ``{experiment: epochs}``; default
        `DEFAULT_EPOCHS`.
      seeds: how many seeds (``0, 1, ...``) or the seeds themselves.
      progress: show a progress bar on stderr (tqdm if installed).
      search: try every learning rate of ``grid`` (all in one vmapped step) and keep the best
        (lowest mean final training cost), as the paper did.
      learning_rates: overrides of `LEARNING_RATES`, ``{experiment: {optimizer: lr}}``.
      grid: the learning rates ``search`` tries.

    Returns:
      `Results`.
    """
    start = time.perf_counter()
    exps = _as_list(experiments, EXPERIMENTS, EXPERIMENTS, "experiments")
    opts = _as_list(optimizers, OPTIMIZERS, ALL_OPTIMIZERS, "optimizers")
    seed_list = _seed_list(seeds)
    if epochs is None:
        n_epochs = dict(DEFAULT_EPOCHS)
    elif isinstance(epochs, int):
        n_epochs = dict.fromkeys(EXPERIMENTS, epochs)
    else:
        n_epochs = {**DEFAULT_EPOCHS, **epochs}
    if any(n_epochs[e] < 1 for e in exps):
        raise ValueError(f"epochs must be >= 1, got {n_epochs}.")
    data = load_data()

    bar = _progress_bar(sum(n_epochs[e] for e in exps) * len(opts), progress)
    costs: dict[str, dict[str, np.ndarray]] = {}
    accuracy: dict[str, dict[str, np.ndarray]] = {}
    used_lrs: dict[str, dict[str, float]] = {}
    searched: dict[str, dict[str, dict[float, float]]] = {}
    try:
        for exp in exps:
            costs[exp], accuracy[exp], used_lrs[exp], searched[exp] = {}, {}, {}, {}
            for opt in opts:
                bar.set_description(f"{exp}/{opt}")
                factory, fixed = _optimizer_spec(opt)
                if search:
                    lrs = np.repeat(np.asarray(grid, np.float64), len(seed_list))
                    lane_seeds = np.tile(np.asarray(seed_list), len(grid))
                else:
                    lr = (learning_rates or {}).get(exp, {}).get(opt, LEARNING_RATES[exp][opt])
                    lrs = np.full(len(seed_list), lr)
                    lane_seeds = np.asarray(seed_list)
                c, a = _train(
                    MODELS[exp],
                    data,
                    factory,
                    fixed,
                    {"learning_rate": lrs},
                    lane_seeds,
                    n_epochs[exp],
                    on_epoch=bar.update,
                )
                if search:
                    c = c.reshape(len(grid), len(seed_list), -1)
                    a = a.reshape(len(grid), len(seed_list))
                    finals = _final(c).mean(axis=1)
                    best = int(np.argmin(finals))  # the first (smallest) lr among ties
                    searched[exp][opt] = {
                        float(g): float(f) for g, f in zip(grid, finals, strict=True)
                    }
                    c, a, lr = c[best], a[best], float(grid[best])
                costs[exp][opt], accuracy[exp][opt], used_lrs[exp][opt] = c, a, float(lr)
    finally:
        bar.close()
    return Results(costs, accuracy, used_lrs, searched, seed_list, time.perf_counter() - start)


def _mean_std(values: np.ndarray, fmt: str) -> str:
    if not np.all(np.isfinite(values)):
        return "diverged"
    return f"{format(values.mean(), fmt)} ± {format(values.std(), fmt)}"


def table(results: Results) -> str:
    """One table per experiment: learning rate, final training cost and test accuracy (mean ± std
    over seeds), optimizers sorted by final cost."""
    lines = []
    n = len(results.seeds)
    for exp, per_opt in results.costs.items():
        epochs = next(iter(per_opt.values())).shape[-1]
        lines.append(f"{TITLES[exp]}: {epochs} epochs, {n} seed{'s' if n > 1 else ''}")
        header = (
            f"  {'optimizer':<12} {'lr':>8}  {'final train cost':>20}  {'test accuracy (%)':>17}"
        )
        lines.append(header)
        lines.append("  " + "-" * (len(header) - 2))
        order = sorted(per_opt, key=lambda o: float(np.mean(_final(per_opt[o]))))
        for opt in order:
            cost = per_opt[opt][:, -1]
            acc = 100 * results.test_accuracy[exp][opt]
            lines.append(
                f"  {LABELS[opt]:<12} {results.learning_rates[exp][opt]:>8.0e}  "
                f"{_mean_std(cost, '.4f'):>20}  {_mean_std(acc, '.1f'):>17}"
            )
        if results.search.get(exp):
            lines.append("  search (mean final cost per learning rate):")
            for opt, found in results.search[exp].items():
                cells = "  ".join(
                    f"{lr:.0e}:{'inf' if not math.isfinite(v) else format(v, '.3g')}"
                    for lr, v in found.items()
                )
                lines.append(f"    {LABELS[opt]:<12} {cells}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _figure(width: float, height: float, ncols: int, nrows: int = 1):
    """A matplotlib figure on the Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot(results: Results, path: str | Path) -> Path:
    """Training cost against epochs, one panel per experiment (mean over seeds, min-max band),
    log-scaled like the paper's Figures 1-3. Writes a PNG at ``path`` and returns it."""
    exps = list(results.costs)
    fig, axes = _figure(4.6 * len(exps), 3.8, len(exps))
    for ax, exp in zip(axes[0], exps, strict=True):
        for i, (opt, c) in enumerate(results.costs[exp].items()):
            epochs = np.arange(1, c.shape[-1] + 1)
            color = f"C{i}"
            ax.plot(epochs, np.nanmean(c, axis=0), color=color, label=LABELS[opt], lw=1.6)
            if c.shape[0] > 1:
                ax.fill_between(
                    epochs, np.nanmin(c, axis=0), np.nanmax(c, axis=0), color=color, alpha=0.15
                )
        ax.set_yscale("log")
        ax.set_title(TITLES[exp])
        ax.set_xlabel("iterations over entire dataset (epochs)")
        ax.set_ylabel("training cost")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------------------------
# Figure 4: the bias-correction ablation


@dataclasses.dataclass
class Ablation:
    """What `run_ablation` returns.

    ``final_cost[variant, i_b1, i_b2, i_lr]`` is the mean over seeds of the last epoch's training
    cost (``inf`` when diverged); variant 0 is Adam with bias correction, 1 without.
    """

    experiment: str
    epochs: int
    b1s: tuple[float, ...]
    b2s: tuple[float, ...]
    log10_lrs: tuple[int, ...]
    final_cost: np.ndarray
    seeds: list[int]
    wall_time: float

    def to_json(self) -> dict[str, Any]:
        fc = self.final_cost
        return {
            "experiment": self.experiment,
            "epochs": self.epochs,
            "b1": list(self.b1s),
            "b2": list(self.b2s),
            "log10_lr": list(self.log10_lrs),
            "seeds": self.seeds,
            "final_cost": {
                variant: np.where(np.isfinite(fc[v]), fc[v], np.nan).tolist()
                for v, variant in enumerate(("bias_corrected", "uncorrected"))
            },
            "wall_time_s": self.wall_time,
        }


def run_ablation(
    experiment: str = "mlp",
    epochs: int = 10,
    seeds: int | Sequence[int] = 1,
    b1s: Sequence[float] = (0.0, 0.9),
    b2s: Sequence[float] = (0.99, 0.999, 0.9999),
    log10_lrs: Sequence[int] = (-5, -4, -3, -2, -1),
    progress: bool = True,
) -> Ablation:
    """The paper's Figure 4: Adam with and without bias correction over a grid of b1, b2, lr.

    Both variants are `adam_from_blocks`; each runs the whole grid (and every seed) in one vmapped
    step, with ``b1``, ``b2`` and the learning rate injected into the optimizer state.
    """
    start = time.perf_counter()
    if experiment not in MODELS:
        raise ValueError(
            f"Unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}."
        )
    seed_list = _seed_list(seeds)
    data = load_data()
    grid = np.array(
        [(b1, b2, 10.0**e, s) for b1 in b1s for b2 in b2s for e in log10_lrs for s in seed_list],
        np.float64,
    )
    shape = (len(b1s), len(b2s), len(log10_lrs), len(seed_list))
    bar = _progress_bar(2 * epochs, progress)
    finals = []
    try:
        for corrected in (True, False):
            bar.set_description(f"ablation/{'with' if corrected else 'without'} correction")
            costs, _ = _train(
                MODELS[experiment],
                data,
                adam_from_blocks,
                {"bias_corrected": corrected},
                {"b1": grid[:, 0], "b2": grid[:, 1], "learning_rate": grid[:, 2]},
                grid[:, 3].astype(np.int64),
                epochs,
                on_epoch=bar.update,
            )
            finals.append(_final(costs).reshape(shape).mean(axis=-1))
    finally:
        bar.close()
    return Ablation(
        experiment,
        epochs,
        tuple(float(b) for b in b1s),
        tuple(float(b) for b in b2s),
        tuple(int(e) for e in log10_lrs),
        np.stack(finals),
        seed_list,
        time.perf_counter() - start,
    )


def ablation_table(ablation: Ablation) -> str:
    """The ablation's final costs as text: one row per (variant, b1, b2), one column per lr."""
    lines = [
        f"Bias-correction ablation (paper Fig. 4) on {ablation.experiment}, "
        f"cost after {ablation.epochs} epochs, {len(ablation.seeds)} seed(s)",
        "  " + f"{'':<28}" + "".join(f"{f'lr=1e{e}':>11}" for e in ablation.log10_lrs),
    ]
    for v, variant in enumerate(("with correction", "without")):
        for i, b1 in enumerate(ablation.b1s):
            for j, b2 in enumerate(ablation.b2s):
                row = ablation.final_cost[v, i, j]
                # Four significant digits keep each cell within its column (a blown-up run can
                # reach 1e4 and more), with a space between columns whatever the value.
                cells = "".join(
                    f" {'diverged' if not math.isfinite(x) else format(x, '.4g'):>10}" for x in row
                )
                lines.append(f"  {variant:<16} b1={b1:<3g} b2={b2:<6g}{cells}")
    return "\n".join(lines) + "\n"


def plot_ablation(ablation: Ablation, path: str | Path) -> Path:
    """Heat maps of the final cost: rows with / without bias correction, columns b1; each map has
    b2 down and log10(lr) across, colour = log10 of the cost (white where it diverged)."""
    fc = ablation.final_cost
    finite = fc[np.isfinite(fc)]
    vmin = float(np.log10(finite.min())) if finite.size else 0.0
    vmax = float(np.log10(finite.max())) if finite.size else 1.0
    fig, axes = _figure(4.2 * len(ablation.b1s), 5.6, len(ablation.b1s), 2)
    image = None
    for v, variant in enumerate(("with bias correction", "without (RMSProp+momentum)")):
        for i, b1 in enumerate(ablation.b1s):
            ax = axes[v, i]
            cell = np.where(np.isfinite(fc[v, i]), fc[v, i], np.nan)
            image = ax.imshow(np.log10(cell), cmap="viridis_r", vmin=vmin, vmax=vmax, aspect="auto")
            for (j, k), value in np.ndenumerate(fc[v, i]):
                text = "div." if not math.isfinite(value) else f"{value:.2f}"
                ax.text(k, j, text, ha="center", va="center", fontsize=7, color="k")
            ax.set_xticks(range(len(ablation.log10_lrs)), [str(e) for e in ablation.log10_lrs])
            ax.set_yticks(range(len(ablation.b2s)), [f"{b:g}" for b in ablation.b2s])
            ax.set_xlabel("log10(learning rate)")
            ax.set_ylabel("b2")
            ax.set_title(f"b1={b1:g}, {variant}", fontsize="medium")
    if image is not None:
        fig.colorbar(image, ax=axes, label=f"log10 training cost after {ablation.epochs} epochs")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m adamx.experiments.kingma_ba", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"epochs for every experiment (default {DEFAULT_EPOCHS}; 10 for --ablation)",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="number of seeds (default 3; 1 for --ablation)"
    )
    parser.add_argument(
        "--optimizers",
        default=",".join(OPTIMIZERS),
        help=f"comma-separated, from {','.join(ALL_OPTIMIZERS)} (default the paper's five)",
    )
    parser.add_argument(
        "--experiments", default=None, help="comma-separated, from logreg,mlp,cnn (default all)"
    )
    parser.add_argument("--out", default="kingma_ba_results", help="folder for the PNG and JSON")
    parser.add_argument("--search", action="store_true", help="search the learning-rate grid")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="run the Figure 4 bias-correction ablation instead (on the first of --experiments "
        "when given, else the MLP)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> Results | Ablation:
    """The command line: run, print the tables, write the PNG and JSON into ``--out``."""
    args = _parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    if args.ablation:
        experiment = args.experiments.split(",")[0] if args.experiments else "mlp"
        ablation = run_ablation(
            experiment, epochs=args.epochs or 10, seeds=args.seeds or 1, progress=progress
        )
        print(ablation_table(ablation))
        png = plot_ablation(ablation, out / "ablation.png")
        (out / "ablation.json").write_text(json.dumps(ablation.to_json(), indent=1))
        print(f"wrote {png} and {out / 'ablation.json'} ({ablation.wall_time:.0f} s)")
        return ablation
    results = run(
        args.experiments,
        args.optimizers,
        args.epochs,
        args.seeds or DEFAULT_SEEDS,
        progress,
        search=args.search,
    )
    print(table(results))
    png = plot(results, out / "kingma_ba.png")
    (out / "kingma_ba.json").write_text(json.dumps(results.to_json(), indent=1))
    print(f"wrote {png} and {out / 'kingma_ba.json'} ({results.wall_time:.0f} s)")
    return results


if __name__ == "__main__":
    main()
