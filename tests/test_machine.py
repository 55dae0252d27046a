"""machines.jsonl: every output directory names the machine and software that computed
it, and a resume on another kind of machine says that its bits will differ."""

import dataclasses
import json
import sys

import jax
import pytest

from maml2_jax import cli, deep_training
from maml2_jax.io import machine
from maml2_jax.learners.policy_gradient import PolicyGradientConfig
from maml2_jax.networks import PolicyConfig

RECORDED = {"event": "start", "time": "2026-01-01T00:00:00Z", "argv": ["train"], "jax_platform": "cpu", "device": "cpu",
            "devices": 1, "cpu_model": "A", "cpu_fingerprint": "0123456789ab", "cpu_count": 2, "jax": "0.1",
            "jaxlib": "0.1", "xla_flags": ""}


def test_only_what_decides_the_bits_counts_as_a_change():
    # Time, command line, core count and visible device count do not change the bits;
    # the count of devices the run splits its work over does.
    assert machine.changes(RECORDED, dict(RECORDED, time="later", argv=["resume"], cpu_count=16, devices=8)) == []
    split = dict(RECORDED, devices=8, devices_used=8)
    assert machine.changes(split, dict(split, devices=4, devices_used=4)) == ["devices_used"]
    assert machine.changes(split, dict(split, devices=16)) == []
    assert machine.changes(RECORDED, dict(RECORDED, cpu_fingerprint="ba9876543210")) == ["cpu_fingerprint"]
    assert machine.changes(RECORDED, dict(RECORDED, xla_flags="--xla_cpu_max_isa=SSE4_2", jaxlib="0.2")) == [
        "jaxlib", "xla_flags"]
    # On an accelerator the host processor does not compute the programs.
    gpu = dict(RECORDED, jax_platform="gpu", device="H100")
    assert machine.changes(gpu, dict(gpu, cpu_fingerprint="ba9876543210")) == []
    assert machine.changes(RECORDED, gpu) == ["jax_platform", "device"]
    # A record written before a field existed is not compared on that field.
    older = {k: v for k, v in RECORDED.items() if k != "xla_flags"}
    assert machine.changes(older, dict(RECORDED, xla_flags="--x")) == []


def test_describe_names_this_process(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")
    described = machine.describe()
    assert described["jax_platform"] == jax.default_backend() and described["jax"] == jax.__version__
    assert described["cpu_fingerprint"] == machine.fingerprint() and len(described["cpu_fingerprint"]) == 12
    assert described["cpu_model"].strip() and described["xla_flags"] == "--xla_cpu_max_isa=AVX2"
    assert set(machine.BITWISE) <= set(described) | {"devices_used"}  # the run's own, written by session
    assert json.loads(json.dumps(described)) == described


def _sessions(out):
    return [json.loads(line) for line in (out / machine.FILE).read_text().splitlines()]


def _edit_last(out, **fields):
    sessions = _sessions(out)
    sessions[-1].update(fields)
    (out / machine.FILE).write_text("".join(json.dumps(s) + "\n" for s in sessions))


TINY = ["--env", "nav2d", "--algo", "maml", "--rule", "adam", "--horizon", "5", "--meta-batch-size", "2",
        "--num-trajectories", "2", "--devices", "1", "--quiet"]


def test_a_resume_on_another_machine_is_noted_even_quietly(tmp_path, capsys):
    out = tmp_path / "run"
    # Two seeds: the record is the whole run's, beside run_config.json and seed_<s>/.
    assert cli.main(["train", *TINY, "--seeds", "2", "--outer-iterations", "2", "--out", str(out)]) == 0
    assert (out / "run_config.json").exists() and not (out / "seed_1" / machine.FILE).exists()
    [start] = _sessions(out)
    assert start["event"] == "start" and start["cpu_fingerprint"] == machine.fingerprint()
    assert start["argv"][:2] == ["train", "--env"] and str(out) in start["argv"]
    capsys.readouterr()
    # The same machine: no note. (The run is finished, so each resume below computes
    # nothing; the record is written all the same.)
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0
    assert "maml2: note" not in capsys.readouterr().err
    # The last session ran with another instruction-set cap: the next resume says so.
    assert [s["event"] for s in _sessions(out)] == ["start", "resume"]
    _edit_last(out, xla_flags="--xla_cpu_max_isa=SSE4_2")
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0
    note = capsys.readouterr().err.strip()
    assert note.startswith("maml2: note:") and "xla_flags ('--xla_cpu_max_isa=SSE4_2', now" in note
    assert "not bit for bit" in note and "\n" not in note
    assert [s["event"] for s in _sessions(out)] == ["start", "resume", "resume"]
    # Each session records the devices the run used (--devices 1), whatever is visible.
    assert {s["devices_used"] for s in _sessions(out)} == {1}
    _edit_last(out, devices_used=2)
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0
    assert "devices_used (2, now 1)" in capsys.readouterr().err


def test_training_from_python_keeps_the_record_and_warns(tmp_path):
    # A notebook calls the library, not the command: the run keeps its record all the same.
    config = deep_training.TrainConfig(
        env="nav2d", algo="maml", rule="adam", horizon=5, meta_batch_size=2, devices=1,
        policy=PolicyConfig(hidden_sizes=(8,)), inner=PolicyGradientConfig(num_trajectories=2),
        meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, outer_iterations=1))
    out = tmp_path / "run"
    deep_training.train(config, str(out), argv=["from", "a", "notebook"])
    [start] = _sessions(out)
    assert start["event"] == "start" and start["argv"] == ["from", "a", "notebook"]
    _edit_last(out, jaxlib="0.0.1")
    with pytest.warns(machine.MachineChanged, match=r"jaxlib \('0\.0\.1', now '"):
        deep_training.train(config, str(out), resume=True)
    resumed = _sessions(out)[-1]
    assert resumed["event"] == "resume" and resumed["argv"] == sys.argv[1:]


@pytest.mark.parametrize("damage", ["", "{\"event\": \"sta"])
def test_a_missing_or_cut_record_is_nothing_to_compare(tmp_path, damage):
    (tmp_path / machine.FILE).write_text(damage)
    assert machine.last(str(tmp_path)) is None
    assert machine.last(str(tmp_path / "absent")) is None


GRID_ONLINE = ["online", "--trials", "1", "--arrivals", "2", "--methods", "maml2-N2,maml", "--outer-iterations", "1",
               "--maml-iterations", "3", "--arrival-episodes", "10", "--classify-episodes", "20", "--quiet"]
DEEP_ONLINE = ["online", "--env", "nav2d-isolated", "--trials", "1", "--arrivals", "1", "--initial-pool", "4",
               "--iterations-per-arrival", "1", "--steps", "1", "--horizon", "5", "--classify-trajectories", "2",
               "--methods", "maml", "--quiet"]


def test_online_runs_record_each_session_and_a_refused_start_leaves_nothing(tmp_path):
    grid, deep = tmp_path / "grid", tmp_path / "deep"
    assert cli.main([*GRID_ONLINE, "--out", str(grid)]) == 0
    assert cli.main([*GRID_ONLINE, "--out", str(grid), "--resume"]) == 0
    assert [s["event"] for s in _sessions(grid)] == ["start", "resume"]
    assert cli.main([*DEEP_ONLINE, "--out", str(deep)]) == 0
    assert [s["event"] for s in _sessions(deep)] == ["start"]
    # The grid world computes on the default device; the deep trials split over every visible one.
    assert [s["devices_used"] for s in _sessions(grid)] == [1, 1]
    assert _sessions(deep)[0]["devices_used"] == jax.device_count()
    # A resume refused for other settings computes nothing, so it adds no session.
    assert cli.main([*DEEP_ONLINE, "--steps", "2", "--out", str(deep), "--resume"]) == 2
    assert [s["event"] for s in _sessions(deep)] == ["start"]
    # Settings refused before the run starts: no directory, so no record either.
    refused = tmp_path / "refused"
    assert cli.main([*GRID_ONLINE, "--arrival-episodes", "5", "--out", str(refused)]) == 2
    assert cli.main(["train", *TINY, "--rule", "nope", "--out", str(refused)]) == 2
    assert not refused.exists()
