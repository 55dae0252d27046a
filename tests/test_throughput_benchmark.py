"""benchmarks/throughput.py refuses a size that cannot fit before compiling anything."""

import json
import os
import subprocess
import sys

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
    assert result["refused"][0]["tasks"] == 4096 and "needs at least" in result["refused"][0]["refused"]
