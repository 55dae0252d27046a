"""`maml2 train --distributed` with real processes on 127.0.0.1: two processes of one CPU
device each give the run of one process with two devices.

Both runs split the tasks over the same two devices and compile the same program; the
only collectives are sums of two per-device values, and a sum of two floats does not
depend on their order, so the rows must be equal, not merely close.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

TINY = {
    "maml": ["--env", "nav2d", "--algo", "maml", "--outer-iterations", "2", "--meta-batch-size", "4",
             "--num-trajectories", "4", "--horizon", "20", "--quiet"],
    "maml2": ["--env", "nav2d-isolated", "--algo", "maml2", "--outer-iterations", "3", "--classify-every", "2",
              "--pool-size", "8", "--tasks-per-category", "2", "--categories", "2", "--num-trajectories", "4",
              "--horizon", "20", "--quiet"],
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rows(out) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for row in rows:
        row.pop("seconds")  # wall time, the one field that may differ
    return rows


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


@pytest.mark.parametrize("algo", ["maml", "maml2"])
def test_two_processes_equal_one_process_with_two_devices(tmp_path, algo):
    command = [sys.executable, "-m", "maml2_jax.cli", "train", *TINY[algo]]
    single = str(tmp_path / "single")
    subprocess.run([*command, "--out", single], env=_env(2), check=True, capture_output=True, timeout=600)

    shared = str(tmp_path / "shared")
    port = _free_port()
    processes = [subprocess.Popen([*command, "--out", shared, "--distributed", "--coordinator", f"127.0.0.1:{port}",
                                   "--num-processes", "2", "--process-id", str(rank), "--join-timeout", "60"],
                                  env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for rank in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for rank, (p, (_, err)) in enumerate(zip(processes, outputs)):
        assert p.returncode == 0, f"process {rank}: {err[-2000:]}"
    # Only process 0 reports (gloo itself prints a connection line from each).
    assert "wrote" in outputs[0][0] and "wrote" not in outputs[1][0] and "iteration" not in outputs[1][0]

    rows = _rows(shared)
    assert len(rows) == len(_rows(single)) > 0
    assert rows == _rows(single)
    if algo == "maml2":  # classification saw every task's feature: the same labels
        assert any(row.get("classified") for row in rows)


def test_a_meta_batch_that_does_not_split_over_the_processes_is_one_line_on_each(tmp_path):
    out = tmp_path / "never"
    port = _free_port()
    command = [sys.executable, "-m", "maml2_jax.cli", "train", *TINY["maml"], "--meta-batch-size", "3",
               "--out", str(out), "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    processes = [subprocess.Popen([*command, "--process-id", str(rank)], env=_env(1), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for p in processes:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2
        assert err.strip().startswith("maml2: error: meta-batch size 3") and "\n" not in err.strip()
    assert not out.exists()


@pytest.mark.slow  # five fresh processes
def test_sigkilled_two_process_run_resumes_to_the_same_rows(tmp_path):
    flags = [*TINY["maml"], "--outer-iterations", "6", "--checkpoint-every", "2"]  # the later flag wins
    command = [sys.executable, "-m", "maml2_jax.cli", "train"]
    single = str(tmp_path / "single")
    subprocess.run([*command, *flags, "--out", single], env=_env(2), check=True, capture_output=True, timeout=600)

    def launch(*arguments):
        port = _free_port()
        return [subprocess.Popen([*command, *arguments, "--distributed", "--coordinator", f"127.0.0.1:{port}",
                                  "--num-processes", "2", "--process-id", str(rank)], env=_env(1),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]

    shared = tmp_path / "shared"
    processes = launch(*flags, "--out", str(shared))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (shared / "checkpoint" / "2").is_dir():
        assert all(p.poll() is None for p in processes), "a process ended before its first checkpoint"
        time.sleep(0.05)
    for p in processes:  # both, mid-run
        p.send_signal(signal.SIGKILL)
    for p in processes:
        p.wait()
    assert not (shared / "summary.json").exists()

    resumed = launch("--resume", str(shared))
    for rank, p in enumerate(resumed):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"process {rank}: {err[-2000:]}"
    assert _rows(str(shared)) == _rows(single)
