"""Data-parallel training over several processes, with the optimizer state sharded (ZeRO-1).

Every process runs this same script; ``jax.distributed.initialize`` joins them into one JAX
program whose devices are all the processes' devices. The params are replicated over the ``data``
axis, each batch is split over it, and the optimizer state is split over it too
(`adamx.zero1_shardings`), so each device keeps 1/N of the moments. XLA all-reduces the
gradients and all-gathers the updated params: nothing here is specific to adamx but the shardings.

On one machine, two processes with two CPU devices each (CPU collectives through gloo)::

    python examples/multihost_data_parallel.py --coordinator 127.0.0.1:12355 \
        --num-processes 2 --process-id 0 --local-devices 2 &
    python examples/multihost_data_parallel.py --coordinator 127.0.0.1:12355 \
        --num-processes 2 --process-id 1 --local-devices 2

and the single-process reference (one device, no sharding)::

    python examples/multihost_data_parallel.py --num-processes 1 --local-devices 1

On a GPU cluster or a TPU pod, drop ``--coordinator``/``--local-devices`` and let
``jax.distributed.initialize()`` read the cluster's environment (SLURM, Open MPI, Cloud TPU).
``tests/test_multihost.py`` runs the two-process example and compares it with the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", default=None, help="host:port of process 0")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--local-devices", type=int, default=1, help="CPU devices per process")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None, help="write the losses and params here (JSON)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    # The device count is fixed when JAX starts: set it before the first `import jax`.
    if "jax" in sys.modules:
        raise RuntimeError("Run this example as a script: JAX must not be imported before it.")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flag = f"--xla_force_host_platform_device_count={args.local_devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import adamx

    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )

    # The same data and initial params in every process (and in the reference run).
    rng = np.random.default_rng(0)
    features, hidden, batch = 16, 32, 32
    host_params = {
        "w1": (rng.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32),
        "b2": np.zeros(1, np.float32),
    }
    true_w = rng.standard_normal((features, 1)).astype(np.float32)
    batches = []
    for _ in range(args.steps):
        x = rng.standard_normal((batch, features)).astype(np.float32)
        batches.append((x, np.sin(x @ true_w).astype(np.float32)))

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    replicated = NamedSharding(mesh, P())
    split = NamedSharding(mesh, P("data"))

    def global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
        # Each process supplies the shards its own devices hold.
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    params = {name: global_array(value, replicated) for name, value in host_params.items()}
    tx = adamx.chain(adamx.clip_by_global_norm(1.0), adamx.adamw(1e-2, weight_decay=1e-4))
    state_shardings = adamx.zero1_shardings(tx, params, "data")
    state = adamx.init_sharded(tx, params, state_shardings)

    def loss_fn(params, x, y):
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)

    def train_step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, state = adamx.step(tx, grads, state, params)
        return params, state, loss

    param_shardings = jax.tree.map(lambda p: p.sharding, params)
    train_step = jax.jit(
        train_step,
        out_shardings=(param_shardings, state_shardings, replicated),
        donate_argnums=(0, 1),
    )

    # Which path the step takes: adamx's CPU kernel (its custom call, per shard) or the jnp path.
    x0, y0 = batches[0]
    lowered = train_step.lower(params, state, global_array(x0, split), global_array(y0, split))
    kernel = "adamx_derived_step" in lowered.as_text()

    start = time.perf_counter()
    losses = []
    for x, y in batches:
        params, state, loss = train_step(
            params, state, global_array(x, split), global_array(y, split)
        )
        losses.append(float(loss.addressable_data(0)))
    seconds = time.perf_counter() - start

    per_device = adamx.bytes_per_device(state)
    result = {
        "process_id": jax.process_index(),
        "num_processes": jax.process_count(),
        "devices": jax.device_count(),
        "losses": losses,
        # Replicated: every process holds the whole params.
        "params": {k: np.asarray(v.addressable_data(0)).tolist() for k, v in params.items()},
        "state_bytes": sum(leaf.nbytes for leaf in jax.tree.leaves(state)),
        "state_bytes_per_device": max(per_device.values()),
        "seconds": seconds,
        "kernel": kernel,
    }
    print(
        f"process {result['process_id']}/{result['num_processes']}, {result['devices']} devices: "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps; optimizer state "
        f"{result['state_bytes_per_device']} of {result['state_bytes']} bytes per device"
    )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            json.dump(result, file)
    if args.num_processes > 1:
        jax.distributed.shutdown()
    return result


if __name__ == "__main__":
    main()
