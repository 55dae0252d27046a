"""benchmarks/throughput.py: a size that cannot fit is refused before compiling anything, one
that fails when it runs is reported and the sweep goes on, a sweep stopped part-way keeps
what it measured, and the PPO yardstick's stand-in for a jax function it needs places
arrays as jax did."""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_size_that_cannot_fit_is_refused_before_compiling(tmp_path):
    out = tmp_path / "throughput.json"
    # 64 seeds x 4096 tasks x 2 batches x 20 trajectories x 200 steps of a 64-64
    # policy: terabytes by the lower bound, more than any machine this runs on.
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"), "--sweep", "4096",
               "--seeds", "64", "--trajectories", "20", "--horizon", "200", "--out", str(out)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    refusal = [line for line in proc.stdout.splitlines() if line.startswith("refused:")]
    assert len(refusal) == 1
    assert refusal[0].startswith("refused: 4096 tasks x 64 seeds: the run needs at least")
    assert "lower --meta-batch-size (4096)" in refusal[0]
    assert proc.stderr.strip().splitlines()[-1] == "every size was refused (above): nothing was measured"
    result = json.loads(out.read_text())
    assert result["rows"] == [] and result["brax_ppo"] is None
    assert result["cpu_model"].strip()  # the machine is named even when nothing was measured
    assert result["refused"][0]["tasks"] == 4096 and "needs at least" in result["refused"][0]["refused"]


def test_a_sweep_stopped_part_way_keeps_the_sizes_it_measured(tmp_path):
    # A lent GPU runs the sweep under a time limit: the JSON is written after every
    # size, so a run killed during the second size still holds the first.
    out = tmp_path / "throughput.json"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"), "--env", "nav2d", "--sweep", "2,4",
               "--seeds", "1", "--trajectories", "2", "--horizon", "5", "--iterations", "1", "--out", str(out)]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:  # the table's first row: the 2-task size is measured
            if line.split()[:2] == ["2", "1"]:
                break
        else:
            raise AssertionError("the first size was never measured")
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    result = json.loads(out.read_text())
    assert result["finished"] is False
    assert [(row["tasks"], row["seeds"]) for row in result["rows"]] == [(2, 1)]
    assert result["rows"][0]["env_steps_per_second"] > 0


def test_the_stand_in_for_device_put_replicated_places_what_jax_placed():
    # brax's PPO (the yardstick) calls jax.device_put_replicated; a jax without it gets
    # throughput.put_replicated, which must hand pmap the same arrays on the same devices.
    # Three devices, in a process of its own, so that slice i has a device i to be on.
    check = """
import sys
sys.path.insert(0, "benchmarks")
import jax, numpy as np
from jax._src import api as jax_api
import throughput
devices = jax.devices()
assert len(devices) == 3, devices
tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int32(7)}
ours, theirs = throughput.put_replicated(tree, devices), jax_api.device_put_replicated(tree, devices)
for key in tree:
    assert ours[key].dtype == theirs[key].dtype and ours[key].shape == (3, *np.shape(tree[key])), key
    np.testing.assert_array_equal(ours[key], theirs[key])
    for a, b in zip(ours[key].addressable_shards, theirs[key].addressable_shards, strict=True):
        assert (a.device, a.index) == (b.device, b.index), key
    assert [s.index[0] for s in ours[key].addressable_shards] == [slice(i, i + 1) for i in range(3)], key
print("same")
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=3")
    proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "same"


def test_a_size_that_fails_when_it_runs_is_reported_and_the_sweep_goes_on(tmp_path):
    # The memory check is a lower bound, so a size can pass it and still run out of device
    # memory. Here the 4-task size fails as XLA reports that; the 2-task size is measured.
    out = tmp_path / "throughput.json"
    driver = f"""
import sys
sys.path.insert(0, "benchmarks")
import jax
import throughput
real = throughput.measure
def measure(config, *args):
    if config.meta_batch_size == 4:
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB.\\nmore")
    return real(config, *args)
throughput.measure = measure
sys.argv = ["throughput.py", "--env", "nav2d", "--sweep", "4,2", "--trajectories", "2", "--horizon", "5",
            "--iterations", "1", "--out", {str(out)!r}]
throughput.main()
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", driver], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    failure = [line for line in proc.stdout.splitlines() if line.startswith("failed:")]
    assert failure == ["failed: 4 tasks x 1 seeds: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB."]
    result = json.loads(out.read_text())
    assert result["finished"] is True
    assert result["failed"] == [{"tasks": 4, "seeds": 1,
                                 "failed": "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB."}]
    assert [row["tasks"] for row in result["rows"]] == [2]
