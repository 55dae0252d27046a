"""`maml2 gridworld` checkpoints between its compiled stages; a killed run resumes to the same result."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from maml2_jax import cli

SMALL = ["--runs", "2", "--outer-iterations", "2", "--inner-iterations", "3", "--maml-iterations", "30",
         "--classify-episodes", "300", "--quiet"]


def _summary(path):
    summary = json.load(open(os.path.join(path, "summary.json")))
    for timing in ("phase_seconds", "seconds"):
        summary.pop(timing)
    return summary


def test_resume_after_each_stage_gives_the_uninterrupted_result(tmp_path, capsys):
    full = str(tmp_path / "full")
    assert cli.main(["gridworld", *SMALL, "--out", full]) == 0
    expected = _summary(full)
    assert sorted(os.listdir(os.path.join(full, "checkpoint"))) == ["1", "2", "3"]
    # An interrupted run that completed two stages (the slow test below kills one for real).
    for kept in (2,):
        part = str(tmp_path / f"after{kept}")
        assert cli.main(["gridworld", *SMALL, "--out", part]) == 0
        for later in range(kept + 1, 4):
            os.system(f"rm -rf {os.path.join(part, 'checkpoint', str(later))}")
        os.remove(os.path.join(part, "summary.json"))
        assert cli.main(["gridworld", *SMALL, "--out", part, "--resume"]) == 0
        assert _summary(part) == expected


def test_resume_with_other_settings_is_refused_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["gridworld", *SMALL, "--out", out]) == 0
    capsys.readouterr()
    assert cli.main(["gridworld", *SMALL, "--seed", "5", "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "other settings" in err and "\n" not in err
    assert cli.main(["gridworld", *SMALL, "--out", str(tmp_path / "none"), "--resume"]) == 2
    # A run saved before a setting existed (here the reset rule) resumes with that setting
    # at its default, the behaviour it ran with, and is refused with another value.
    path = os.path.join(out, "config.json")
    with open(path) as f:
        saved = json.load(f)
    assert saved.pop("reset_rule") == "category"
    with open(path, "w") as f:
        json.dump(saved, f)
    assert cli.main(["gridworld", *SMALL, "--out", out, "--resume"]) == 0
    assert cli.main(["gridworld", *SMALL, "--reset-rule", "carry", "--out", out, "--resume"]) == 2


@pytest.mark.slow  # three fresh processes, each compiling the experiment
def test_sigkilled_run_resumes_to_the_same_result(tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "maml2_jax.cli", "gridworld", *SMALL]
    subprocess.run([*command, "--out", full], env=env, check=True, capture_output=True)
    process = subprocess.Popen([*command, "--out", killed], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(killed, "checkpoint")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:  # kill once training has started
        if os.path.isdir(os.path.join(checkpoint, "2")):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    subprocess.run([*command, "--out", killed, "--resume"], env=env, check=True, capture_output=True)
    assert _summary(killed) == _summary(full)
