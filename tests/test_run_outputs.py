"""What a run leaves behind: TensorBoard events, a summary, config files that rerun it,
outputs that are never silently replaced, and no NaN in any saved file."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from maml2_jax import cli, deep_training
from maml2_jax.errors import ConfigError
from maml2_jax.io import files

TINY = ["--env", "nav2d", "--algo", "maml", "--rule", "adam", "--horizon", "10", "--meta-batch-size", "2",
        "--num-trajectories", "2", "--outer-iterations", "2", "--devices", "1", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert cli.main(["train", *TINY, "--out", str(out), "--tensorboard"]) == 0
    return out


def test_tensorboard_events_hold_every_scalar_of_the_metrics(run):
    from tensorboard.backend.event_processing import event_accumulator

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    numeric = {k for k, v in rows[0].items() if isinstance(v, float) and k != "iteration"}
    assert numeric and numeric <= set(events.Tags()["scalars"])
    for name in numeric:
        logged = events.Scalars(name)
        assert [e.step for e in logged] == [row["iteration"] for row in rows]
        # float32 in the event file: equal to the JSON value to float32 rounding.
        np.testing.assert_array_equal([e.value for e in logged], np.float32([row[name] for row in rows]))


def test_summary_and_metrics_are_strict_json(run):
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["final"]["iteration"] == 1
    assert set(summary["files"]) == set(os.listdir(run))
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))


def test_the_saved_config_reruns_the_run_and_flags_override_it(run, tmp_path):
    parser = cli.build_parser()

    def config(argv):
        args = parser.parse_args(argv)
        return cli._train_config(args, cli._explicit_flags(parser, argv))

    saved = deep_training.load_config(str(run))
    assert config(["train", "--config", str(run / "config.json"), "--out", "x"]) == saved
    changed = config(["train", "--config", str(run / "config.json"), "--out", "x", "--inner-lr", "0.2"])
    assert changed.inner.inner_lr == 0.2 and changed.inner.num_trajectories == saved.inner.num_trajectories
    (tmp_path / "partial.yaml").write_text("algo: maml2\nmeta:\n  categories: 2\ninner:\n  inner_lr: 0.05\n")
    from_yaml = config(["train", "--config", str(tmp_path / "partial.yaml"), "--out", "x"])
    assert (from_yaml.algo, from_yaml.meta.categories, from_yaml.inner.inner_lr) == ("maml2", 2, 0.05)
    assert from_yaml.meta.outer_iterations == deep_training.TrainConfig().meta.outer_iterations


def test_an_earlier_run_is_refused_without_overwrite(run, capsys):
    before = sorted(os.listdir(run))
    assert cli.main(["train", *TINY, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and "\n" not in err
    assert sorted(os.listdir(run)) == before


def test_overwrite_removes_every_file_of_the_earlier_run_and_nothing_else(tmp_path):
    earlier = tmp_path / "earlier"
    (earlier / "checkpoint" / "3").mkdir(parents=True)
    (earlier / "seed_4").mkdir()
    for name in ("config.json", "category_params.msgpack", "metrics.jsonl", ".tmp-abc.json"):
        (earlier / name).write_text("{}")
    files.claim_directory(str(earlier), cli.TRAIN_OUTPUTS, overwrite=True)
    assert os.listdir(earlier) == []
    # A directory with anything the command does not write is left alone, even with --overwrite.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.json").write_text("{}")
    (mixed / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        files.claim_directory(str(mixed), cli.TRAIN_OUTPUTS, overwrite=True)
    assert sorted(os.listdir(mixed)) == ["config.json", "notes.txt"]


def test_files_take_their_mode_from_the_umask(tmp_path):
    path = tmp_path / "x.json"
    files.write_json(str(path), {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


def test_a_diverging_run_stops_in_one_line_and_saves_no_nan(tmp_path, capsys):
    out = tmp_path / "diverged"
    argv = ["train", *TINY, "--out", str(out), "--inner-lr", "1e6", "--checkpoint-every", "1"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("maml2: error: non-finite") and "iteration 0" in err and "\n" not in err
    assert not (out / "params.msgpack").exists() and not (out / "summary.json").exists()
    assert os.listdir(out / "checkpoint") == []  # the only step diverged: nothing to checkpoint
    assert (out / "metrics.jsonl").read_text() == ""


def test_distributed_without_a_coordinator_is_one_line(tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["train", *TINY, "--out", str(out), "--distributed"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maml2: error: --distributed") and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("flags, says", [
    (["--distributed", "--coordinator", "127.0.0.1:1"], "--num-processes, --process-id missing"),
    (["--distributed", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
     "need 0 <= --process-id < --num-processes"),
    (["--distributed", "--coordinator", "nohost", "--num-processes", "2", "--process-id", "1"], "HOST:PORT"),
    (["--distributed", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "1",
      "--join-timeout", "0"], "--join-timeout"),
    (["--num-processes", "2"], "need --distributed"),
])
def test_incomplete_launches_are_one_line(tmp_path, capsys, flags, says):
    out = tmp_path / "never"
    assert cli.main(["train", *TINY, "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maml2: error: ") and says in err and "\n" not in err
    assert not out.exists()


def test_unreachable_coordinator_is_one_line_within_the_wait(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "maml2_jax.cli", "train", *TINY, "--out", str(tmp_path / "never"),
               "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1",
               "--join-timeout", "2"]
    started = time.monotonic()
    done = subprocess.run(command, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                          check=False, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert done.stderr.strip().startswith("maml2: error: --distributed: no coordinator answered")
    assert "\n" not in done.stderr.strip()
    assert elapsed < 60  # 2 s of waiting plus the interpreter's start, not JAX's 5-minute default
