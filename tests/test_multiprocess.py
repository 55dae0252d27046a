"""``maml2 train`` and ``maml2 gridworld`` with ``--distributed``: real processes on 127.0.0.1.

Two processes of one CPU device each give the run of one process with two devices:
both split the work over the same two devices and compile the same program; the only
collectives are sums of two per-device values, and a sum of two floats does not depend
on their order, so the rows must be equal, not merely close. With four devices the
cross-process all-reduce (gloo) adds in another order than the in-process one, and a
single device has no cross-device sums at all: those runs agree to float32 rounding
before the first meta-update (bounded below), then drift as training amplifies it
(CG and the line search; see tests/test_task_sharding.py for the update itself).
The grid world's runs share nothing, so any split gives the same numbers.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

TINY = {
    "maml": ["--env", "nav2d", "--algo", "maml", "--outer-iterations", "2", "--meta-batch-size", "4",
             "--num-trajectories", "4", "--horizon", "20", "--quiet"],
    "maml2": ["--env", "nav2d-isolated", "--algo", "maml2", "--outer-iterations", "3", "--classify-every", "2",
              "--pool-size", "8", "--tasks-per-category", "4", "--categories", "2", "--num-trajectories", "4",
              "--horizon", "20", "--quiet"],
}
GRID = ["--runs", "4", "--outer-iterations", "2", "--inner-iterations", "2", "--maml-iterations", "20",
        "--classify-episodes", "20", "--test-episodes", "10", "--quiet"]
# Iteration 0's returns come before any meta-update: tasks, keys and rollouts alone.
# Measured 1 device against 2 or 4: at most 2.3e-7 relative (float32 rounding of the
# rollouts' sums in programs partitioned differently); bound ~40x that.
ROUNDING = 1e-5


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


def _summary(out) -> dict:
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    for timing in ("seconds", "phase_seconds"):
        summary.pop(timing)
    return summary


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _single(command: list[str], out: str, devices: int) -> None:
    subprocess.run([*command, "--out", out], env=_env(devices), check=True, capture_output=True, timeout=600)


def _launch(command: list[str], count: int, *flags: str, stdout=subprocess.DEVNULL) -> list[subprocess.Popen]:
    """``count`` processes of one CPU device each, joined on a free loopback port."""
    port = _free_port()
    return [subprocess.Popen([*command, *flags, "--distributed", "--coordinator", f"127.0.0.1:{port}",
                              "--num-processes", str(count), "--process-id", str(rank), "--join-timeout", "60"],
                             env=_env(1), stdout=stdout, stderr=subprocess.PIPE, text=True)
            for rank in range(count)]


def _finish(processes) -> list[tuple[str, str]]:
    outputs = [p.communicate(timeout=600) for p in processes]
    for rank, (p, (_, err)) in enumerate(zip(processes, outputs)):
        assert p.returncode == 0, f"process {rank}: {err[-2000:]}"
    return outputs


def _first_iterations_agree(rows: list[dict], reference: list[dict]) -> None:
    assert len(rows) == len(reference)
    for key, value in rows[0].items():
        if "return" in key:
            np.testing.assert_allclose(value, reference[0][key], rtol=ROUNDING, err_msg=key)


def _train(algo: str) -> list[str]:
    return [sys.executable, "-m", "maml2_jax.cli", "train", *TINY[algo]]


# MAML² runs MAML's meta-update on every category and θ, and classifies between
# iterations: it covers MAML's path, so MAML alone is a slow check (a minute on two cores).
@pytest.mark.parametrize("algo", [pytest.param("maml", marks=pytest.mark.slow), "maml2"])
def test_two_processes_equal_one_process_with_two_devices(tmp_path, algo):
    single, shared = str(tmp_path / "single"), str(tmp_path / "shared")
    _single(_train(algo), single, devices=2)
    outputs = _finish(_launch(_train(algo), 2, "--out", shared, stdout=subprocess.PIPE))
    # Only process 0 reports; stdout holds its results alone (not gloo's connection notice).
    assert outputs[0][0].splitlines()[-1] == f"wrote {shared}" and outputs[1][0] == ""

    rows = _rows(shared)
    assert len(rows) == len(_rows(single)) > 0
    assert rows == _rows(single)
    if algo == "maml2":  # classification saw every task's feature: the same labels
        assert any(row.get("classified") for row in rows)
    else:  # a single device has no cross-device sums: equal to rounding only (slow, as is four processes')
        one_device = str(tmp_path / "one_device")
        _single(_train(algo), one_device, devices=1)
        _first_iterations_agree(rows, _rows(one_device))


@pytest.mark.parametrize("count", [2, pytest.param(4, marks=pytest.mark.slow)])  # four: ~40 s on two cores
def test_the_grid_world_on_several_processes_equals_one_process(tmp_path, count):
    command = [sys.executable, "-m", "maml2_jax.cli", "gridworld", *GRID]
    single, one_device, shared = (str(tmp_path / name) for name in ("single", "one_device", "shared"))
    _single(command, single, devices=2)
    _single(command, one_device, devices=1)
    outputs = _finish(_launch(command, count, "--out", shared, stdout=subprocess.PIPE))
    assert "maml2" in outputs[0][0] and all(out == "" for out, _ in outputs[1:])  # process 0's table alone
    assert "Gloo" not in outputs[0][0]
    assert sorted(os.listdir(shared)) == sorted(os.listdir(single))
    assert _summary(shared) == _summary(single) == _summary(one_device)


@pytest.mark.slow  # four fresh processes compiling on two cores: about a minute
def test_four_processes_agree_with_one_process_to_rounding(tmp_path):
    single, shared = str(tmp_path / "single"), str(tmp_path / "shared")
    _single(_train("maml2"), single, devices=4)
    _finish(_launch(_train("maml2"), 4, "--out", shared))
    rows, reference = _rows(shared), _rows(single)
    _first_iterations_agree(rows, reference)
    assert [row["labels"] for row in rows if row["classified"]] == \
        [row["labels"] for row in reference if row["classified"]]


@pytest.mark.slow  # brax compiles for about a minute per process on two cores
def test_a_brax_family_on_two_processes_equals_one_process_with_two_devices(tmp_path):
    # MuJoCo's loader puts the robot's model on process 0's device unless told otherwise.
    command = [sys.executable, "-m", "maml2_jax.cli", "train", "--env", "halfcheetah-vel", "--algo", "maml",
               "--outer-iterations", "2", "--meta-batch-size", "2", "--num-trajectories", "2", "--horizon", "10",
               "--quiet"]
    single, shared = str(tmp_path / "single"), str(tmp_path / "shared")
    _single(command, single, devices=2)
    _finish(_launch(command, 2, "--out", shared))
    assert _rows(shared) == _rows(single) and len(_rows(single)) == 2


def _one_line_each(processes, code: int = 2) -> list[str]:
    lines = []
    for p in processes:
        _, err = p.communicate(timeout=300)
        assert p.returncode == code, err[-2000:]
        assert err.strip().startswith("maml2: error: ") and "\n" not in err.strip(), err[-2000:]
        lines.append(err.strip())
    return lines


def test_a_meta_batch_that_does_not_split_over_the_processes_is_one_line_on_each(tmp_path):
    out = tmp_path / "never"
    lines = _one_line_each(_launch(_train("maml"), 2, "--meta-batch-size", "3", "--out", str(out)))
    assert all(line.startswith("maml2: error: meta-batch size 3") for line in lines)
    assert not out.exists()


def test_an_output_directory_process_0_refuses_stops_every_process_with_its_line(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("not a run")  # never overwritten, even with --overwrite
    started = time.monotonic()
    lines = _one_line_each(_launch([sys.executable, "-m", "maml2_jax.cli", "gridworld", *GRID], 2, "--out", str(out)))
    assert lines[0] == lines[1] and str(out) in lines[0]
    assert time.monotonic() - started < 120  # not JAX's 100 s heartbeat or 300 s shutdown waits
    assert os.listdir(out) == ["notes.txt"]


def test_process_0_waits_for_the_others_within_the_join_timeout(tmp_path):
    port = _free_port()
    command = [*_train("maml"), "--out", str(tmp_path / "never"), "--distributed", "--coordinator",
               f"127.0.0.1:{port}", "--num-processes", "3", "--process-id", "0", "--join-timeout", "2"]
    started = time.monotonic()
    done = subprocess.run(command, env=_env(1), capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("maml2: error: --distributed: 1 of 3 processes joined within 2 s; missing "
                                   "--process-id 1, 2 (--join-timeout sets the wait)")
    assert time.monotonic() - started < 60  # 2 s of waiting plus the interpreter's start, not a JAX abort


def test_processes_launched_with_different_counts_stop_with_one_line_each(tmp_path):
    port = _free_port()
    command = [*_train("maml"), "--out", str(tmp_path / "never"), "--distributed", "--coordinator",
               f"127.0.0.1:{port}", "--join-timeout", "30"]
    processes = [subprocess.Popen([*command, "--num-processes", count, "--process-id", rank], env=_env(1),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for rank, count in (("0", "2"), ("1", "3"))]
    lines = _one_line_each(processes)
    assert "a process joined with --num-processes 3 (process 0 has 2)" in lines[0]
    assert "did not let process 1 join" in lines[1]
    assert not (tmp_path / "never").exists()


@pytest.mark.slow  # five fresh processes
def test_sigkilled_two_process_run_resumes_to_the_same_rows(tmp_path):
    flags = [*TINY["maml"], "--outer-iterations", "6", "--checkpoint-every", "2"]  # the later flag wins
    command = [sys.executable, "-m", "maml2_jax.cli", "train"]
    single = str(tmp_path / "single")
    _single([*command, *flags], single, devices=2)

    shared = tmp_path / "shared"
    processes = _launch([*command, *flags], 2, "--out", str(shared))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (shared / "checkpoint" / "2").is_dir():
        assert all(p.poll() is None for p in processes), "a process ended before its first checkpoint"
        time.sleep(0.05)
    for p in processes:  # both, mid-run
        p.send_signal(signal.SIGKILL)
    for p in processes:
        p.wait()
    assert not (shared / "summary.json").exists()

    _finish(_launch(command, 2, "--resume", str(shared)))
    assert _rows(str(shared)) == _rows(single)


@pytest.mark.slow  # three launches
def test_sigkilled_two_process_grid_world_resumes_to_the_same_summary(tmp_path):
    flags = [*GRID, "--outer-iterations", "4", "--maml-iterations", "200", "--classify-episodes", "200"]
    command = [sys.executable, "-m", "maml2_jax.cli", "gridworld", *flags]
    single = str(tmp_path / "single")
    _single(command, single, devices=2)

    shared = tmp_path / "shared"
    processes = _launch(command, 2, "--out", str(shared))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (shared / "checkpoint" / "2").is_dir():  # classified, not trained
        assert all(p.poll() is None for p in processes), "a process ended before its second checkpoint"
        time.sleep(0.05)
    for p in processes:
        p.send_signal(signal.SIGKILL)
    for p in processes:
        p.wait()
    assert not (shared / "summary.json").exists()

    _finish(_launch(command, 2, "--out", str(shared), "--resume"))
    assert _summary(str(shared)) == _summary(single)
