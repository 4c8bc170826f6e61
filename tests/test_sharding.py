"""Sharded optimizer state on 8 virtual CPU devices, for every optimizer of the registry.

JAX fixes its device count when it starts, so the measurements run in one subprocess,
``python -m tests.sharding_worker`` with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(the suite's own process keeps its one device). The worker prints one JSON report; the tests below
turn it into assertions, one per optimizer, so a failure names the optimizer and the state leaf.
Under pytest-xdist the report is computed once and shared between the workers through a file.

What is asserted (docs/sharding.md):

* every state leaf's sharding: after eager ``init`` (leaves of split parameters), after
  `adamx.init_sharded` (every leaf equals `adamx.state_shardings`), after a plain jitted
  ``init`` on an ``Explicit`` mesh, and after jitted steps (no ``out_shardings``);
* ZeRO-1: `adamx.zero1_shardings` over the 4-device ``data`` axis, kept through jitted steps;
  the state's bytes per device, from ``addressable_shards``, against the unsharded bytes;
* sharded results equal the one-device run within 1e-6 of each leaf's magnitude;
* the fused kernel per shard on an ``Explicit`` mesh, the jnp path on an ``Auto`` mesh;
* ``axis_name`` inside ``shard_map`` for the reductions across a tensor.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
from adamx.kernels import _native
from tests.helpers import OPTIMIZER_IDS, run_device_worker

# One xdist worker runs the whole file, so the 8-device worker process starts once (pyproject.toml
# sets --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sharding")

WORKER_TIMEOUT_S = 600  # measured: ~3 minutes on 2 cores
TOLERANCE = 1e-6  # of each leaf's largest magnitude (tests/sharding_worker.py, scaled_difference)
STATISTICS_TOLERANCE = 1e-5  # `monitor`'s statistics on the mesh against one device's (relative)

# Optimizers whose state is not dominated by parameter-shaped moments: Adafactor's factored
# statistics and SOAP's d x d statistics are small or replicated by rule, so ZeRO-1 saves less.
SMALL_OR_SQUARE_STATE = {"adafactor", "adafactor_torch", "soap"}
# 8- and 4-bit moments: codes and scales are laid out by blocks, not like the param; on this zoo
# (params split on their last axis, or too small for whole blocks per device) they cannot follow
# the model axis (replicated over it, test_quantised_codes_follow_row_split_params has the cases
# where they do); ZeRO-1 splits them over the 4 data devices: 1/4.
QUANTISED_STATE = {"adamw_8bit", "adamw_4bit"}
FUSED_KEYS = [
    *(
        f"explicit/{name}/{layout}"
        for name in (
            "adamw",
            "nadam",
            "lion",
            "lamb",
            "adamw_bf16_moments",
            "adamw_sr",
            "monitored_adamw",
        )
        for layout in ("model", "zero1")
        if (name, layout) != ("adamw_sr", "zero1")
    ),  # fmt: skip
    "auto/adamw/model",
    "auto/adamw/zero1",
]
SHARD_MAP = ["clip_by_global_norm", "lamb", "lars", "adafactor", "adafactor_last_dims", "muon"]


def _run_worker() -> dict:
    return run_device_worker("tests.sharding_worker", 8, WORKER_TIMEOUT_S)


@pytest.fixture(scope="session")
def report(tmp_path_factory) -> dict:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return _run_worker()
    # Several xdist workers: the first one runs the subprocess, the others wait and read its file.
    import fcntl

    shared = tmp_path_factory.getbasetemp().parent / "adamx_sharding_report.json"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if shared.is_file():
                return json.loads(shared.read_text())
            data = _run_worker()
            shared.write_text(json.dumps(data))
            return data
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _entry(report: dict, section: str, name: str) -> dict:
    entry = report[section][name]
    assert "error" not in entry, f"{section}/{name} raised in the worker:\n{entry['error']}"
    return entry


def test_the_worker_had_eight_devices_and_every_optimizer(report):
    assert report["devices"] == 8
    assert sorted(report["registry"]) == sorted(OPTIMIZER_IDS)
    assert sorted(report["fused"]) == sorted(["native", *FUSED_KEYS])
    assert sorted(report["shard_map"]) == sorted(SHARD_MAP)
    assert sorted(report["quantised_layout"]) == ["4bit", "8bit"]


registry = pytest.mark.parametrize("name", OPTIMIZER_IDS)


@registry
def test_state_follows_the_params(report, name):
    entry = _entry(report, "registry", name)
    assert entry["jit_init"] == [], f"init_sharded: {entry['jit_init']}"
    assert entry["update"] == [], f"after jitted steps: {entry['update']}"
    assert entry["eager"] == [], f"eager init: {entry['eager']}"
    assert entry["jit_init_explicit"] == [], f"jit(init) on an Explicit mesh: {entry}"


@registry
def test_zero1_splits_the_state_over_the_data_axis(report, name):
    entry = _entry(report, "registry", name)
    assert entry["zero1_init"] == [], entry["zero1_init"]
    assert entry["zero1_update"] == [], entry["zero1_update"]
    assert entry["zero1_params"] == [], f"params left their sharding: {entry['zero1_params']}"
    sizes = entry["zero1"]
    if sizes["unsharded_bytes"] == 0:  # SGD keeps no state
        assert sizes["max_bytes_per_device"] == 0
        return
    ratio = sizes["max_bytes_per_device"] / sizes["unsharded_bytes"]
    model_only = sizes["model_sharded_max_bytes_per_device"] / sizes["unsharded_bytes"]
    # 8 devices (4 data x 2 model): 1/8 for a leaf that splits both ways; the odd (7, 5) leaf,
    # the scalar and the counts stay whole on every device.
    bound = 0.5 if name in SMALL_OR_SQUARE_STATE else 0.3 if name in QUANTISED_STATE else 0.15
    assert ratio <= bound, (
        f"{name}: {ratio:.3f} of the unsharded state per device, expected <= {bound}"
    )
    assert ratio < model_only, (ratio, model_only)


@registry
def test_sharded_steps_equal_one_device(report, name):
    entry = _entry(report, "registry", name)
    if name == "soap":
        # Its eigenbases jump under a one-ulp change of the gradients (sharding_worker.py,
        # ILL_CONDITIONED): sharded runs may differ by that much, and by no more than twice it.
        sensitivity = entry["one_ulp_sensitivity"]
        assert sensitivity > 1e-3, sensitivity
        assert entry["max_rel"] <= 2 * sensitivity, (entry["max_rel"], sensitivity)
        assert entry["max_rel_zero1"] <= 2 * sensitivity, (entry["max_rel_zero1"], sensitivity)
        return
    assert entry["max_rel"] <= TOLERANCE, entry["max_rel"]
    assert entry["max_rel_zero1"] <= TOLERANCE, entry["max_rel_zero1"]


@pytest.mark.skipif(not _native.status()[0], reason=f"native kernel: {_native.status()[1]}")
@pytest.mark.parametrize("key", FUSED_KEYS)
def test_fused_step_on_eight_devices(report, key):
    entry = _entry(report, "fused", key)
    assert entry["state"] == [], f"the state left its sharding: {entry['state']}"
    assert entry["params"] == [], f"the params left their sharding: {entry['params']}"
    assert entry["max_rel"] <= TOLERANCE, entry["max_rel"]
    if "/monitored_adamw/" in key:  # global over the mesh: one device's statistics
        assert entry["statistics_max_rel"] <= STATISTICS_TOLERANCE, entry["statistics_max_rel"]
    if key.startswith("explicit/adamw_sr/"):
        # Stochastic rounding hashes each element's index in its leaf: the jnp path, which says so.
        assert "index in its whole leaf" in entry["why_not_traced"], entry["why_not_traced"]
        assert entry["why_not_eager"] == entry["why_not_traced"], entry["why_not_eager"]
        assert entry["eager_state"] == [], entry["eager_state"]
        assert entry["eager_max_rel"] <= TOLERANCE, entry["eager_max_rel"]
    elif key.startswith("explicit/"):
        # The kernel derived from the chain ran per shard, jitted and eagerly.
        assert entry["why_not_traced"] is None, entry["why_not_traced"]
        assert entry["why_not_eager"] is None, entry["why_not_eager"]
        assert entry["eager_state"] == [], entry["eager_state"]
        assert entry["eager_max_rel"] <= TOLERANCE, entry["eager_max_rel"]
    else:
        # The jnp path took the step, and fused=True says why.
        assert "`Auto`" in entry["why_not_traced"], entry["why_not_traced"]
        assert "cannot fuse this step" in entry["fused_true"], entry["fused_true"]


@pytest.mark.parametrize("name", SHARD_MAP)
def test_axis_name_inside_shard_map_equals_unsharded(report, name):
    entry = _entry(report, "shard_map", name)
    assert entry["max_rel"] <= TOLERANCE, entry
    wrong = entry["without_axis_name_max_rel"]
    # Without axis_name each shard is taken for a whole leaf: wrong numbers, or shapes that clash.
    assert isinstance(wrong, str) or wrong > 1e-3, wrong


# ---- the rules on this process's one device (no subprocess) -------------------------------------


def _placeholders(shapes: dict, specs: dict):
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    return {
        name: jax.ShapeDtypeStruct(shape, "float32", sharding=NamedSharding(mesh, specs[name]))
        for name, shape in shapes.items()
    }


def test_factored_statistics_keep_the_spec_of_the_axes_they_keep():
    params = _placeholders({"w": (6, 4), "s": (5, 5)}, {"w": P("data", "model"), "s": P("model")})
    opt = adamx.scale_by_factored_rms(min_dim_size_to_factor=1)
    shardings = adamx.state_shardings(opt, params)  # placeholders only: nothing is allocated
    assert shardings.v_row["w"].spec == P("data")  # the mean over columns keeps the rows' split
    assert shardings.v_col["w"].spec == P("model")
    # A square leaf: (5,) is the leaf less axis 0 or less axis 1, which shard differently.
    assert shardings.v_row["s"].spec == P() and shardings.v_col["s"].spec == P()
    assert shardings.count.spec == P()
    zero = adamx.zero1_shardings(opt, params, "data")
    assert zero.v_row["w"].spec == P("data")  # already split over data: left as it is
    assert zero.v_col["w"].spec == P("model")  # its one axis is taken by model
    assert zero.v_row["s"].spec == P("data") and zero.count.spec == P()
    assert jax.tree.structure(zero) == jax.tree.structure(shardings)


def test_zero1_splits_the_largest_free_dividing_axis():
    params = _placeholders({"w": (3, 8, 16)}, {"w": P(None, None, "model")})
    zero = adamx.zero1_shardings(adamx.sgd(0.1, momentum=0.9), params, "data")
    assert zero[0].trace["w"].spec == P(None, "data", "model")


def test_errors_say_what_to_do():
    with pytest.raises(ValueError, match=r"`\['w'\]` has no sharding"):
        adamx.state_shardings(adamx.adam(0.1), {"w": np.ones(3, np.float32)})
    params = {"w": jnp.ones(3)}  # on one device: a `SingleDeviceSharding`, no mesh
    state = adamx.init_sharded(adamx.adam(0.1), params)
    assert all(leaf.sharding == params["w"].sharding for leaf in jax.tree.leaves(state))
    with pytest.raises(ValueError, match="needs params placed on a mesh"):
        adamx.zero1_shardings(adamx.adam(0.1), params, "data")
    with pytest.raises(ValueError, match=r"not \['batch'\]"):
        adamx.zero1_shardings(adamx.adam(0.1), _placeholders({"w": (4,)}, {"w": P()}), "batch")


# Where the codes and scales of each moment go (adamx/storage/_quantize.py, `layout_specs`): a param split
# on its rows keeps whole blocks per device, so they follow it; one split on its stacked-layer axis
# too; one split on its last axis cannot, and they are replicated (rank-1's column scales follow).
QUANTISED_LAYOUT = {
    "8bit": {
        "rows": {"codes": [None, "model", None], "scales": [None, "model"]},
        "stack": {"codes": ["model", None, None], "scales": ["model", None]},
        "cols": {"codes": [None, None, None], "scales": [None, None]},
    },
    "4bit": {  # m block-wise, like 8-bit; v rank-1: codes, row scales, column scales
        "rows": {"codes": [None, "model"], "scales[0]": [None, "model"], "scales[1]": [None, None]},
        "stack": {
            "codes": ["model", None],
            "scales[0]": ["model", None],
            "scales[1]": ["model", None],
        },
        "cols": {"codes": [None, None], "scales[0]": [None, None], "scales[1]": [None, "model"]},
    },
}


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantised_codes_follow_row_split_params(report, bits):
    entry = _entry(report, "quantised_layout", bits)
    specs = entry["specs"]
    for param, fields in QUANTISED_LAYOUT[bits].items():
        second = f"[0][2].estimator[0].ema['{param}']"
        for field, spec in fields.items():
            assert specs[f"{second}.{field}"] == spec, (param, field, specs)
        first = f"[0][0].ema['{param}']"
        expected_first = QUANTISED_LAYOUT["8bit"][param] if bits == "8bit" else None
        if expected_first is not None:
            for field, spec in expected_first.items():
                assert specs[f"{first}.{field}"] == spec, (param, field, specs)
        else:  # 4-bit m: block-wise, its blocks follow as 8-bit's do
            assert specs[f"{first}.codes"] == QUANTISED_LAYOUT["8bit"][param]["codes"], specs
    assert entry["jit_init"] == [] and entry["update"] == [], entry
    assert entry["explicit_jit_init"] == [], entry["explicit_jit_init"]
    assert entry["explicit_eager_init"] == [], entry["explicit_eager_init"]
    # Two of the three params are split over the 2 "model" devices and hold the bulk of the state:
    # each device keeps (1 + 1/2 + 1/2) / 3 = 2/3 of it (everything replicated: 1).
    assert entry["bytes_per_device"] / entry["unsharded_bytes"] <= 0.67, entry
    # Placement changes no number: the steps equal those with every code and scale replicated,
    # and a plain jit on an Explicit mesh (shardings in the types) equals the Auto mesh's steps.
    assert entry["max_abs_vs_replicated"] == 0.0, entry
    assert entry["explicit_update"] == [] and entry["explicit_params"] == [], entry
    assert entry["explicit_vs_auto"] == 0.0, entry


@pytest.mark.parametrize(
    ("types", "shape", "spec", "codes"),
    [
        ("explicit", (64, 1024), P(None, "model"), P(None, "data", None)),
        ("auto", (64, 1024), P(None, "model"), P(None, "data", None)),
        ("explicit", (64, 1024), P("model", None), P(None, "model", None)),
        ("auto", (64, 1024), P("model", None), P(None, "model", "data")),
        ("explicit", (3, 2048), P(None, "model"), P(None, None, None)),
    ],
)
def test_zero1_splits_quantised_codes_by_whole_blocks(types, shape, spec, codes):
    """`zero1_shardings` lays a quantised moment out by its blocks: over the data axis by its
    parameter's rows where they are free and each device's rows are whole blocks, the scales
    with them. Where they are not (rows split over "model" already, or 3 rows over 4 devices),
    an ``Explicit`` mesh keeps the codes replicated over "data" (the rule of other leaves split
    each block's bytes from its scale, and the codecs raised a ``ShardingTypeError`` there), an
    ``Auto`` mesh takes that rule (XLA moves what the codecs need). 4 x 2 devices, placeholders:
    nothing is allocated."""
    axis = jax.sharding.AxisType.Explicit if types == "explicit" else jax.sharding.AxisType.Auto
    mesh = jax.sharding.AbstractMesh((4, 2), ("data", "model"), axis_types=(axis, axis))
    params = {"w": jax.ShapeDtypeStruct(shape, "float32", sharding=NamedSharding(mesh, spec))}
    opt = adamx.adamw(0.1, **adamx.low_bit_moments(8))
    zero = adamx.zero1_shardings(opt, params, "data")
    for moment in (zero[0][0].ema["w"], zero[0][2].estimator[0].ema["w"]):
        assert tuple(moment.codes.spec) + (None,) * (3 - len(moment.codes.spec)) == tuple(codes)
        if types == "explicit":  # the scales follow the codes' blocks
            assert (
                tuple(moment.scales.spec) + (None,) * (2 - len(moment.scales.spec))
                == tuple(codes)[:2]
            )
