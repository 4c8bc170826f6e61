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
        [--experiments logreg,mlp,cnn] [--out DIR] [--search [--grid LRS] [--select final|mean]]
        [--data PATH [--train-size N]] [--ablation]

It prints one table per experiment, then the paper's claims against the run (`claims_table`: each
claim of section 6, what the run shows, and whether it agrees, is level or departs, computed from
the run by a stated rule, plus how the run's protocol differs from the paper's), and writes
``DIR/kingma_ba.png`` (training cost against epochs, one panel per experiment, like the paper's
Figures 1-3) and ``DIR/kingma_ba.json`` (every curve and the claims).

``--data PATH`` runs on the paper's own data sets when you have them (nothing is downloaded): MNIST
as its IDX files (gzipped or not) or a keras-style ``.npz``, CIFAR-10 as its binary or python
version (`adamx.experiments.data`). The models keep their sizes and adapt to the image shape;
`LEARNING_RATES` were searched on the digits, so add ``--search`` there.
``--ablation`` runs Figure 4 instead: Adam with and without bias correction, each assembled from
adamx's blocks (`adam_from_blocks`), over ``b1 in {0, 0.9}``, ``b2 in {0.99, 0.999, 0.9999}`` and
``log10(lr) in {-5, ..., -1}`` on the MLP after 10 epochs, and writes ``DIR/ablation.png`` (a
heat map of the final cost) and ``DIR/ablation.json``, and prints Figure 4's claims against it
(`ablation_claims`).

From Python (the notebooks)::

    from adamx.experiments import kingma_ba
    results = kingma_ba.run(experiments=["mlp"], optimizers=["adam", "adagrad"], epochs=20)
    print(kingma_ba.table(results))
    print(kingma_ba.claims_table(results))
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
from adamx.experiments import data as _data
from adamx.experiments.data import Data

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
#: Test images evaluated at once (per lane).
EVAL_CHUNK = 1000
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


def load_data(path: str | Path | None = None, train_size: int | None = None) -> Data:
    """The digits (default), or MNIST / CIFAR-10 from ``path``: see `adamx.experiments.data.load`.

    The digits are split 80/20 by a fixed permutation; every data set is standardised per feature
    with its training set's statistics.
    """
    return _data.load(path, train_size)


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


def _logreg_init(key: jax.Array, shape: tuple[int, int, int]) -> Params:
    del key  # convex: start at zero, as usual
    features = int(np.prod(shape))
    return {
        "w": jnp.zeros((features, NUM_CLASSES), jnp.float32),
        "b": jnp.zeros((NUM_CLASSES,), jnp.float32),
    }


def _logreg_apply(params: Params, x: jax.Array, key: jax.Array | None) -> jax.Array:
    del key
    return _affine(params, x)


def _logreg_penalty(params: Params) -> jax.Array:
    return 0.5 * L2 * jnp.sum(params["w"] ** 2)


def _mlp_init(key: jax.Array, shape: tuple[int, int, int]) -> Params:
    k1, k2, k3 = jax.random.split(key, 3)
    features = int(np.prod(shape))
    return [
        _dense(k1, features, HIDDEN),
        _dense(k2, HIDDEN, HIDDEN),
        _dense(k3, HIDDEN, NUM_CLASSES),
    ]


def _mlp_apply(params: Params, x: jax.Array, key: jax.Array | None) -> jax.Array:
    keys: list[jax.Array | None] = list(jax.random.split(key, 3)) if key is not None else [None] * 3
    x = _dropout(keys[0], x, INPUT_DROPOUT)
    for i, layer in enumerate(params[:-1]):
        x = _dropout(keys[i + 1], jax.nn.relu(_affine(layer, x)), HIDDEN_DROPOUT)
    return _affine(params[-1], x)


def _cnn_init(key: jax.Array, shape: tuple[int, int, int]) -> Params:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    height, width, channels = shape
    pooled = (height // 2) * (width // 2) * CNN_CHANNELS
    return {
        "conv1": _conv(k1, channels, CNN_CHANNELS),
        "conv2": _conv(k2, CNN_CHANNELS, CNN_CHANNELS),
        "dense": _dense(k3, pooled, CNN_DENSE),
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


def _cnn_apply(
    params: Params, x: jax.Array, key: jax.Array | None, shape: tuple[int, int, int] = (8, 8, 1)
) -> jax.Array:
    k_in, k_dense = jax.random.split(key) if key is not None else (None, None)
    x = _dropout(k_in, x, INPUT_DROPOUT)
    n = x.shape[0]
    height, width, channels = shape
    x = x.reshape(n, height, width, channels)
    x = _conv_apply(params["conv2"], _conv_apply(params["conv1"], x))
    h2, w2 = height // 2, width // 2
    x = x[:, : 2 * h2, : 2 * w2, :]  # an odd row or column is dropped by the 2x2 pooling
    x = x.reshape(n, h2, 2, w2, 2, CNN_CHANNELS).max(axis=(2, 4)).reshape(n, -1)
    x = _dropout(k_dense, jax.nn.relu(_affine(params["dense"], x)), HIDDEN_DROPOUT)
    return _affine(params["out"], x)


@dataclasses.dataclass(frozen=True)
class Model:
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array, jax.Array | None], jax.Array]
    penalty: Callable[[Params], jax.Array] | None = None
    decay: Callable[[jax.Array], jax.Array] | None = None  # step-size schedule for all optimizers


def make_model(experiment: str, shape: tuple[int, int, int] = (8, 8, 1)) -> Model:
    """The model of ``experiment`` for images of ``shape`` ``(height, width, channels)``."""
    shape = tuple(int(d) for d in shape)  # type: ignore[assignment]
    init = {"logreg": _logreg_init, "mlp": _mlp_init, "cnn": _cnn_init}[experiment]
    apply: Callable[..., jax.Array] = {
        "logreg": _logreg_apply,
        "mlp": _mlp_apply,
        "cnn": lambda p, x, k: _cnn_apply(p, x, k, shape),  # type: ignore[arg-type]
    }[experiment]
    if experiment == "logreg":
        return Model(lambda k: init(k, shape), apply, _logreg_penalty, _inv_sqrt_decay)
    return Model(lambda k: init(k, shape), apply)


#: The models for the bundled digits (8x8 grey images).
MODELS = {experiment: make_model(experiment) for experiment in EXPERIMENTS}


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

    # The test set in chunks of at most EVAL_CHUNK (padded; the padding is masked out), so that a
    # CNN on CIFAR-10's 10,000 test images does not need all their activations at once.
    n_test = len(data.x_test)
    chunk = min(EVAL_CHUNK, n_test)
    n_chunks = -(-n_test // chunk)
    pad = n_chunks * chunk - n_test
    x_test = np.concatenate([data.x_test, np.zeros((pad, data.x_test.shape[1]), np.float32)])
    y_test = np.concatenate([data.y_test, np.full((pad,), -1, np.int32)])
    x_chunks = jnp.asarray(x_test.reshape(n_chunks, chunk, -1))
    y_chunks = jnp.asarray(y_test.reshape(n_chunks, chunk))

    def test_accuracy(params):
        def correct(xy):
            logits = model.apply(params, xy[0], None)
            predicted = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return jnp.sum((predicted == xy[1]).astype(jnp.float32))

        return jnp.sum(jax.lax.map(correct, (x_chunks, y_chunks))) / np.float32(n_test)

    rngs = {int(s): np.random.default_rng(int(s)) for s in seeds}
    n_train = len(data.x_train)
    batch_size = min(BATCH_SIZE, n_train)  # a tiny data set trains on full batches
    n_batches = n_train // batch_size
    costs = np.zeros((n_lanes, epochs))
    step = 0
    for epoch in range(epochs):
        orders = {s: rng.permutation(n_train).astype(np.int32) for s, rng in rngs.items()}
        lane_orders = np.stack([orders[int(s)] for s in lane_seeds])
        epoch_costs = []
        for b in range(n_batches):
            idx = lane_orders[:, b * batch_size : (b + 1) * batch_size]
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
    data: str = "digits"
    select: str = "final"
    steps_per_epoch: int = 11

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of everything (NaN and infinities as ``null``)."""

        def clean(a: Any) -> Any:
            return [clean(v) for v in a] if np.ndim(a) else (float(a) if np.isfinite(a) else None)

        return {
            "paper": "Kingma & Ba (2014), Adam, section 6",
            "data": self.data,
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
            "claims": [dataclasses.asdict(c) for c in claims(self)],
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


def _mean_over_epochs(costs: np.ndarray) -> np.ndarray:
    """The cost averaged over all epochs (the area under the curve: lower = faster), ``inf`` where
    a lane diverged."""
    finite = np.all(np.isfinite(costs), axis=-1)
    return np.where(finite, np.mean(np.where(np.isfinite(costs), costs, 0.0), axis=-1), np.inf)


#: How ``run(search=True, select=...)`` ranks the learning rates of the grid.
SELECT_RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "final": _final,  # lowest final training cost (the default)
    "mean": _mean_over_epochs,  # lowest cost averaged over the epochs: fastest convergence
}


def _resolve_data(data: Data | str | Path | None, train_size: int | None = None) -> Data:
    if isinstance(data, Data):
        return data
    return load_data(data, train_size)


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
    select: str = "final",
    data: Data | str | Path | None = None,
    train_size: int | None = None,
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
      select: how ``search`` ranks them: ``"final"``, the lowest mean final training cost, or
        ``"mean"``, the lowest mean cost over all epochs (the fastest convergence).
      data: a `Data`, or a path for `load_data` (MNIST or CIFAR-10); default the bundled digits.
        `LEARNING_RATES` were searched on the digits: with other data, pass ``search=True``.
      train_size: with a path, keep only this many training examples (a fixed random subset).

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
    if select not in SELECT_RULES:
        raise ValueError(f"Unknown select {select!r}; choose from {', '.join(SELECT_RULES)}.")
    dataset = _resolve_data(data, train_size)

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
                    make_model(exp, dataset.shape),
                    dataset,
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
                    finals = SELECT_RULES[select](c).mean(axis=1)
                    best = int(np.argmin(finals))  # the first (smallest) lr among ties
                    searched[exp][opt] = {
                        float(g): float(f) for g, f in zip(grid, finals, strict=True)
                    }
                    c, a, lr = c[best], a[best], float(grid[best])
                costs[exp][opt], accuracy[exp][opt], used_lrs[exp][opt] = c, a, float(lr)
    finally:
        bar.close()
    return Results(
        costs,
        accuracy,
        used_lrs,
        searched,
        seed_list,
        time.perf_counter() - start,
        dataset.name,
        select,
        len(dataset.x_train) // min(BATCH_SIZE, len(dataset.x_train)),
    )


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
                f"  {LABELS[opt]:<12} {results.learning_rates[exp][opt]:>8.2g}  "
                f"{_mean_std(cost, '.4f'):>20}  {_mean_std(acc, '.1f'):>17}"
            )
        if results.search.get(exp):
            what = "final cost" if results.select == "final" else "cost over all epochs"
            lines.append(f"  search (mean {what} per learning rate; the lowest is used):")
            for opt, found in results.search[exp].items():
                cells = "  ".join(
                    f"{lr:.2g}:{'inf' if not math.isfinite(v) else format(v, '.3g')}"
                    for lr, v in found.items()
                )
                lines.append(f"    {LABELS[opt]:<12} {cells}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# The paper's claims against this run


#: Paper: epochs and minibatches per epoch of section 6 (MNIST: 60,000 / 128; CIFAR-10: 50,000 /
#: 128), for the protocol notes.
PAPER_EPOCHS = {"logreg": 45, "mlp": 200, "cnn": 45}
PAPER_STEPS_PER_EPOCH = {"logreg": 469, "mlp": 469, "cnn": 391}

AGREES, LEVEL, DEPARTS, NOT_RUN = "agrees", "level", "departs", "not run"


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of the paper's section 6 and what a run makes of it.

    Attributes:
      section: the paper's section and figure, e.g. ``"6.1 (Fig. 1)"``.
      claim: the claim, in words.
      shows: what the run shows (the numbers the verdict is computed from).
      final: the verdict on the final training cost: ``"agrees"``, ``"level"`` (the difference is
        within the seeds' spread, so the run does not show the paper's ordering), ``"departs"`` (the
        opposite ordering, beyond the spread) or ``"not run"``.
      over_epochs: the verdict on the cost averaged over all epochs (the area under the curve,
        how fast it converged), same values; ``""`` where only one measure applies.
    """

    section: str
    claim: str
    shows: str
    final: str
    over_epochs: str = ""


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """``(mean(a), mean(b), sign)``: ``sign`` is +1 when ``a`` is lower than ``b`` by more than the
    seeds' spread (the sum of the two standard deviations over seeds), -1 when higher by more, 0
    when within it. Diverged lanes (inf) count as higher than any finite cost."""
    a_mean, b_mean = float(np.mean(a)), float(np.mean(b))
    if not (np.isfinite(a_mean) and np.isfinite(b_mean)):
        if np.isfinite(a_mean) == np.isfinite(b_mean):
            return a_mean, b_mean, 0
        return a_mean, b_mean, 1 if np.isfinite(a_mean) else -1
    spread = float(np.std(a) + np.std(b))
    diff = b_mean - a_mean
    return a_mean, b_mean, (1 if diff > spread else -1 if diff < -spread else 0)


def _verdict(sign: int, a_mean: float, b_mean: float, expect: str) -> str:
    """The verdict on "A vs B" for what the paper says: ``"ahead"`` (A lower), ``"level_or_ahead"``
    (A about equal or lower) or ``"marginal"`` (A marginally lower: level with a lower mean will
    do)."""
    if sign < 0:
        return DEPARTS
    if sign > 0:
        return AGREES
    if expect == "level_or_ahead" or (expect == "marginal" and a_mean <= b_mean):
        return AGREES
    return LEVEL


#: The comparisons of section 6 that the run can check: (experiment, section, claim, A, B, expect).
PAPER_COMPARISONS = (
    (
        "logreg",
        "6.1 (Fig. 1 left)",
        "Adam converges like SGD-Nesterov",
        "adam",
        "sgd_nesterov",
        "level_or_ahead",
    ),
    ("logreg", "6.1 (Fig. 1 left)", "Adam faster than AdaGrad", "adam", "adagrad", "ahead"),
    ("mlp", "6.2 (Fig. 2a)", "Adam faster than AdaGrad", "adam", "adagrad", "ahead"),
    ("mlp", "6.2 (Fig. 2a)", "Adam faster than RMSProp", "adam", "rmsprop", "ahead"),
    ("mlp", "6.2 (Fig. 2a)", "Adam faster than SGD-Nesterov", "adam", "sgd_nesterov", "ahead"),
    ("mlp", "6.2 (Fig. 2a)", "Adam faster than AdaDelta", "adam", "adadelta", "ahead"),
    ("cnn", "6.3 (Fig. 3)", "Adam beats AdaGrad", "adam", "adagrad", "ahead"),
    ("cnn", "6.3 (Fig. 3)", "SGD-Nesterov beats AdaGrad", "sgd_nesterov", "adagrad", "ahead"),
    (
        "cnn",
        "6.3 (Fig. 3)",
        "Adam marginally better than SGD-Nesterov",
        "adam",
        "sgd_nesterov",
        "marginal",
    ),
)

#: The claims no run of this module can check, and why.
PAPER_NOT_RUN = (
    (
        "6.1 (Fig. 1 right)",
        "AdaGrad does well on sparse IMDB bag-of-words; Adam as fast",
        "needs sparse bag-of-words features: neither digits, MNIST nor CIFAR-10 has them",
    ),
    (
        "6.2 (Fig. 2b)",
        "Adam faster than SFO (quasi-Newton) per iteration and in wall-clock",
        "SFO is not a first-order optimizer and not in adamx",
    ),
)


def claims(results: Results, ablation: Ablation | None = None) -> list[Claim]:
    """The paper's section-6 claims, each with what ``results`` (and ``ablation``) show.

    The rule: an optimizer is ahead of another when its mean cost over the seeds is lower by more
    than the sum of the two seeds' standard deviations; "level" when the difference is within that
    spread (one seed: no spread, every difference counts). It is applied to the final training
    cost and to the cost averaged over all epochs (the area under the curve: how fast it got
    there). Claims whose experiment or optimizers were not run are reported as ``"not run"``;
    Figure 4's come from ``ablation`` (`ablation_claims`).
    """
    rows: list[Claim] = []
    for exp, section, text, a, b, expect in PAPER_COMPARISONS:
        per_opt = results.costs.get(exp, {})
        if a not in per_opt or b not in per_opt:
            missing = "experiment" if exp not in results.costs else "optimizer"
            rows.append(Claim(section, text, f"{exp}: {missing} not in this run", NOT_RUN, NOT_RUN))
            continue
        verdicts, cells = [], []
        for measure in (_final, _mean_over_epochs):
            a_mean, b_mean, sign = _compare(measure(per_opt[a]), measure(per_opt[b]))
            verdicts.append(_verdict(sign, a_mean, b_mean, expect))
            cells.append(f"{_fmt(a_mean)} vs {_fmt(b_mean)}")
        shows = f"{exp}, {per_opt[a].shape[-1]} ep.: final {cells[0]}; over epochs {cells[1]}"
        rows.append(Claim(section, text, shows, verdicts[0], verdicts[1]))
    for section, text, why in PAPER_NOT_RUN:
        rows.append(Claim(section, text, why, NOT_RUN, NOT_RUN))
    if ablation is None:
        rows.append(
            Claim(
                "6.4 (Fig. 4)",
                "Without bias correction, b2 near 1 is unstable; with it, the best results",
                "run with --ablation",
                NOT_RUN,
            )
        )
    else:
        rows.extend(ablation_claims(ablation))
    return rows


def _fmt(x: float) -> str:
    return "diverged" if not math.isfinite(x) else f"{x:.4f}"


#: In `ablation_claims`, a setting "blew up" without bias correction when its cost is more than
#: this many times the cost with it (or diverged).
BLOW_UP = 2.0


def ablation_claims(ablation: Ablation) -> list[Claim]:
    """Figure 4's claims against an ablation, by these rules:

    * unstable without correction for b2 near 1: a (b1, b2, lr) setting blew up when its cost
      without correction is more than `BLOW_UP` times the cost with correction, or diverged; count
      them per b2; agrees when there are more at the largest b2 than at the smallest.
    * best results with bias correction: agrees when the lowest cost of the grid with correction
      is at most the lowest without.
    * correction never worse: count the settings where the uncorrected cost is lower by more than
      5%; agrees when there are none.
    """
    fc = ablation.final_cost
    with_, without = fc[0], fc[1]  # (b1, b2, lr)
    blew_up = ~np.isfinite(without) | (np.isfinite(with_) & (without > BLOW_UP * with_))
    per_b2 = blew_up.sum(axis=(0, 2))
    n_settings = fc.shape[1] * fc.shape[3]
    worst = np.where(np.isfinite(without), without / with_, np.inf).max(axis=(0, 2))
    b2s = "/".join(f"{b:g}" for b in ablation.b2s)
    section = f"6.4 (Fig. 4; {ablation.experiment}, {ablation.epochs} ep.)"
    rows = [
        Claim(
            section,
            "Without bias correction, b2 near 1 is unstable",
            f"blew up (cost without > {BLOW_UP:g}x with, or diverged) at b2={b2s}: "
            f"{'/'.join(map(str, per_b2))} of {n_settings} (b1, lr); worst ratio "
            f"{'/'.join('inf' if not math.isfinite(w) else format(w, '.3g') for w in worst)}",
            AGREES if per_b2[-1] > per_b2[0] else DEPARTS,
        )
    ]
    best = [float(np.min(np.where(np.isfinite(fc[v]), fc[v], np.inf))) for v in (0, 1)]
    rows.append(
        Claim(
            section,
            "Bias correction gives the best result",
            f"lowest cost of the grid: with {_fmt(best[0])}, without {_fmt(best[1])}",
            AGREES if best[0] <= best[1] else DEPARTS,
        )
    )
    better = np.isfinite(fc[1]) & (~np.isfinite(fc[0]) | (fc[1] < 0.95 * fc[0]))
    where = [
        f"b1={ablation.b1s[i]:g} b2={ablation.b2s[j]:g} lr=1e{ablation.log10_lrs[k]}"
        for i, j, k in zip(*np.nonzero(better), strict=True)
    ]
    rows.append(
        Claim(
            section,
            "Bias correction is never worse",
            f"without correction >5% lower at {int(better.sum())} of {better.size} settings"
            + (f" ({', '.join(where[:3])}{', ...' if len(where) > 3 else ''})" if where else ""),
            AGREES if not where else DEPARTS,
        )
    )
    return rows


def claims_table(
    results: Results | None = None, ablation: Ablation | None = None, *, markdown: bool = True
) -> str:
    """The paper's claims against this run as a Markdown table, then how the run's protocol
    differs from the paper's (data, steps, seeds, learning-rate selection)."""
    if results is not None:
        rows = claims(results, ablation)
    else:
        if ablation is None:
            raise ValueError("`claims_table` needs the results of a run, of an ablation, or both.")
        rows = ablation_claims(ablation)
    header = ["paper", "claim", "this run (A vs B: mean cost over seeds)", "final", "over epochs"]
    if results is None:
        header = ["paper", "claim", "this run", "verdict"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for c in rows:
        cells = [c.section, c.claim, c.shows, c.final]
        if results is not None:
            cells.append(c.over_epochs or "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if results is not None:
        lines.append(
            "Rule: A is ahead of B when its mean cost over the seeds is lower by more than the sum "
            "of the two standard deviations over seeds; within that, 'level'. 'final' compares the "
            "last epoch's training cost, 'over epochs' the cost averaged over all epochs (the area "
            "under the curve)."
        )
    if ablation is not None:
        lines.append(
            f"Figure 4's rules: a setting blew up when its cost without correction is over "
            f"{BLOW_UP:g}x the cost with it (or diverged); the claim holds when more settings blew "
            "up at the largest b2 than at the smallest. 'Best' compares the lowest cost of each "
            "variant's grid; 'never worse' counts settings where the uncorrected cost is >5% lower."
        )
    if results is not None:
        lines.extend(_protocol_notes(results))
    return "\n".join(lines) + "\n"


def _protocol_notes(results: Results) -> list[str]:
    notes = ["", f"How this run differs from the paper (data: {results.data}):"]
    for exp, per_opt in results.costs.items():
        epochs = next(iter(per_opt.values())).shape[-1]
        best = min(per_opt, key=lambda o: float(np.mean(_final(per_opt[o]))))
        fastest = min(per_opt, key=lambda o: float(np.mean(_mean_over_epochs(per_opt[o]))))
        notes.append(
            f"- {exp}: {epochs} epochs (paper {PAPER_EPOCHS[exp]}); lowest final cost: "
            f"{LABELS[best]}, lowest over epochs: {LABELS[fastest]} (of {len(per_opt)} run)"
        )
    n = len(results.seeds)
    if any(results.search.values()):
        rule = {"final": "the lowest mean final cost", "mean": "the lowest mean cost over epochs"}
        how = f"searched here ({rule[results.select]})"
    else:
        how = "LEARNING_RATES (searched on the digits, lowest mean final cost over 2 seeds)"
        if results.data != "digits":
            how += f", not on {results.data}: add --search"
    notes.append(
        f"- {n} seed{'s' if n > 1 else ''}; learning rates: {how}; the paper: "
        f"'a dense grid', best reported. Minibatches per epoch: {results.steps_per_epoch} here, "
        f"{PAPER_STEPS_PER_EPOCH['cnn']}-{PAPER_STEPS_PER_EPOCH['mlp']} in the paper."
    )
    return notes


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
    data: Data | str | Path | None = None,
    train_size: int | None = None,
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
    dataset = _resolve_data(data, train_size)
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
                make_model(experiment, dataset.shape),
                dataset,
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


def _relative_luminance(color: Any) -> float:
    """WCAG 2's relative luminance of a matplotlib colour: 0 for black, 1 for white."""
    from matplotlib.colors import to_rgb

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in to_rgb(color))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _label_color(background: Any) -> str:
    """``"k"`` or ``"w"``, whichever has the higher WCAG contrast ratio on ``background``.

    The two ratios are equal at a luminance of about 0.18, where each is 4.58, so a label drawn
    this way is readable (WCAG AA asks for 4.5) on any colour of any colour map.
    """
    luminance = _relative_luminance(background)
    on_black = (luminance + 0.05) / 0.05
    on_white = 1.05 / (luminance + 0.05)
    return "k" if on_black >= on_white else "w"


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
                if not math.isfinite(value):
                    text = "div."
                else:  # two decimals, one from 100 up: a four-digit cost still fits its cell
                    text = f"{value:.1f}" if value >= 100 else f"{value:.2f}"
                # A diverged cell is drawn white (NaN); any other takes its colour from the map.
                background = (
                    image.cmap(image.norm(np.log10(value))) if math.isfinite(value) else "w"
                )
                color = _label_color(background)
                ax.text(k, j, text, ha="center", va="center", fontsize=9, color=color)
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
    parser.add_argument(
        "--data",
        default=None,
        help="MNIST (folder of the IDX files, gzipped or not, or an .npz with x_train/y_train) or "
        "CIFAR-10 (folder of data_batch_*.bin and test_batch.bin, or of the python version); "
        "default scikit-learn's bundled digits. Nothing is downloaded.",
    )
    parser.add_argument(
        "--train-size", type=int, default=None, help="train on this many examples (a fixed subset)"
    )
    parser.add_argument("--search", action="store_true", help="search the learning-rate grid")
    parser.add_argument(
        "--grid",
        default=None,
        help="comma-separated learning rates for --search (default half decades 1e-4 .. 1)",
    )
    parser.add_argument(
        "--select",
        choices=sorted(SELECT_RULES),
        default="final",
        help="--search keeps the rate with the lowest final cost (final, default) or the lowest "
        "cost averaged over the epochs (mean: fastest convergence)",
    )
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
    if args.train_size is not None and args.train_size < 1:
        parser.error("--train-size must be >= 1")
    if args.grid is not None:
        try:
            args.grid = tuple(float(v) for v in args.grid.split(","))
        except ValueError:
            parser.error(f"--grid expects comma-separated numbers, got {args.grid!r}")
        if not args.grid or min(args.grid) <= 0:
            parser.error("--grid expects positive learning rates")
    return args


def main(argv: list[str] | None = None) -> Results | Ablation:
    """The command line: run, print the tables, write the PNG and JSON into ``--out``."""
    args = _parse_args(argv)
    progress = not args.no_progress
    try:
        data = load_data(args.data, args.train_size)
    except (OSError, _data.DataFormatError) as error:
        raise SystemExit(f"error: {error}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.data is not None:
        print(
            f"data: {data.name} from {args.data}: {len(data.x_train)} training and "
            f"{len(data.x_test)} test images of {data.shape[0]}x{data.shape[1]}x{data.shape[2]}"
        )
    if args.ablation:
        experiment = args.experiments.split(",")[0] if args.experiments else "mlp"
        ablation = run_ablation(
            experiment,
            epochs=args.epochs or 10,
            seeds=args.seeds or 1,
            progress=progress,
            data=data,
        )
        print(ablation_table(ablation))
        print("The paper's Figure 4 against this run:\n")
        print(claims_table(ablation=ablation))
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
        grid=args.grid or SEARCH_GRID,
        select=args.select,
        data=data,
    )
    print(table(results))
    print("The paper's section 6 against this run:\n")
    print(claims_table(results))
    png = plot(results, out / "kingma_ba.png")
    (out / "kingma_ba.json").write_text(json.dumps(results.to_json(), indent=1))
    print(f"wrote {png} and {out / 'kingma_ba.json'} ({results.wall_time:.0f} s)")
    return results


if __name__ == "__main__":
    main()
