"""`maml2 gridworld`: outputs on a tiny run, one-line errors and nothing written on bad input."""

import json
import os

import pytest

from maml2_jax import cli

TINY = ["--runs", "2", "--outer-iterations", "2", "--inner-iterations", "2", "--maml-iterations", "20",
        "--classify-episodes", "200", "--quiet"]


def test_tiny_run_writes_summary_and_figure(tmp_path, capsys):
    out = tmp_path / "nested" / "out"
    assert cli.main(["gridworld", "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"] == {"0": [0, 1], "1": [2, 3, 4, 5, 6, 7, 8], "2": [9]}
    methods = {"maml2", "maml2_no_reset", "maml", "lfs"}
    for key in ("mean_steps", "curves", "per_task"):
        assert set(summary[key]) == methods
    assert len(summary["curves"]["maml2"]["2"]) == 10
    assert set(summary["per_task"]["lfs"]) == {str(t) for t in range(10)}
    assert len(summary["categories"]) == 2 and len(summary["categories"][0]) == 10
    assert summary["config"]["runs"] == 2 and summary["seconds"] > 0
    # The table's numbers are the summary's.
    table = capsys.readouterr().out
    assert f"{summary['mean_steps']['lfs']['1']:.1f}" in table
    assert (out / "adaptation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # No temporary files left; the checkpoint of the stages and the config are kept for --resume.
    assert sorted(os.listdir(out)) == ["adaptation.png", "checkpoint", "config.json", "machines.jsonl", "summary.json"]


def test_custom_maze_defaults_to_a_group_per_task(tmp_path):
    out = tmp_path / "maze"
    argv = ["gridworld", "--out", str(out), "--rows", "4", "--cols", "4", "--walls", "5,6", "--goals", "3,12,15",
            "--categories", "2", *TINY]
    assert cli.main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["groups"] == {"0": [0], "1": [1], "2": [2]}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--categories", "11"], "categories"),
        (["--goals", "2"], "goal cell 2 is a wall"),
        (["--goals", "39,100"], "goal cell 100 is off"),
        (["--outer-iterations", "0"], "outer iterations"),
        (["--maml-iterations", "-5"], "maml iterations"),
        (["--runs", "x"], "--runs"),
        (["--groups", "0,1;x"], "group"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert cli.main(["gridworld", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maml2: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_unwritable_output_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli.main(["gridworld", "--out", str(blocker / "out"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out" in err and "is not a directory" in err and "\n" not in err


def test_train_writes_metrics_and_parameters(tmp_path, capsys):
    out = tmp_path / "train"
    argv = ["train", "--env", "nav2d", "--iterations", "2", "--meta-batch-size", "2", "--num-trajectories", "3",
            "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(r["pre_return"] < 0 and r["post_return"] < 0 and r["seconds"] > 0 for r in rows)
    assert (out / "params.msgpack").stat().st_size > 4000 * 4  # 4,484 float32 parameters
    assert json.loads((out / "config.json").read_text())["meta_batch_size"] == 2


def test_train_bad_input_is_one_line(tmp_path, capsys):
    assert cli.main(["train", "--iterations", "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "maml2: error: outer iterations must be a positive integer, got 0"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "args,message",
    [(["--algo", "maml2", "--categories", "9", "--pool-size", "4"], "cannot make 9 categories"),
     (["--devices", "999"], "asked for 999 devices but only"),
     (["--algo", "maml2", "--feature", "grad"], "invalid choice"),
     (["--algo", "maml2", "--classify-every", "-1"], "classify every must be a non-negative integer"),
     (["--seeds", "0"], "seeds must be a positive integer"), (["--rule", "lbfgs"], "invalid choice")],
)
def test_train_maml2_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    assert cli.main(["train", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_resume_of_a_directory_without_a_run_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", "--resume", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a training run" in err and "\n" not in err
    assert cli.main(["train"]) == 2
    assert "--out" in capsys.readouterr().err


def test_evaluate_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["evaluate", str(tmp_path / "empty"), "--out", str(tmp_path / "e")]) == 2
    assert "no training runs" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "missing"), "--out", str(tmp_path / "e")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
