"""The bounded jnp step on a mesh (adamx/kernels/_bounded.py, `_on_shards`): each leaf streamed
through its chunks once per shard, inside ``jax.shard_map``.

JAX fixes its device count when it starts, so the measurements run in one subprocess on 4 CPU
devices (tests/bounded_mesh_worker.py), and the assertions are here. Memory is a compiled
property (``memory_analysis()`` per device); the reference for the numbers is the eager jnp path
(op by op) on the same mesh, one step at a time from the same inputs.
"""

from __future__ import annotations

import functools

import pytest

from tests.helpers import run_device_worker

# One xdist worker runs the whole file, so the 4-device worker process starts once (pyproject.toml
# sets --dist loadgroup).
pytestmark = pytest.mark.xdist_group("bounded_mesh")

MIB = 1 << 20
# The leaves that run per shard (tests/bounded_mesh_worker.py, `_params`): "rows", "vec" and
# "layers"; with stochastic rounding (no blocks) "partial" too. "cols" (split on its last axis:
# the codes are kept whole on each device, and a shard is no contiguous range of the leaf) and,
# with blocks, "partial" (its shards end inside a block) run in one piece, as the jnp path does.
PER_SHARD = {"8bit": 3, "4bit-rank1": 3, "bf16-sr": 4, "8bit-zero1": 1}


@functools.cache
def _report() -> dict:
    report = run_device_worker("tests.bounded_mesh_worker", 4)
    assert report["devices"] == 4
    return report


@pytest.mark.parametrize("case", ["8bit", "8bit-16", "4bit", "4bit-rank1"])
def test_on_a_mesh_each_device_keeps_its_temporaries_to_a_chunk(case):
    """4 devices, params split by rows (one leaf of 16.8M, or 16), 8-bit, 4-bit block-wise and
    rank-1 4-bit moments: per device, `adamx.step` without the kernel at most 0.25 bytes per param
    of its shard + 8 MiB, ``update`` + ``apply_updates`` at most the updates' float32 buffer more.
    Before, with several devices the bounded path declined: 16 bytes per param (8-bit)."""
    row = _report()["memory"][case]
    local = row["local"]
    assert row["step"] <= local // 4 + 8 * MIB, row["step"] / local
    assert row["update"] <= 4 * local + local // 4 + 8 * MIB, row["update"] / local


def test_under_zero1_each_device_updates_its_slice_with_temporaries_of_a_chunk():
    """ZeRO-1 (`adamx.zero1_shardings`: the params whole on each of 4 devices, the 8-bit state
    split by its blocks): each device updates its quarter of the params a chunk at a time; the
    new slice (4 bytes per param of the device's quarter) is what the gather of the new params
    reads, through `adamx.step` as through ``update`` (whose updates stay split, as XLA leaves
    them op by op). Before: 12 bytes per param of that quarter."""
    row = _report()["memory"]["8bit-zero1"]
    local = row["local"]
    assert row["step"] <= 4 * local + local // 4 + 8 * MIB, row["step"] / local
    assert row["update"] <= 4 * local + local // 4 + 8 * MIB, row["update"] / local


@pytest.mark.parametrize("path", ["update", "step"])
@pytest.mark.parametrize("storage", list(PER_SHARD))
def test_on_a_mesh_the_bounded_step_is_the_jnp_step_within_2_ulp(storage, path):
    """Jitted per shard against eager op by op on the same mesh of 4 ``Explicit`` devices, three
    steps, a NaN gradient in the second: params, float state and scales within 2 ulp, at most one
    code in a thousand different (a rank-1 moment's column maxima are the maximum over the devices
    that split its rows; stochastic rounding hashes each element's index in the whole leaf, its
    shard's offset plus its own: both checked to fail when left out), every state leaf's sharding
    kept, and the leaves that can run per shard do; under ZeRO-1 too, the params whole again
    after `adamx.step`."""
    row = _report()["numbers"][f"{storage}/{path}"]
    assert row["ulps"] <= 2, row
    assert row["codes_apart"] <= 1e-3, row
    assert row["kept_sharding"], row
    assert row["per_shard"] == PER_SHARD[storage], row
    if path == "step":  # the params keep their sharding (ZeRO-1: gathered whole again)
        assert row["kept_params_sharding"], row


@pytest.mark.parametrize("layout", ["model", "zero1", "zero1-chain"])
def test_on_two_mesh_axes_wrapped_and_under_zero1(layout):
    """A 2 x 2 mesh, `apply_if_finite` around 8-bit AdamW (the step inside a ``lax.cond``), with
    `adamx.state_shardings` and then, the same optimizer, `adamx.zero1_shardings` over ``data``;
    and the chain itself under ZeRO-1. Jitted against eager: within 2 ulp, the state's sharding
    kept, the two leaves whose codes follow their rows per shard ("c", split on its last axis, in
    one piece). Before: the cond's branches disagreed on shardings on any ``Explicit`` mesh
    (`apply_if_finite`'s zero updates were replicated), a plan traced for one sharding was reused
    for another of the same shapes, and ZeRO-1 split each block's bytes over ``data`` (the codes'
    last axis), which the codecs refused: every case raised."""
    row = _report()["numbers"][f"2d/{layout}"]
    assert row["ulps"] <= 2, row
    assert row["codes_apart"] <= 1e-3, row
    assert row["kept_sharding"], row
    assert row["per_shard"] == 2, row
    if layout != "zero1":  # (inside the cond, the updates of "c" stay split as XLA leaves them)
        assert row["kept_params_sharding"], row
    specs = row["codes_specs"]
    assert all(s.endswith(", None)") for s in specs), specs  # a block's bytes stay together
    if layout != "model":
        assert any("data" in s for s in specs), specs


@pytest.mark.parametrize("name", ["apply_if_finite", "MultiSteps"])
def test_conditional_wrappers_run_on_an_explicit_mesh(name):
    """`apply_if_finite` and `MultiSteps` run their step in a ``lax.cond`` whose other branch
    returns zero updates: on a mesh of ``Explicit`` axes (`jax.make_mesh`'s default) those zeros
    now carry the updates' sharding, which a cond's branches must agree on (before, a jitted step
    raised a ``TypeError`` even with float32 moments), and the state keeps its sharding."""
    row = _report()["wrappers"][name]
    assert row["error"] is None, row
    assert row["kept_sharding"], row
