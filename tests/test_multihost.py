"""Two processes joined by ``jax.distributed`` train data-parallel with sharded optimizer state.

``examples/multihost_data_parallel.py`` runs as two processes on this machine (coordinator on
loopback, two CPU devices each, CPU collectives through gloo): 20 steps with the params
replicated over the 4 devices, each batch split over them, and the state split over them
(ZeRO-1). Its losses and final params must match the same script run as one process on one
device. Every process is started in its own process group and killed with it in a ``finally``,
so a hung collective never outlives the test.
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

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "multihost_data_parallel.py"
DEADLINE_S = 240  # measured: ~6 s for both processes on 2 cores
TOLERANCE = 1e-6
STEP = 1e-2  # the example's learning rate: the size of one Adam step


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of the group exists (owned by someone else)
        return True
    return True


def _run(processes: int, local_devices: int, out_dir: Path) -> list[dict]:
    """Run the example as ``processes`` processes; their results, in process order."""
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
                    env=_environment(),
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


def _assert_close(params: dict, reference: dict) -> None:
    """Within 1e-6 of each leaf's magnitude, or of one step (the learning rate, 1e-2).

    Sums across devices reorder, so the two runs differ by a few float32 ulps of the quantities of
    one step; the 1-element output bias ends near 3e-4, where those ulps are ~2e-5 of the bias.
    """
    for name in reference:
        x, y = np.asarray(params[name], np.float64), np.asarray(reference[name], np.float64)
        scale = max(float(np.max(np.abs(y))), STEP)
        assert np.max(np.abs(x - y)) <= TOLERANCE * scale, (name, x, y)


def test_two_processes_match_one(tmp_path):
    start = time.monotonic()
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    results = _run(2, 2, tmp_path / "two")
    elapsed = time.monotonic() - start
    (reference,) = _run(1, 1, tmp_path / "one")

    assert [r["process_id"] for r in results] == [0, 1]
    assert all(r["num_processes"] == 2 and r["devices"] == 4 for r in results)
    assert len(reference["losses"]) == 20 and reference["devices"] == 1
    # Both processes hold the same replicated params, equal to the one-device run's.
    assert results[0]["params"] == results[1]["params"]
    for result in results:
        _assert_close(result["params"], reference["params"])
        np.testing.assert_allclose(result["losses"], reference["losses"], rtol=TOLERANCE)
    # It trained, and each device kept a quarter of the optimizer state (ZeRO-1 over 4 devices:
    # every moment has an axis of 32 or 16; the counts and the 1-element b2 moments stay whole).
    assert reference["losses"][-1] < 0.9 * reference["losses"][0]
    ratio = results[0]["state_bytes_per_device"] / results[0]["state_bytes"]
    assert ratio < 0.3, ratio
    print(f"two processes: {elapsed:.1f} s, state per device {ratio:.3f} of the whole")
