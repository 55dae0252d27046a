"""Checkpoints and exact resume of `maml2 train`: a paused or killed run, resumed,
ends bit-identical to the uninterrupted one (parameters, categories, metrics)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from maml2_jax import deep_training
from maml2_jax.errors import ConfigError
from maml2_jax.learners.policy_gradient import PolicyGradientConfig
from maml2_jax.networks import PolicyConfig

TINY = ["--horizon", "5", "--num-trajectories", "2", "--meta-batch-size", "2", "--pool-size", "6",
        "--tasks-per-category", "2", "--categories", "2", "--classify-every", "2", "--devices", "1", "--quiet"]


def _config(algo, iterations=5, rule="trpo"):
    return deep_training.TrainConfig(
        env="nav2d-isolated", algo=algo, rule=rule, horizon=5, meta_batch_size=2, pool_size=6, devices=1,
        checkpoint_every=2,
        policy=PolicyConfig(hidden_sizes=(8,)), inner=PolicyGradientConfig(num_trajectories=2),
        meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, outer_iterations=iterations, categories=2,
                                 tasks_per_category=2, classify_every=2))


def _rows(path):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in open(path)]


def _outputs(run):
    names = ["params.msgpack", "category_params.msgpack", "categories.json"]
    return {n: open(os.path.join(run, n), "rb").read() for n in names if os.path.exists(os.path.join(run, n))}


# MAML² with Adam by default: its moments are rule state the checkpoint must carry (and
# Adam compiles faster than TRPO); MAML-TRPO resumes in the slow run, and killed runs below.
@pytest.mark.parametrize("algo, rule", [pytest.param("maml", "trpo", marks=pytest.mark.slow),
                                        pytest.param("maml2", "trpo", marks=pytest.mark.slow), ("maml2", "adam")])
def test_paused_and_resumed_run_equals_the_uninterrupted_one(tmp_path, algo, rule):
    config = _config(algo, rule=rule)
    full, paused = str(tmp_path / "full"), str(tmp_path / "paused")
    state_full, _ = deep_training.train(config, full)
    deep_training.train(config, paused, stop_after=3)  # checkpoint at 2; iteration 2's line is redone
    assert len(_rows(os.path.join(paused, "metrics.jsonl"))) == 3
    state, _ = deep_training.train(config, paused, resume=True)
    assert _rows(os.path.join(full, "metrics.jsonl")) == _rows(os.path.join(paused, "metrics.jsonl"))
    assert _outputs(full) == _outputs(paused) and len(_outputs(full)) == (3 if algo == "maml2" else 1)
    assert int(state.iteration) == int(state_full.iteration) == 5


def test_an_extended_run_equals_one_started_with_the_longer_schedule(tmp_path):
    # Classifying every 2 iterations: the extension (3 -> 5) crosses a classification
    # (at 4) that the short run never made.
    long, short = str(tmp_path / "long"), str(tmp_path / "short")
    deep_training.train(_config("maml2", iterations=5, rule="adam"), long)
    deep_training.train(_config("maml2", iterations=3, rule="adam"), short)
    assert _outputs(short) and _outputs(short) != _outputs(long)
    config = deep_training.extend(short, 5)
    assert config == _config("maml2", iterations=5, rule="adam") == deep_training.load_config(short)
    assert not _outputs(short)  # the 3-iteration θ is gone: the run is unfinished until it reaches 5
    state, _ = deep_training.train(config, short, resume=True)
    assert int(state.iteration) == 5
    assert _rows(os.path.join(long, "metrics.jsonl")) == _rows(os.path.join(short, "metrics.jsonl"))
    assert _outputs(long) == _outputs(short) and len(_outputs(long)) == 3
    with pytest.raises(ConfigError, match="checkpoint after 5 outer iterations; give at least 5"):
        deep_training.extend(short, 4)


def test_an_extended_run_of_several_seeds_equals_the_longer_one(tmp_path):
    def config(iterations):
        return dataclasses.replace(_config("maml", iterations=iterations, rule="adam"), seeds=2)

    long, short = str(tmp_path / "long"), str(tmp_path / "short")
    deep_training.train(config(2), long)
    deep_training.train(config(1), short)
    assert deep_training.extend(short, 2) == config(2) == deep_training.load_config(short)
    deep_training.train(config(2), short, resume=True)
    for a, b in zip(deep_training.seed_dirs(long, config(2)), deep_training.seed_dirs(short, config(2))):
        assert deep_training.load_config(a) == deep_training.load_config(b)
        assert _rows(os.path.join(a, "metrics.jsonl")) == _rows(os.path.join(b, "metrics.jsonl"))
        assert _outputs(a) == _outputs(b) and len(_outputs(a)) == 1


def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path):
    config = _config("maml", iterations=2)
    run = str(tmp_path / "run")
    deep_training.train(config, run)
    checkpoint = os.path.join(run, deep_training.CHECKPOINT_DIR, "2")
    for root, _, names in os.walk(checkpoint):
        for name in names:
            if name != "_CHECKPOINT_METADATA":
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(3)
    with pytest.raises(ConfigError, match="cannot be read|does not match"):
        deep_training.train(config, run, resume=True)


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        deep_training.train(_config("maml"), str(tmp_path / "none"), resume=True)


def _start(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "maml2_jax.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _lines(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _kill_when(process, ready, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    process.wait()


@pytest.mark.slow  # nine compilations in fresh processes, about 3 minutes on 2 cores
@pytest.mark.parametrize("algo", ["maml", "maml2"])
def test_sigkilled_runs_resume_bit_identical(tmp_path, algo):
    args = ["train", "--algo", algo, "--iterations", "8", "--checkpoint-every", "1", *TINY]
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    assert _start([*args, "--out", full]).wait() == 0
    metrics = os.path.join(killed, "metrics.jsonl")
    checkpoints = os.path.join(killed, deep_training.CHECKPOINT_DIR)

    def writing_checkpoint():  # orbax's temporary directory of a checkpoint being written
        return os.path.isdir(checkpoints) and any("tmp" in n for n in os.listdir(checkpoints))

    _kill_when(_start([*args, "--out", killed]), lambda: _lines(metrics) >= 2)
    _kill_when(_start(["train", "--resume", killed, "--quiet"]), writing_checkpoint)
    _kill_when(_start(["train", "--resume", killed, "--quiet"]), lambda: _lines(metrics) >= 6)
    resumed = _start(["train", "--resume", killed, "--quiet"])
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    assert _rows(os.path.join(full, "metrics.jsonl")) == _rows(metrics)
    assert _outputs(full) == _outputs(killed)
