"""Times two trees of the library against each other, in alternation, in one sitting.

    python benchmarks/compare.py 81a6337 HEAD                 # two commits of this repository
    python benchmarks/compare.py /path/to/old/tree .         # two checked-out trees
    python benchmarks/compare.py 81a6337 HEAD --bench gridworld --alternations 5

OLD and NEW are each a commit of the repository this script sits in (checked out
into a temporary worktree) or a folder holding a ``maml2_jax`` package. Both run
with this Python (``PYTHONPATH`` set to the tree), so they share the installed
dependencies. Each alternation times OLD then NEW, the next NEW then OLD, and so
on, so that a machine that slows down or speeds up during the sitting weighs on
both. Prints every sample, the medians and the ratio OLD / NEW (above 1: NEW is
faster), and writes JSON.

Benchmarks (``--bench``):

* ``gridworld`` — the whole default experiment as a user runs it:
  ``python -m maml2_jax.cli gridworld`` in a fresh process, process wall time
  (start-up, compilation, the 50 runs, the figure and the files). The compilation
  cache is off (``MAML2_COMPILE_CACHE=off``): a first run on a machine. With
  ``--warm-cache`` each tree gets a cache folder of its own, filled by one untimed
  run first (a tree without the cache ignores it).
* ``meta_iteration`` — seconds per MAML-TRPO meta-iteration at the customary 2-D
  navigation config (20 tasks x 20 trajectories x 100 steps, CG 10): the median the
  tree's own ``benchmarks/meta_iteration.py`` reports (``maml_trpo``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import common  # noqa: E402  (beside this file)

from maml2_jax.io import machine  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHES = ("gridworld", "meta_iteration")


def resolve_tree(spec: str, scratch: str, created: list) -> tuple[str, str]:
    """``(folder, label)`` of a tree: a folder with ``maml2_jax/``, or a commit checked out
    into a worktree under ``scratch`` (appended to ``created``, to be removed at the end)."""
    if os.path.isdir(os.path.join(spec, "maml2_jax")):
        return os.path.abspath(spec), os.path.abspath(spec)
    repo = subprocess.run(["git", "-C", HERE, "rev-parse", "--show-toplevel"], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", f"{spec}^{{commit}}"], check=True,
                                capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError:
        sys.exit(f"compare.py: {spec!r} is neither a folder holding maml2_jax/ nor a commit of {repo}")
    folder = os.path.join(scratch, commit[:12])
    if not os.path.isdir(folder):
        subprocess.run(["git", "-C", repo, "worktree", "add", "--detach", "-f", folder, commit], check=True,
                       capture_output=True)
        created.append((repo, folder))
    return folder, f"{spec} ({commit[:7]})"


def _env(tree: str, **extra) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS="cpu", **extra)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def time_gridworld(tree: str, scratch: str, cache: str | None) -> float:
    """Process wall seconds of ``maml2 gridworld`` (the default experiment) from ``tree``."""
    out = tempfile.mkdtemp(dir=scratch)
    command = [sys.executable, "-m", "maml2_jax.cli", "gridworld", "--out", out, "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, env=_env(tree, MAML2_COMPILE_CACHE=cache or "off"), check=True, capture_output=True,
                   cwd=scratch)
    return time.perf_counter() - start


def time_meta_iteration(tree: str, scratch: str, iterations: int) -> float:
    """Median seconds per MAML-TRPO iteration that ``tree``'s own benchmark reports."""
    script = os.path.join(tree, "benchmarks", "meta_iteration.py")
    out = os.path.join(tempfile.mkdtemp(dir=scratch), "meta_iteration.json")
    command = [sys.executable, script, "--iterations", str(iterations), "--out", out]
    with open(script) as f:
        selectable = "--only" in f.read()
    if selectable:  # newer trees can skip the figures not compared here
        command += ["--only", "maml_trpo"]
    subprocess.run(command, env=_env(tree), check=True, capture_output=True, cwd=scratch)
    with open(out) as f:
        return json.load(f)["maml_trpo"]["median_seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="commit or folder of the reference tree")
    parser.add_argument("new", help="commit or folder of the tree to compare")
    parser.add_argument("--bench", nargs="+", choices=BENCHES, default=list(BENCHES))
    parser.add_argument("--alternations", type=int, default=3, help="OLD/NEW pairs per benchmark (median)")
    parser.add_argument("--iterations", type=int, default=10, help="meta-iterations per meta_iteration sample")
    parser.add_argument("--warm-cache", action="store_true",
                        help="gridworld: time runs that find their compiled programs in a cache")
    parser.add_argument("--out", default="benchmarks/results/compare.json")
    args = parser.parse_args()
    if args.alternations < 1:
        parser.error("--alternations must be at least 1")

    scratch = tempfile.mkdtemp(prefix="maml2-compare-")
    worktrees = []
    try:
        compare(args, scratch, worktrees)
    finally:  # the repository keeps no trace of the checkouts
        for repo, folder in worktrees:
            subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", folder], capture_output=True, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def compare(args, scratch: str, worktrees: list) -> None:
    """Times the benchmarks of ``args`` and writes the JSON (trees checked out under ``scratch``)."""
    trees = {}
    for role in ("old", "new"):
        trees[role] = resolve_tree(getattr(args, role), scratch, worktrees)
    caches = {role: os.path.join(scratch, f"cache-{role}") if args.warm_cache else None for role in trees}

    def sample(bench, role):
        tree = trees[role][0]
        if bench == "gridworld":
            return time_gridworld(tree, scratch, caches[role])
        return time_meta_iteration(tree, scratch, args.iterations)

    result = {"benchmark": "compare", **machine.describe(), "old": trees["old"][1], "new": trees["new"][1],
              "alternations": args.alternations, "warm_cache": args.warm_cache, "benches": {}}
    print(f"OLD = {trees['old'][1]}\nNEW = {trees['new'][1]}\non {os.cpu_count()} cores, {result['device']}")
    for bench in args.bench:
        if bench == "gridworld" and args.warm_cache:
            for role in trees:  # fills each tree's cache; not timed
                sample(bench, role)
        seconds = {"old": [], "new": []}
        for i in range(args.alternations):
            for role in (("old", "new") if i % 2 == 0 else ("new", "old")):
                seconds[role].append(sample(bench, role))
                print(f"  {bench:<15} {role}  {seconds[role][-1]:8.3f} s", flush=True)
        medians = {role: statistics.median(s) for role, s in seconds.items()}
        ratio = medians["old"] / medians["new"]
        unit = "process wall time" if bench == "gridworld" else "per meta-iteration"
        print(f"{bench}: OLD {medians['old']:.3f} s, NEW {medians['new']:.3f} s ({unit}, medians of "
              f"{args.alternations}) -> OLD/NEW = {ratio:.2f}x")
        result["benches"][bench] = {"unit": unit, "seconds": seconds, "median_seconds": medians, "ratio": ratio}
    common.save(result, args.out)


if __name__ == "__main__":
    main()
