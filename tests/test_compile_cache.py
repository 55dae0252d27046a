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
    # Every program written, however fast it compiles: with the CLI's 0.25 s minimum, a
    # program compiling in about that long (the k-means, 0.31 s on a 2-core CPU) is
    # written by one run and not the other as the machine's load varies.
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{compile_cache.ENV: str(cache), compile_cache.MIN_TIME_ENV: "0"})
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


def test_a_minimum_compile_time_set_for_jax_is_kept(tmp_path):
    # JAX reads its variable at import; enable() sets the CLI's 0.25 s only where none was given.
    script = ("import jax, sys; from maml2_jax.io import compile_cache; compile_cache.enable(sys.argv[1]); "
              "print(jax.config.jax_persistent_cache_min_compile_time_secs)")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop(compile_cache.MIN_TIME_ENV, None)
    seen = []
    for given in (None, "1.5"):
        if given is not None:
            env[compile_cache.MIN_TIME_ENV] = given
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache")], env=env, check=True,
                              capture_output=True, text=True)
        seen.append(float(done.stdout.split()[-1]))
    assert seen == [compile_cache.MIN_COMPILE_SECONDS, 1.5]
