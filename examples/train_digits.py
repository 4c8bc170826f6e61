"""Train a small MLP on scikit-learn's handwritten digits with ``adamx.adamw``.

This is the interim end-to-end example: a pure-JAX two-layer perceptron (64 -> 128 -> 10, ReLU, He
initialisation) trained on the 8x8 digits bundled with scikit-learn (1797 images, no download),
standardised with the training set's statistics, on a fixed 80/20 split, with minibatches of 64 and
a jitted train step that calls `adamx.step` on donated params and optimizer state. It prints the
training loss about ten times (every epoch when there are at most ten) and ends with the test
accuracy (about 98% with the defaults, a few seconds on two CPU cores).

It is a placeholder: the docs-and-notebooks issue replaces it with the reproduction of Kingma &
Ba's experiments (Adam, ICLR 2015).

Run it from the repository root, after ``pip install -e ".[examples]"``::

    python examples/train_digits.py [--epochs N] [--seed S] [--lr LR]

It also runs clean under ``jax_numpy_dtype_promotion="strict"`` and
``jax_numpy_rank_promotion="raise"``, as the test suite sets them (``tests/test_examples.py``).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

import adamx

BATCH_SIZE = 64
HIDDEN = 128
NUM_CLASSES = 10
TEST_FRACTION = 0.2


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits, split 80/20 by a permutation drawn from ``seed`` and standardised.

    Returns ``(x_train, y_train, x_test, y_test)``: float32 features, int32 labels. The mean and
    standard deviation are those of the training set (pixels that are constant there keep scale 1).
    """
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(TEST_FRACTION * len(x)))
    test, train = order[:n_test], order[n_test:]
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.where(std > 0, std, np.float32(1.0)).astype(np.float32)
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def init_params(key: jax.Array, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
    """He-initialised dense layers: weights ``N(0, 2 / fan_in)``, biases zero, all float32."""
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for fan_in, fan_out, k in zip(sizes[:-1], sizes[1:], keys, strict=True):
        w = jax.random.normal(k, (fan_in, fan_out), jnp.float32) * np.float32(np.sqrt(2.0 / fan_in))
        params.append({"w": w, "b": jnp.zeros((fan_out,), jnp.float32)})
    return params


def forward(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Logits of the MLP: ReLU between layers, none after the last."""
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"][None, :]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def loss_fn(params: list[dict[str, jax.Array]], x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of the labels ``y`` (int32)."""
    logits = forward(params, x)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    one_hot = jax.nn.one_hot(y, NUM_CLASSES, dtype=log_probs.dtype)
    return -jnp.mean(jnp.sum(one_hot * log_probs, axis=-1))


def accuracy(params: list[dict[str, jax.Array]], x: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of ``x`` classified as ``y``, a float32 scalar."""
    predictions = jnp.argmax(forward(params, x), axis=-1).astype(jnp.int32)
    return jnp.mean((predictions == y).astype(jnp.float32))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50, help="passes over the training set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, init and batches")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> float:
    """Train, print progress and the test accuracy; returns the test accuracy."""
    args = parse_args(argv)
    start = time.perf_counter()

    x_train, y_train, x_test, y_test = load_data(args.seed)
    params = init_params(jax.random.key(args.seed), (x_train.shape[1], HIDDEN, NUM_CLASSES))
    optimizer = adamx.adamw(args.lr, weight_decay=1e-4)
    opt_state = optimizer.init(params)

    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, opt_state = adamx.step(optimizer, grads, opt_state, params)
        return params, opt_state, loss

    # The step overwrites params and state in place: the old buffers are donated to the new ones.
    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    evaluate = jax.jit(accuracy)

    rng = np.random.default_rng(args.seed)
    n_batches = len(x_train) // BATCH_SIZE  # the remainder is dropped: every batch has one shape
    print(
        f"digits: {len(x_train)} train / {len(x_test)} test, {n_batches} batches of {BATCH_SIZE}, "
        f"adamw(lr={args.lr:g}, weight_decay=1e-4), {args.epochs} epochs"
    )
    log_every = max(1, args.epochs // 10)
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        losses = []
        for b in range(n_batches):
            idx = order[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
            params, opt_state, loss = train_step(params, opt_state, x_train[idx], y_train[idx])
            losses.append(loss)
        if epoch % log_every == 0 or epoch in (1, args.epochs):
            train_loss = float(jnp.mean(jnp.stack(losses)))  # waits for the epoch to finish
            elapsed = time.perf_counter() - start  # the first epoch includes the jit compile
            print(f"epoch {epoch:3d}/{args.epochs}  train loss {train_loss:.4f}  {elapsed:6.2f} s")

    test_accuracy = float(evaluate(params, x_test, y_test))
    print(f"test accuracy: {test_accuracy:.2%}  ({time.perf_counter() - start:.2f} s)")
    return test_accuracy


if __name__ == "__main__":
    main()
