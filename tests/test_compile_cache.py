"""The CLI's persistent compilation cache: where it goes, how it is turned off, and that
a second run reads it and gives the same result."""

import json
import os
import subprocess
import sys

import pytest

from maml2_jax.io import compile_cache, machine

SMALL = ["--runs", "2", "--outer-iterations", "2", "--inner-iterations", "3", "--maml-iterations", "30",
         "--classify-episodes", "300", "--quiet"]


def test_directory_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.default_directory() is None
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "here"))
    assert compile_cache.default_directory() == str(tmp_path / "here")
    monkeypatch.delenv(compile_cache.ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    default = compile_cache.default_directory()
    # Per machine: the folder name is a hash of this processor's model and flags.
    assert os.path.dirname(default) == str(tmp_path / ".cache" / "maml2_jax" / "xla")
    assert os.path.basename(default) == machine.fingerprint()


@pytest.mark.slow  # two fresh processes compiling the experiment
def test_second_run_reads_the_cache_and_gives_the_same_result(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{compile_cache.ENV: str(cache)})
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    summaries = []
    for run in ("first", "second"):
        out = tmp_path / run
        subprocess.run([sys.executable, "-m", "maml2_jax.cli", "gridworld", *SMALL, "--out", str(out)], env=env,
                       check=True, capture_output=True)
        if run == "first":
            written = sorted(os.listdir(cache))
            assert written, "the first run wrote no compiled programs"
        with open(out / "summary.json") as f:
            summary = json.load(f)
        summary.pop("phase_seconds"), summary.pop("seconds")
        summaries.append(summary)
    assert sorted(os.listdir(cache)) == written  # the second run added nothing: every program was a hit
    assert summaries[0] == summaries[1]
