"""Ctrl-C (SIGINT) stops `maml2 train` with one line and exit 130, and the run resumes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from maml2_jax import cli

ARGS = ["--env", "nav2d", "--algo", "maml", "--rule", "adam", "--horizon", "10", "--meta-batch-size", "2",
        "--num-trajectories", "2", "--devices", "1"]


def _start(out, iterations, every):
    command = [sys.executable, "-m", "maml2_jax.cli", "train", *ARGS, "--outer-iterations", str(iterations),
               "--checkpoint-every", str(every), "--out", str(out)]
    process = subprocess.Popen(command, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    err = []
    reader = threading.Thread(target=lambda: err.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    return process, err, reader


def _wait_for(condition, seconds=300):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.05)


def _interrupt(process, err, reader):
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    reader.join(timeout=10)
    text = "".join(err)
    assert "Traceback" not in text and "Segmentation" not in text
    last = text.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("maml2: interrupted") and "--resume" in last
    assert process.stdout.read() == ""  # results only on stdout, and there are none yet
    return last


def test_ctrl_c_during_compilation_is_one_line_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    process, err, reader = _start(out, iterations=2, every=1)
    _wait_for(lambda: any("compiling" in line for line in err))
    time.sleep(0.5)  # inside XLA's compiler, not between Python statements
    line = _interrupt(process, err, reader)
    assert "compiling" in line
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0
    assert [json.loads(r)["iteration"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert (out / "params.msgpack").exists()
    # A finished run goes on for longer when --resume is given a new count (here by its old name).
    assert cli.main(["train", "--resume", str(out), "--quiet", "--iterations", "3"]) == 0
    assert [json.loads(r)["iteration"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert json.loads((out / "summary.json").read_text())["iterations"] == 3


@pytest.mark.slow  # a subprocess that must get past compilation first
def test_ctrl_c_during_training_resumes_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    process, err, reader = _start(out, iterations=1000, every=50)
    _wait_for(lambda: os.path.isdir(out / "checkpoint") and any(n.isdigit() for n in os.listdir(out / "checkpoint")))
    line = _interrupt(process, err, reader)
    assert "after outer iteration" in line
    # A run cannot be shortened below its newest checkpoint (at 50 or later).
    assert cli.main(["train", "--resume", str(out), "--quiet", "--outer-iterations", "5"]) == 2
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1000))


def test_the_ctrl_c_watcher_never_reads_a_descriptor_it_does_not_own(tmp_path, monkeypatch):
    """A watcher thread that starts late (a loaded machine) must not read a file that
    reused its pipe's descriptor number: it would consume the file's bytes (seen once
    as an empty file in a test under CI load, before the thread owned its pipe)."""
    late = []
    monkeypatch.setattr(cli.threading.Thread, "start", lambda thread: late.append(thread))
    assert cli.main(["train", "--seeds", "-2", "--out", str(tmp_path / "never")]) == 2
    path = tmp_path / "payload"
    path.write_text("payload")
    with open(path) as f:
        late[0].run()  # the watcher runs only now, after the command has returned
        assert f.read() == "payload"
