"""Two processes joined by ``jax.distributed`` train data-parallel with sharded optimizer state.

``examples/multihost_data_parallel.py`` runs as two processes on this machine (coordinator on
loopback, two CPU devices each, CPU collectives through gloo): 20 steps with the params
replicated over the 4 devices, each batch split over them, and the state split over them
(ZeRO-1). Its losses and final params must match the same script run as one process on one
device, on each of the step's two paths: the jnp path (``ADAMX_NATIVE=0``) and the CPU kernel
(`adamx.step`'s default, run per shard on the mesh). Every process is started in its own process
group and killed with it in a ``finally``, so a hung collective never outlives the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "multihost_data_parallel.py"
DEADLINE_S = 240  # measured: ~6 s for both processes on 2 cores
STEP = 1e-2  # the example's learning rate: the size of one Adam step
STEPS = 20  # the example's steps
EPS = float(np.finfo(np.float32).eps)
# The jnp path: the same float32 operations in both runs, which differ only where the mesh
# reorders a sum (the gradients' all-reduce): measured 3.8e-7 of a step (b2), within 1e-6.
TOLERANCE_JNP = 1e-6
# The kernel path: on one device the kernel's reduction pass sums the clipping norm's squares in
# double and rounds once; on the mesh JAX sums them in float32 over the shards (docs/design.md,
# section 8). The norm, hence every clipped gradient, differs in its last bits each step, and
# Adam's step m / sqrt(v) by as much relative: allowing 4 float32 ulps a step, over the example's
# 20 steps that is 80 EPS = 9.5e-6 of a step (measured 1.1e-6, b2).
TOLERANCE_KERNEL = STEPS * 4 * EPS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment(native: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["JAX_PLATFORMS"] = "cpu"
    env["ADAMX_NATIVE"] = "1" if native else "0"
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of the group exists (owned by someone else)
        return True
    return True


def _run(processes: int, local_devices: int, out_dir: Path, native: bool) -> list[dict]:
    """Run the example as ``processes`` processes, with the CPU kernel if ``native``; their
    results, in process order."""
    port = _free_port()
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for index in range(processes):
            log = open(out_dir / f"process{index}.log", "w", encoding="utf-8")  # noqa: SIM115
            logs.append(log)
            command = [
                sys.executable, str(EXAMPLE), "--coordinator", f"127.0.0.1:{port}",
                "--num-processes", str(processes), "--process-id", str(index),
                "--local-devices", str(local_devices), "--out", str(out_dir / f"{index}.json"),
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=_environment(native),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, killed as one below
                )
            )
        deadline = time.monotonic() + DEADLINE_S
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for log in logs:
            log.close()
    for proc in procs:  # nothing of either process group is left
        assert not _group_alive(proc.pid), f"process group {proc.pid} outlived the test"
    for index, proc in enumerate(procs):
        text = (out_dir / f"process{index}.log").read_text(encoding="utf-8")
        assert proc.returncode == 0, f"process {index} exited {proc.returncode}:\n{text[-3000:]}"
    return [json.loads((out_dir / f"{i}.json").read_text()) for i in range(processes)]


def _assert_close(params: dict, reference: dict, tolerance: float) -> None:
    """Within ``tolerance`` of each leaf's magnitude, or of one step (the learning rate, 1e-2):
    the 1-element output bias ends near 3e-4 after steps of 1e-2, so its error is a step's."""
    for name in reference:
        x, y = np.asarray(params[name], np.float64), np.asarray(reference[name], np.float64)
        scale = max(float(np.max(np.abs(y))), STEP)
        assert np.max(np.abs(x - y)) <= tolerance * scale, (name, x, y, tolerance)


@pytest.mark.parametrize("native", [False, True], ids=["jnp", "kernel"])
def test_two_processes_match_one(tmp_path, native):
    tolerance = TOLERANCE_KERNEL if native else TOLERANCE_JNP
    start = time.monotonic()
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    results = _run(2, 2, tmp_path / "two", native)
    elapsed = time.monotonic() - start
    (reference,) = _run(1, 1, tmp_path / "one", native)

    assert [r["process_id"] for r in results] == [0, 1]
    assert all(r["num_processes"] == 2 and r["devices"] == 4 for r in results)
    assert len(reference["losses"]) == STEPS and reference["devices"] == 1
    # The path asked for is the path taken, on one device and on the mesh.
    assert [r["kernel"] for r in [*results, reference]] == [native] * 3
    # Both processes hold the same replicated params, equal to the one-device run's.
    assert results[0]["params"] == results[1]["params"]
    for result in results:
        _assert_close(result["params"], reference["params"], tolerance)
        np.testing.assert_allclose(result["losses"], reference["losses"], rtol=tolerance)
    # It trained, and each device kept a quarter of the optimizer state (ZeRO-1 over 4 devices:
    # every moment has an axis of 32 or 16; the counts and the 1-element b2 moments stay whole).
    assert reference["losses"][-1] < 0.9 * reference["losses"][0]
    ratio = results[0]["state_bytes_per_device"] / results[0]["state_bytes"]
    assert ratio < 0.3, ratio
    print(f"two processes: {elapsed:.1f} s, state per device {ratio:.3f} of the whole")
