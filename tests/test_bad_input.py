"""Bad input, command by command: one line naming the field, exit status 2, nothing written.

A table of hostile arguments to ``maml2 gridworld``, ``train`` and ``evaluate``: wrong
types, NaN and infinities, out-of-range and contradictory settings, sizes that cannot
fit in memory, unusable output paths and run directories damaged file by file. Every
case must be refused before anything is compiled or trained (the command's compute is
replaced by a tripwire); the one tiny training run is the module fixture's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import serialization

from maml2_jax import cli, deep_evaluation, deep_online, deep_training, gridworld_experiment
from maml2_jax import online as grid_online
from maml2_jax.core import train as engine_lib
from maml2_jax.learners.policy_gradient import PolicyGradientConfig
from maml2_jax.networks import PolicyConfig, make_gaussian_policy


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished two-iteration MAML² run, as small as a run gets: every file a run has."""
    out = tmp_path_factory.mktemp("trained") / "run"
    config = deep_training.TrainConfig(
        env="nav2d-isolated", algo="maml2", horizon=5, rule="sgd", pool_size=4, checkpoint_every=0,
        policy=PolicyConfig(hidden_sizes=(8,)), inner=PolicyGradientConfig(num_trajectories=2, first_order=True),
        meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, outer_iterations=2, categories=2, tasks_per_category=2,
                                 classify_every=0))
    deep_training.train(config, out=str(out))
    return out


# --- ways to damage a copy of the run (each takes the run directory) -------------------


def _write(name, data):
    def damage(run):
        (run / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return damage


def _remove(name):
    def damage(run):
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def _truncate(name):
    def damage(run):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])
    return damage


def _edit_config(**changes):
    """Sets ``changes`` in config.json; ``a__b=v`` sets the nested setting ``a.b``."""
    def damage(run):
        data = json.loads((run / "config.json").read_text())
        for key, value in changes.items():
            *outer, last = key.split("__")
            target = data
            for part in outer:
                target = target[part]
            target[last] = value
        (run / "config.json").write_text(json.dumps(data))
    return damage


def _drop_config_key(key):
    def damage(run):
        data = json.loads((run / "config.json").read_text())
        del data[key]
        (run / "config.json").write_text(json.dumps(data))
    return damage


def _edit_metrics(edit):
    def damage(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        (run / "metrics.jsonl").write_text("".join(line + "\n" for line in edit(lines)))
    return damage


def _edit_categories(edit):
    def damage(run):
        record = json.loads((run / "categories.json").read_text())
        edit(record)
        (run / "categories.json").write_text(json.dumps(record))
    return damage


def _nan_params(name):
    def damage(run):
        params = serialization.msgpack_restore((run / name).read_bytes())
        params["log_std"] = np.full_like(params["log_std"], np.nan)
        (run / name).write_bytes(serialization.msgpack_serialize(params))
    return damage


def _other_params(name):
    """Parameters of another architecture (16 hidden units instead of 8)."""
    def damage(run):
        params = make_gaussian_policy(2, 2, PolicyConfig(hidden_sizes=(16,))).init(jax.random.key(0))
        (run / name).write_bytes(serialization.to_bytes(params))
    return damage


def _sibling(edit=None, files=None):
    """A second run beside the first (``runs/b``): a copy with ``edit``, or only ``files``."""
    def damage(run):
        other = run.parent / "b"
        if files is None:
            shutil.copytree(run, other)
            if edit is not None:
                edit(other)
        else:
            other.mkdir()
            for name in files:
                shutil.copy(run / name, other / name)
    return damage


GARBAGE = bytes(range(256)) * 4


# --- the table -------------------------------------------------------------------------


def grid(*args, field):
    return pytest.param(["gridworld", "--out", "{out}", *args], field, None, id="gridworld " + " ".join(args))


def train(*args, field, damage=None, out=True, name=None, marks=()):
    head = ["train", "--out", "{out}"] if out else ["train"]
    return pytest.param([*head, *args], field, damage, id="train " + (name or " ".join(args) or "without --out"),
                        marks=marks)


def evaluate(*args, field, damage=None, runs="{run}", name=None, quiet=True, marks=()):
    """An ``evaluate`` case; ``--quiet`` unless ``quiet=False`` (a damaged run is refused before any progress)."""
    return pytest.param(["evaluate", runs, "--out", "{out}", *(["--quiet"] if quiet else []), *args], field, damage,
                        id="evaluate " + (name or " ".join(args)) + ("" if quiet else " (progress shown)"),
                        marks=marks)


def online(*args, field):
    return pytest.param(["online", "--out", "{out}", *args], field, None, id="online " + " ".join(args))


CASES = [
    # gridworld: counts and seeds
    grid("--runs", "0", field="runs"),
    grid("--runs", "-3", field="runs"),
    grid("--runs", "2.5", field="--runs"),
    grid("--runs", "many", field="--runs"),
    grid("--seed", "-1", field="seed"),
    grid("--seed", str(2**32), field="seed"),
    grid("--seed", str(2**64), field="seed"),
    grid("--seed", "1e3", field="--seed"),
    grid("--categories", "0", field="categories"),
    grid("--categories", "11", field="categories"),
    grid("--goals", "39,48", "--categories", "3", field="categories"),
    grid("--categories", "foo", field="--categories"),
    grid("--categories", "auto", "--max-categories", "1", field="max categories"),
    grid("--categories", "auto", "--max-categories", "11", field="max categories"),
    grid("--max-categories", "0", field="max categories"),
    grid("--outer-iterations", "0", field="outer iterations"),
    grid("--outer-iterations", "-1", field="outer iterations"),
    grid("--inner-iterations", "0", field="inner iterations"),
    grid("--inner-iterations", "x", field="--inner-iterations"),
    grid("--outer-update", "diagonal", field="--outer-update"),
    grid("--maml-iterations", "0", field="maml iterations"),
    grid("--classify-episodes", "0", field="classify episodes"),
    grid("--classify-episodes", "1.5", field="--classify-episodes"),
    grid("--adapt-episodes", "0", field="adapt episodes"),
    grid("--test-episodes", "0", field="test episodes"),
    grid("--test-episodes", "1", field="test_episodes"),  # reset after 1 needs 2 episodes or more
    grid("--reset-after", "0", field="reset"),
    grid("--reset-after", "10", field="reset_after"),
    grid("--reset-after", "-2", field="reset"),
    grid("--max-steps", "3000000", "--classify-episodes", "2000", field="max steps"),  # int32 choice counter
    # gridworld: β and the learner's floats
    grid("--beta", "nan", field="beta"),
    grid("--beta", "inf", field="beta"),
    grid("--beta=-inf", field="beta"),
    grid("--beta", "1e400", field="beta"),
    grid("--beta", "0", field="beta"),
    grid("--beta", "-0.5", field="beta"),
    grid("--beta", "2", field="beta"),
    grid("--beta", "half", field="--beta"),
    grid("--alpha", "0", field="alpha"),
    grid("--alpha", "1.5", field="alpha"),
    grid("--alpha", "nan", field="alpha"),
    grid("--alpha=-inf", field="alpha"),
    grid("--gamma", "1.01", field="gamma"),
    grid("--gamma", "-0.1", field="gamma"),
    grid("--gamma", "nan", field="gamma"),
    grid("--epsilon", "-0.1", field="epsilon"),
    grid("--epsilon", "2", field="epsilon"),
    grid("--epsilon", "nan", field="epsilon"),
    grid("--epsilon-decay", "0", field="epsilon decay"),
    grid("--epsilon-decay", "1.1", field="epsilon decay"),
    grid("--epsilon-decay", "nan", field="epsilon decay"),
    grid("--q-init", "inf", field="q init"),
    grid("--q-init=-inf", field="q init"),
    grid("--q-init", "nan", field="q init"),
    grid("--q-init", "1e39", field="q init"),  # finite as a double, infinite as a float32 Q-table
    grid("--q-init", "high", field="--q-init"),
    # gridworld: the layout
    grid("--rows", "0", field="rows"),
    grid("--rows", "-4", field="rows"),
    grid("--rows", "1.5", field="--rows"),
    grid("--cols", "0", field="cols"),
    grid("--rows", "3", field="wall cell"),  # the published walls fall off a 3x10 grid
    grid("--rows", "100000", "--cols", "100000", "--walls", "none", "--goals", "5", field="cells"),
    grid("--rows", "40000", "--cols", "40000", "--walls", "none", "--goals", "5,7", field="cells"),
    grid("--runs", "1000000000", field="--runs"),  # Q-tables beyond memory, refused before compiling
    grid("--walls", "100", field="wall cell"),
    grid("--walls", "-1", field="wall cell"),
    grid("--walls", "0", field="start cell"),
    grid("--walls", "2,x", field="--walls"),
    grid("--start", "100", field="start cell"),
    grid("--start", "-1", field="start cell"),
    grid("--start", "2", field="start cell"),  # a wall
    grid("--start", "39", field="goal cell 39"),  # a goal
    grid("--goals", "39,39", field="goal cell 39"),
    grid("--goals", "39,48,39", field="goal cell 39"),
    grid("--goals", "", field="goal"),
    grid("--goals", "none", field="goal"),
    grid("--goals", "0", field="goal cell 0"),
    grid("--goals", "100", field="goal cell 100"),
    grid("--goals", "-5", field="goal cell -5"),
    grid("--goals", "2", field="goal cell 2"),
    grid("--goals", "39,x", field="--goals"),
    grid("--goals", "39.5", field="--goals"),
    grid("--walls", "1,10", "--goals", "99", field="goal cell 99"),  # walled off from the start
    grid("--max-steps", "0", field="max steps"),
    grid("--max-steps", "-1", field="max steps"),
    grid("--max-steps", str(2**31), field="max steps"),
    # gridworld: reporting groups
    grid("--groups", "0;0", field="group"),
    grid("--groups", "0,0", field="group"),
    grid("--groups", "8-2", field="group"),
    grid("--groups", "0,8-2", field="reversed range"),
    grid("--groups", "", field="group"),
    grid("--groups", ";", field="group"),
    grid("--groups", "0;", field="group"),
    grid("--groups", "10", field="group"),
    grid("--groups", "0-10", field="group"),
    grid("--groups", "-1", field="group"),
    grid("--groups", "0-", field="group"),
    grid("--groups", "1-2-3", field="group"),
    grid("--groups", "0,1;1-3", field="group"),
    # gridworld: the output
    grid("--out", "", field="--out"),
    grid("--out", "{file}", field="--out"),
    grid("--out", "{file}/sub", field="--out"),
    # train: choices and strings
    train("--env", "mars", field="--env"),
    train("--env", "", field="--env"),
    train("--backend", "spring", field="backend"),  # nav2d has no physics backend
    train("--algo", "reptile", field="--algo"),
    train("--rule", "lbfgs", field="--rule"),
    train("--weight-init", "zeros", field="--weight-init"),
    train("--outer-update", "diagonal", field="--outer-update"),
    train("--category-init", "random", field="--category-init"),
    train("--algo", "maml2", "--feature", "grad", field="--feature"),
    # train: counts, seeds and sizes
    train("--horizon", "-1", field="horizon"),
    train("--horizon", "1.5", field="--horizon"),
    train("--seed", "-1", field="seed"),
    train("--seed", str(2**31), field="seed"),
    train("--seed", str(2**64), field="seed"),
    train("--seed", "2146435070", "--seeds", "5", field="seed"),
    train("--seed", "x", field="--seed"),
    train("--seeds", "0", field="seeds"),
    train("--seeds", "-2", field="seeds"),
    train("--checkpoint-every", "-1", field="checkpoint every"),
    train("--meta-batch-size", "0", field="meta-batch size"),
    train("--meta-batch-size", "x", field="--meta-batch-size"),
    train("--num-trajectories", "0", field="trajectories"),
    train("--inner-steps", "0", field="inner steps"),
    train("--cg-iterations", "0", field="cg iterations"),
    train("--devices", "-1", field="devices"),
    train("--devices", "999", field="devices"),
    train("--categories", "0", field="categories"),
    train("--algo", "maml2", "--categories", "9", "--pool-size", "4", field="categories"),
    train("--algo", "maml2", "--categories", "foo", field="--categories"),
    train("--algo", "maml2", "--categories", "auto", "--max-categories", "1", field="max categories"),
    train("--algo", "maml2", "--categories", "auto", "--max-categories", "9", "--pool-size", "4",
          field="categories"),
    train("--algo", "maml", "--categories", "auto", field="categories"),
    train("--outer-iterations", "0", field="outer iterations"),
    train("--iterations", "-1", field="outer iterations"),
    train("--inner-iterations", "0", field="inner iterations"),
    train("--tasks-per-category", "0", field="tasks per category"),
    train("--classify-every", "-1", field="classify every"),
    train("--pool-size", "0", field="pool size"),
    train("--algo", "maml2", "--classify-trajectories", "-1", field="classify trajectories"),
    train("--classify-trajectories", "50", field="classify trajectories"),  # MAML does not classify
    train("--classify-trajectories", "x", field="--classify-trajectories"),
    train("--algo", "maml2", "--category-batch", "sized", field="--category-batch"),
    train("--category-batch", "proportional", field="category batch"),  # MAML has one category
    # train: floats
    train("--inner-lr", "0", field="inner learning rate"),
    train("--inner-lr", "-0.1", field="inner learning rate"),
    train("--inner-lr", "nan", field="inner learning rate"),
    train("--inner-lr", "inf", field="inner learning rate"),
    train("--inner-lr=-inf", field="inner learning rate"),
    train("--inner-lr", "1e400", field="inner learning rate"),
    train("--inner-lr", "fast", field="--inner-lr"),
    train("--meta-lr", "0", field="meta learning rate"),
    train("--meta-lr", "nan", field="meta learning rate"),
    train("--meta-lr", "inf", field="meta learning rate"),
    train("--meta-lr", "-1", field="meta learning rate"),
    train("--max-kl", "0", field="max kl"),
    train("--max-kl", "nan", field="max kl"),
    train("--max-kl", "inf", field="max kl"),
    train("--max-kl", "-0.01", field="max kl"),
    train("--curvature-fraction", "0", field="curvature fraction"),
    train("--curvature-fraction", "1.5", field="curvature fraction"),
    train("--curvature-fraction", "nan", field="curvature fraction"),
    # train: sizes that cannot fit in memory, refused before compiling
    train("--horizon", "1000000000", field="--horizon"),
    train("--num-trajectories", "1000000000", field="--num-trajectories"),
    train("--meta-batch-size", "1000000000", field="--meta-batch-size"),
    train("--algo", "maml2", "--pool-size", "1000000000", field="--pool-size"),
    train("--algo", "maml2", "--classify-trajectories", "1000000000", field="--classify-trajectories"),
    # train: the output
    train(field="--out", out=False),
    train("--out", "", field="--out"),
    train("--out", "{file}", field="--out"),
    train("--out", "{file}/sub", field="--out"),
    # train --resume of a damaged run: its config.json is read first
    train("--resume", "{run}", field="config.json", damage=_write("config.json", GARBAGE), out=False,
          name="--resume config.json garbage"),
    train("--resume", "{run}", field="config.json", damage=_truncate("config.json"), out=False,
          name="--resume config.json truncated"),
    train("--resume", "{run}", field="config.json", damage=_write("config.json", "[]"), out=False,
          name="--resume config.json a list"),
    train("--resume", "{run}", field="bogus", damage=_edit_config(bogus=1), out=False,
          name="--resume config.json unknown setting"),
    train("--resume", "{run}", field="inner learning rate", damage=_edit_config(inner__inner_lr=-1), out=False,
          name="--resume config.json negative inner lr"),
    # evaluate: its own flags
    evaluate("--tasks", "0", field="tasks"),
    evaluate("--tasks", "-1", field="tasks"),
    evaluate("--tasks", "x", field="--tasks"),
    evaluate("--tasks", "1.5", field="--tasks"),
    evaluate("--tasks", "1000000000", field="--tasks"),  # cannot fit in memory
    evaluate("--steps", "0", field="steps"),
    evaluate("--steps", "x", field="--steps"),
    evaluate("--seed", "-1", field="seed"),
    evaluate("--seed", str(2**64), field="seed"),
    evaluate("--seed", "x", field="--seed"),
    evaluate("--num-trajectories", "0", field="trajectories per adaptation step"),
    evaluate("--num-trajectories", "x", field="--num-trajectories"),
    evaluate("--num-trajectories", "1000000000", field="--num-trajectories"),  # cannot fit in memory
    evaluate("--devices", "-1", field="devices"),
    evaluate("--devices", "999", field="asked for 999 devices"),
    evaluate("--devices", "x", field="--devices"),
    # evaluate: where the runs are and where the outputs go
    evaluate(field="missing", runs="{tmp}/missing", name="missing runs directory"),
    evaluate(field="file", runs="{file}", name="runs path is a file"),
    evaluate(field="no training runs", runs="{tmp}/empty", name="no runs",
             damage=lambda run: os.makedirs(run.parent.parent / "empty")),
    evaluate(field="run directory", runs="", name="empty runs path"),
    evaluate("--out", "", field="--out"),
    evaluate("--out", "{file}", field="--out"),
    evaluate("--out", "{file}/sub", field="--out"),
    evaluate("--out", "{run}", field="--out", name="--out is the run"),
    evaluate("--out", "{run}/eval", field="--out", name="--out inside the run"),
    evaluate("--out", "{tmp}/runs/a/checkpoint", field="--out", runs="{tmp}/runs", name="--out in a run's checkpoint"),
    # evaluate: config.json damaged
    evaluate(field="config.json", damage=_remove("config.json"), name="config.json missing"),
    evaluate(field="config.json", damage=_write("config.json", b""), name="config.json empty"),
    evaluate(field="config.json", damage=_truncate("config.json"), name="config.json truncated"),
    evaluate(field="config.json", damage=_write("config.json", GARBAGE), name="config.json garbage"),
    evaluate(field="config.json", damage=_write("config.json", "[]"), name="config.json a list"),
    evaluate(field="config.json", damage=_write("config.json", "null"), name="config.json null"),
    evaluate(field="config.json", damage=_write("config.json", "{}"), name="config.json empty object"),
    evaluate(field="bogus", damage=_edit_config(bogus=1), name="config.json unknown setting"),
    evaluate(field="config.json", damage=_edit_config(meta=3), name="config.json meta not an object"),
    evaluate(field="horizon", damage=_edit_config(horizon="long"), name="config.json horizon a string"),
    evaluate(field="env", damage=_edit_config(env="mars"), name="config.json unknown env"),
    evaluate(field="config.json", damage=_write("config.json", '{"env": "nav2d", "algo": "maml", '
                                                               '"inner": {"inner_lr": NaN}}'),
             name="config.json NaN token"),
    evaluate(field="inner learning rate", damage=_edit_config(inner__inner_lr=0), name="config.json zero inner lr"),
    evaluate(field="seeds", damage=_edit_config(seeds=3), name="config.json several seeds"),
    evaluate(field="params.msgpack", damage=_edit_config(policy__hidden_sizes=[16]), name="config.json other policy"),
    evaluate(field="category_params.msgpack", damage=_edit_config(meta__categories=3),
             name="config.json other categories"),
    evaluate(field="categories.json", damage=_edit_config(pool_size=5), name="config.json other pool"),
    evaluate(field="metrics.jsonl", damage=_edit_config(meta__outer_iterations=3), name="config.json more iterations"),
    # evaluate: params.msgpack and category_params.msgpack damaged
    evaluate(field="params.msgpack", damage=_remove("params.msgpack"), name="params.msgpack missing"),
    evaluate(field="params.msgpack", damage=_write("params.msgpack", b""), name="params.msgpack empty"),
    evaluate(field="params.msgpack", damage=_truncate("params.msgpack"), name="params.msgpack truncated"),
    evaluate(field="params.msgpack", damage=_write("params.msgpack", GARBAGE), name="params.msgpack garbage"),
    evaluate(field="params.msgpack", damage=_write("params.msgpack", GARBAGE), name="params.msgpack garbage",
             quiet=False),
    evaluate(field="params.msgpack", damage=_write("params.msgpack", serialization.msgpack_serialize({"a": 1})),
             name="params.msgpack other structure"),
    evaluate(field="params.msgpack", damage=_other_params("params.msgpack"), name="params.msgpack other shapes"),
    evaluate(field="params.msgpack", damage=_nan_params("params.msgpack"), name="params.msgpack NaN"),
    evaluate(field="params.msgpack", damage=_remove("params.msgpack"), runs="{tmp}/runs",
             name="params.msgpack missing in a directory of runs"),
    evaluate(field="category_params.msgpack", damage=_remove("category_params.msgpack"),
             name="category_params.msgpack missing"),
    evaluate(field="category_params.msgpack", damage=_truncate("category_params.msgpack"),
             name="category_params.msgpack truncated"),
    evaluate(field="category_params.msgpack", damage=_write("category_params.msgpack", GARBAGE),
             name="category_params.msgpack garbage"),
    evaluate(field="category_params.msgpack", damage=_nan_params("category_params.msgpack"),
             name="category_params.msgpack NaN"),
    # evaluate: categories.json damaged
    evaluate(field="categories.json", damage=_remove("categories.json"), name="categories.json missing"),
    evaluate(field="categories.json", damage=_truncate("categories.json"), name="categories.json truncated"),
    evaluate(field="categories.json", damage=_write("categories.json", GARBAGE), name="categories.json garbage"),
    evaluate(field="categories.json", damage=_write("categories.json", "{}"), name="categories.json empty object"),
    evaluate(field="categories.json", damage=_edit_categories(lambda r: r.update(classifications=[])),
             name="categories.json no classification"),
    evaluate(field="categories.json",
             damage=_edit_categories(lambda r: r["classifications"][-1].update(labels=[0, 1, 2, 7])),
             name="categories.json labels out of range"),
    evaluate(field="categories.json", damage=_edit_categories(lambda r: r.update(pool_categories=[0])),
             name="categories.json short truth"),
    # evaluate: metrics.jsonl damaged
    evaluate(field="metrics.jsonl", damage=_remove("metrics.jsonl"), name="metrics.jsonl missing"),
    evaluate(field="metrics.jsonl", damage=_write("metrics.jsonl", b""), name="metrics.jsonl empty"),
    evaluate(field="metrics.jsonl", damage=_truncate("metrics.jsonl"), name="metrics.jsonl truncated"),
    evaluate(field="metrics.jsonl", damage=_write("metrics.jsonl", GARBAGE), name="metrics.jsonl garbage"),
    evaluate(field="metrics.jsonl", damage=_edit_metrics(lambda lines: lines[:1]), name="metrics.jsonl one row short"),
    evaluate(field="metrics.jsonl", damage=_edit_metrics(lambda lines: lines[:1] * 2),
             name="metrics.jsonl repeated row"),
    evaluate(field="metrics.jsonl", damage=_edit_metrics(lambda lines: ["[1]", *lines[1:]]),
             name="metrics.jsonl row not an object"),
    evaluate(field="metrics.jsonl",
             damage=_edit_metrics(lambda lines: [line.replace("{", '{"loss": NaN, ', 1) for line in lines]),
             name="metrics.jsonl NaN token"),
    # evaluate: directories of runs that do not belong together
    evaluate(field="config.json", runs="{tmp}/runs", damage=_sibling(files=("params.msgpack", "metrics.jsonl")),
             name="a run without config.json beside a run"),
    evaluate(field="different task families", runs="{tmp}/runs", name="runs of two families",
             damage=_sibling(lambda run: [_edit_config(env="nav2d")(run), _edit_categories(
                 lambda r: r.update(pool_categories=[0] * len(r["pool"])))(run)])),
    evaluate(field="horizon", runs="{tmp}/runs", damage=_sibling(_edit_config(horizon=7)),
             name="runs of two horizons"),
    evaluate(field="metrics.jsonl", runs="{tmp}/runs", damage=_sibling(_remove("metrics.jsonl")),
             name="a damaged run beside a good one"),
    # the commands' own flags: launching, config files, resuming, replacing an earlier run
    train("--distributed", field="--distributed"),
    train("--config", "{tmp}/missing.yaml", field="--config"),
    train("--config", "{file}", field="--config", name="--config not JSON"),
    grid("--config", "{file}", field="--config"),
    train("--resume", "{run}", "--inner-lr", "0.5", out=False, field="--inner-lr", name="--resume with a setting"),
    train("--resume", "{run}", "--outer-iterations", "1", out=False, field="--outer-iterations",
          name="--resume shortened below its checkpoint"),
    train("--resume", "{run}", "--outer-iterations", "0", out=False, field="--outer-iterations",
          name="--resume --outer-iterations 0"),
    train("--out", "{run}", out=False, field="--overwrite", name="--out holding an earlier run"),
    evaluate("--out", "{tmp}/runs", runs="{run}", field="--out", name="--out holding the runs"),
    train("--init-params", "{tmp}/missing", field="init params", name="--init-params missing"),
    train("--init-params", "{file}", field="init params", name="--init-params not parameters"),
    train("--init-params", "{tmp}/runs", field="init params", name="--init-params a directory of runs"),
    train("--init-params", "{run}", field="init params", name="--init-params of another policy"),
    # online: a deep family's classifying batch
    online("--classify-trajectories", "16", field="--classify-trajectories"),  # the grid world has none
    online("--env", "nav2d-isolated", "--classify-trajectories", "-1", field="classify trajectories"),
    online("--env", "nav2d-isolated", "--classify-trajectories", "x", field="--classify-trajectories"),
    # online, deep: sizes that cannot fit in memory, refused before compiling
    online("--env", "nav2d-isolated", "--horizon", "1000000000", field="--horizon"),
    online("--env", "nav2d-isolated", "--trials", "1000000000", field="--trials"),
    online("--env", "nav2d-isolated", "--classify-trajectories", "1000000000", field="--classify-trajectories"),
    online("--env", "nav2d-isolated", "--steps", "1000000000", field="--steps"),
    # online, deep: the devices the trials are split over
    online("--devices", "2", field="--devices"),  # the grid world's trials run in processes (--workers)
    online("--env", "nav2d-isolated", "--devices", "-1", field="devices"),
    online("--env", "nav2d-isolated", "--devices", "999", field="asked for 999 devices"),
    online("--env", "nav2d-isolated", "--devices", "x", field="--devices"),
    # the reset rule, one vocabulary in every command that resets
    evaluate("--reset-rule", "towards", field="--reset-rule"),
    grid("--reset-rule", "towards", field="--reset-rule"),
    online("--reset-rule", "towards", field="--reset-rule"),
    online("--env", "nav2d-isolated", "--reset-rule", "towards", field="--reset-rule"),
]


def _snapshot(root):
    """Every path below ``root`` with its content (files) or None (directories)."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            tree[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                tree[os.path.relpath(path, root)] = f.read()
    return tree


def _tripwire(*_, **__):
    raise AssertionError("bad input reached the computation")


@pytest.mark.parametrize("argv,field,damage", CASES)
def test_bad_input_is_one_line_naming_it_and_writes_nothing(argv, field, damage, trained_run, tmp_path, capsys,
                                                            monkeypatch):
    for module, name in ((gridworld_experiment, "run"), (deep_training.Parts, "init_seeds"), (engine_lib, "run"),
                         (engine_lib, "compile_steps"), (deep_evaluation, "_curve_function"), (deep_online, "run"),
                         (deep_online, "method_parts"), (grid_online, "run")):
        monkeypatch.setattr(module, name, _tripwire, raising=False)
    run = tmp_path / "runs" / "a"
    if any("{run}" in a or "{tmp}/runs" in a for a in argv):
        shutil.copytree(trained_run, run)
    (tmp_path / "file").write_text("a regular file")
    if damage is not None:
        damage(run)
    cwd = tmp_path / "cwd"  # what an empty path would write, it would write here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = [a.format(out=tmp_path / "out", run=run, tmp=tmp_path, file=tmp_path / "file") for a in argv]
    before = _snapshot(tmp_path)
    capsys.readouterr()

    status = cli.main(argv)

    captured = capsys.readouterr()
    err = captured.err
    assert status == 2, err
    assert "Traceback" not in err + captured.out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("maml2: error: "), err
    assert field.lower() in lines[0].lower(), lines[0]
    assert _snapshot(tmp_path) == before  # nothing created, removed or changed


def test_the_undamaged_run_loads(trained_run):
    """The control: the fixture's run passes every check the damaged copies fail."""
    config, _, theta, category_params = deep_training.load_run(str(trained_run))
    assert config.algo == "maml2" and category_params is not None and theta is not None
    assert deep_evaluation.find_runs(str(trained_run.parent)) == [str(trained_run)]


def test_the_table_is_large():
    assert len(CASES) >= 100
    commands = {case.values[0][0] for case in CASES}
    assert commands == {"gridworld", "train", "evaluate", "online"}

