"""The ``maml2`` command line.

``maml2 gridworld --out DIR`` runs the published tabular experiment (DESIGN §1.1):
classification, MAML² training, re-adaptation tests, the no-reset ablation, MAML and
learning from scratch on every run; it prints a table and writes
``DIR/summary.json`` and ``DIR/adaptation.png``.

``maml2 train --env nav2d --algo {maml,maml2} --out DIR`` meta-trains a neural
policy (deep track: MAML-TRPO, or deep MAML² with categories) and writes
``DIR/metrics.jsonl`` and the parameters. ``maml2 evaluate DIR --out EVAL`` adapts the
runs found in DIR (and learning from scratch) on fresh tasks and writes
``EVAL/summary.json`` and ``EVAL/adaptation.png``.

Bad input stops with one line ``maml2: error: ...`` (exit status 2) before anything
is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from maml2_jax.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise ConfigError(message)


def _ints(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _groups(text: str) -> tuple[tuple[int, ...], ...]:
    groups = []
    for part in text.split(";"):
        tasks = []
        for item in part.split(","):
            item = item.strip()
            try:
                if "-" in item:
                    lo, hi = (int(x) for x in item.split("-"))
                    tasks.extend(range(lo, hi + 1))
                else:
                    tasks.append(int(item))
            except ValueError:
                raise argparse.ArgumentTypeError(f"bad group list {text!r}; expected e.g. '0,1;2-8;9'") from None
        groups.append(tuple(tasks))
    return tuple(groups)


def _add_gridworld(sub) -> None:
    from maml2_jax.envs.gridworld import PUBLISHED_GOALS, PUBLISHED_WALLS
    from maml2_jax.gridworld_experiment import GridworldConfig
    from maml2_jax.learners.sarsa import SarsaConfig

    d, s = GridworldConfig(), SarsaConfig()
    p = sub.add_parser("gridworld", help="the published tabular MAML² experiment")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--runs", type=int, default=d.runs, help="independent runs (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="master seed (default %(default)s)")
    add_meta_flags(p, d.meta_config(), skip=("tasks_per_category", "category_init", "classify_every",
                                             "classify_from", "stop_tolerance"))
    p.add_argument("--maml-iterations", type=int, default=d.maml_iterations,
                   help="meta-iterations of the MAML baseline (default %(default)s)")
    p.add_argument("--classify-episodes", type=int, default=d.classify_episodes,
                   help="episodes learning each task from scratch for its feature (default %(default)s)")
    p.add_argument("--adapt-episodes", type=int, default=d.adapt_episodes,
                   help="episodes of each Adapt inside meta-training (default %(default)s)")
    p.add_argument("--test-episodes", type=int, default=d.test_episodes,
                   help="adaptation episodes per test task (default %(default)s)")
    p.add_argument("--reset-after", type=int, default=d.reset_after,
                   help="episodes from θ before the update-tendency reset (default %(default)s)")
    p.add_argument("--beta", type=float, default=d.beta, help="β of the CatMeta step β/|C| (default %(default)s)")
    p.add_argument("--rows", type=int, default=10, help="grid rows (default %(default)s)")
    p.add_argument("--cols", type=int, default=10, help="grid columns (default %(default)s)")
    p.add_argument("--walls", type=_ints, default=PUBLISHED_WALLS,
                   help="comma-separated wall cells, or 'none' (default: the published maze)")
    p.add_argument("--start", type=int, default=0, help="start cell (default %(default)s)")
    p.add_argument("--goals", type=_ints, default=PUBLISHED_GOALS,
                   help="comma-separated goal cells, one task each (default: the published ten)")
    p.add_argument("--max-steps", type=int, default=1000, help="episode cut (default %(default)s)")
    p.add_argument("--groups", type=_groups, default=None,
                   help="reporting groups of task ids, e.g. '0,1;2-8;9' (default: the published groups "
                        "for the published goals, else one group per task)")
    p.add_argument("--alpha", type=float, default=s.alpha, help="SARSA learning rate (default %(default)s)")
    p.add_argument("--gamma", type=float, default=s.gamma, help="discount (default %(default)s)")
    p.add_argument("--epsilon", type=float, default=s.epsilon, help="initial ε of every adaptation (default %(default)s)")
    p.add_argument("--epsilon-decay", type=float, default=s.epsilon_decay,
                   help="ε factor per action choice (default %(default)s)")
    p.add_argument("--q-init", type=float, default=s.q_init, help="initial Q value (default %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out after its last completed stage (same flags)")
    p.add_argument("--quiet", action="store_true", help="print only the final table")


def _gridworld_config(args):
    from maml2_jax.envs.gridworld import GridWorld
    from maml2_jax.gridworld_experiment import GridworldConfig
    from maml2_jax.learners.sarsa import SarsaConfig

    world = GridWorld(rows=args.rows, cols=args.cols, walls=args.walls, start=args.start, goals=args.goals,
                      max_steps=args.max_steps)
    sarsa = SarsaConfig(alpha=args.alpha, gamma=args.gamma, epsilon=args.epsilon,
                        epsilon_decay=args.epsilon_decay, q_init=args.q_init)
    return GridworldConfig(
        runs=args.runs, seed=args.seed, categories=args.categories, outer_iterations=args.outer_iterations,
        inner_iterations=args.inner_iterations, maml_iterations=args.maml_iterations,
        outer_update=args.outer_update, classify_episodes=args.classify_episodes,
        adapt_episodes=args.adapt_episodes, test_episodes=args.test_episodes, reset_after=args.reset_after,
        beta=args.beta, world=world, sarsa=sarsa, groups=args.groups,
    )


def check_writable(out: str) -> None:
    """Raises ConfigError unless ``out`` is, or can be created as, a writable directory."""
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"output path {out} exists and is not a directory")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"output directory {out} is not writable: {probe} is not a directory")
    try:  # a real write, not os.access: read-only mounts and root both answer truthfully
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise ConfigError(f"output directory {out} is not writable ({error.strerror})") from None


def run_gridworld(args) -> None:
    """Impure: runs the experiment, prints progress and the table, writes the outputs."""
    from maml2_jax import evaluation, gridworld_experiment, plotting
    from maml2_jax.io import files

    config = _gridworld_config(args)
    check_writable(args.out)
    stages = {"classify": "learning every task from scratch for its feature",
              "k-means": "clustering tasks into categories", "train": "meta-training MAML² and MAML",
              "test": "adapting to every task: MAML², no reset, MAML, LFS"}
    started = time.perf_counter()

    def progress(stage):
        if not args.quiet:
            print(f"[{time.perf_counter() - started:6.1f}s] {stage}: {stages.get(stage, '')}", file=sys.stderr,
                  flush=True)

    if not args.quiet:
        print(f"grid world: {config.runs} runs x {config.world.num_tasks} tasks, N={config.categories}, "
              f"K_out={config.outer_iterations}, K_in={config.inner_iterations}, "
              f"MAML {config.maml_iterations} it., {config.outer_update} outer update", file=sys.stderr)
    import dataclasses
    import json
    import shutil

    from maml2_jax.io.checkpoint import Checkpoints

    os.makedirs(args.out, exist_ok=True)
    config_path = os.path.join(args.out, "config.json")
    checkpoint_dir = os.path.join(args.out, "checkpoint")
    saved = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists, as the file has them
    if args.resume:
        try:
            with open(config_path) as f:
                previous = json.load(f)
        except (OSError, json.JSONDecodeError):
            raise ConfigError(f"nothing to resume in {args.out} (no readable config.json)") from None
        if previous != saved:
            raise ConfigError(f"the run in {args.out} had other settings; resume it with the same flags")
    else:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # a new run never reuses an old run's stages
        files.write_json(config_path, saved)
    checkpoints = Checkpoints(checkpoint_dir, keep=len(gridworld_experiment.STAGES) - 1)
    try:
        result = gridworld_experiment.run(config, progress, checkpoints=checkpoints)
    finally:
        checkpoints.close()
    summary = evaluation.summarize(result)
    summary_path = os.path.join(args.out, "summary.json")
    figure_path = os.path.join(args.out, "adaptation.png")
    files.write_atomically(figure_path, lambda tmp: plotting.adaptation_figure(summary, tmp))
    files.write_json(summary_path, summary)
    print(evaluation.table(summary))
    print(f"{result.seconds:.1f} s; wrote {summary_path} and {figure_path}")


# Earlier names of the shared schedule's flags, still accepted.
_META_ALIASES = {"outer_iterations": ("--iterations",), "inner_iterations": ("--category-steps",),
                 "classify_every": ("--recluster-every",)}


def add_meta_flags(group, defaults, skip=()) -> None:
    """Adds a flag per field of :class:`~maml2_jax.core.config.MetaConfig` (help from the field)."""
    import dataclasses

    from maml2_jax.core.config import MetaConfig

    for field in dataclasses.fields(MetaConfig):
        if field.name in skip:
            continue
        default = getattr(defaults, field.name)
        kwargs = {"type": type(default), "default": default, "dest": field.name,
                  "help": f"{field.metadata['help']} (default %(default)s)"}
        if field.metadata.get("choices"):
            kwargs["choices"] = field.metadata["choices"]
        group.add_argument("--" + field.name.replace("_", "-"), *_META_ALIASES.get(field.name, ()), **kwargs)


def meta_from_args(args, defaults):
    """The :class:`~maml2_jax.core.config.MetaConfig` of the parsed flags (others from ``defaults``)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(defaults)}
    return dataclasses.replace(defaults, **{n: getattr(args, n) for n in names if hasattr(args, n)})


def _add_train(sub) -> None:
    from maml2_jax.deep_training import ALGORITHMS, RULES, TrainConfig
    from maml2_jax.envs import family_names
    from maml2_jax.learners.policy_gradient import FEATURES

    d = TrainConfig()
    families = family_names()
    p = sub.add_parser("train", help="meta-train a neural policy (deep track: MAML or MAML², one engine)")
    p.add_argument("--out", help="output directory: config.json, metrics.jsonl, params.msgpack, checkpoint/")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest checkpoint "
                                                   "(its saved config is used; other flags are ignored)")
    p.add_argument("--env", choices=families, default=d.env, metavar="ENV",
                   help=f"task family: {', '.join(families)} (default %(default)s)")
    p.add_argument("--horizon", type=int, default=d.horizon,
                   help="steps per episode (default %(default)s: the family's, 100 for nav2d, 200 for brax)")
    p.add_argument("--backend", default=d.backend,
                   help="brax physics backend: spring, positional, generalized, mjx (default: spring)")
    p.add_argument("--algo", choices=ALGORITHMS, default=d.algo,
                   help="maml: one category, fresh tasks each step; maml2: categories of a pool (default %(default)s)")
    p.add_argument("--rule", choices=RULES, default=d.rule,
                   help="meta-update: trpo (MAML-TRPO) or a meta-gradient through optax adam / sgd "
                        "(default %(default)s)")
    p.add_argument("--meta-lr", type=float, default=d.meta_lr, help="step size of --rule adam/sgd (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed (default %(default)s)")
    p.add_argument("--seeds", type=int, default=d.seeds,
                   help="seeds seed, seed+1, ... trained in one compiled program; outputs in OUT/seed_<s> "
                        "(default %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="outer iterations between checkpoints of the whole run state (0: at the end only; "
                        "default %(default)s)")
    p.add_argument("--meta-batch-size", type=int, default=d.meta_batch_size,
                   help="MAML: tasks per meta-update (default %(default)s)")
    p.add_argument("--num-trajectories", type=int, default=d.inner.num_trajectories,
                   help="trajectories per task per inner step (default %(default)s)")
    p.add_argument("--inner-steps", type=int, default=d.inner.inner_steps, help="K, inner steps (default %(default)s)")
    p.add_argument("--inner-lr", type=float, default=d.inner.inner_lr, help="inner step size (default %(default)s)")
    p.add_argument("--first-order", action="store_true", help="first-order MAML (stop gradients through the inner step)")
    p.add_argument("--weight-init", choices=("lecun_normal", "xavier_uniform"), default=d.policy.weight_init,
                   help="initialiser of the policy's weights (default %(default)s)")
    p.add_argument("--max-kl", type=float, default=d.trpo.max_kl, help="TRPO trust region (default %(default)s)")
    p.add_argument("--cg-iterations", type=int, default=d.trpo.cg_iterations, help="CG iterations (default %(default)s)")
    p.add_argument("--curvature-fraction", type=float, default=d.curvature_fraction,
                   help="share of tasks for TRPO's curvature products (default %(default)s: all)")
    p.add_argument("--devices", type=int, default=d.devices,
                   help="devices to split the tasks over (default %(default)s: all; on a CPU one per core)")
    g = p.add_argument_group("schedule (MAML²: --algo maml2; MAML uses --outer-iterations only)")
    add_meta_flags(g, d.meta, skip=("stop_tolerance", "classify_from"))
    g.add_argument("--pool-size", type=int, default=d.pool_size,
                   help="training tasks drawn once and classified (default %(default)s)")
    g.add_argument("--feature", choices=FEATURES, default=d.feature,
                   help="classification feature: the update θ_T − θ or the adapted θ_T (default %(default)s)")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: call jax.distributed.initialize() first (coordinator from the cluster "
                        "environment or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) and split "
                        "the tasks over the devices of every host; only process 0 writes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_config(args):
    from maml2_jax import deep_training
    from maml2_jax.learners.policy_gradient import PolicyGradientConfig
    from maml2_jax.networks import PolicyConfig
    from maml2_jax.trpo import TRPOConfig

    d = deep_training.TrainConfig()
    return deep_training.TrainConfig(
        env=args.env, horizon=args.horizon, backend=args.backend, algo=args.algo, rule=args.rule,
        meta_lr=args.meta_lr, seed=args.seed, seeds=args.seeds, checkpoint_every=args.checkpoint_every,
        meta_batch_size=args.meta_batch_size, pool_size=args.pool_size, feature=args.feature,
        curvature_fraction=args.curvature_fraction, devices=args.devices,
        inner=PolicyGradientConfig(num_trajectories=args.num_trajectories, inner_steps=args.inner_steps,
                                   inner_lr=args.inner_lr, first_order=args.first_order),
        trpo=TRPOConfig(max_kl=args.max_kl, cg_iterations=args.cg_iterations),
        policy=PolicyConfig(weight_init=args.weight_init),
        meta=meta_from_args(args, d.meta),
    )


def run_train(args) -> None:
    """Impure: trains (or resumes), shows progress, writes the outputs."""
    import jax
    from tqdm import tqdm

    from maml2_jax import deep_training

    if args.resume:
        out = args.resume
        config = deep_training.load_config(out)
    else:
        if not args.out:
            raise ConfigError("the following arguments are required: --out (or --resume DIR)")
        out = args.out
        config = _train_config(args)
    if args.distributed:
        jax.distributed.initialize()  # before any computation; jax.devices() then spans every host
    deep_training.mesh_for(config)  # refuse a meta-batch that does not split before writing anything
    writer = not args.distributed or jax.process_index() == 0
    if writer and not args.resume:
        check_writable(out)
    bar = tqdm(total=config.iterations, disable=args.quiet or not writer, desc=f"{config.algo} on {config.env}")

    def progress(row):
        if bar.n == 0 and row["iteration"] > 0:
            bar.update(row["iteration"])  # a resumed run starts where it stopped
        shown = {k: f"{row[k]:.1f}" for k in ("pre_return", "post_return") if row.get(k) is not None}
        bar.set_postfix(**shown)
        bar.update()

    _, histories = deep_training.train(config, out if writer else None, progress, resume=bool(args.resume))
    bar.close()
    last = histories[0][-1] if histories[0] else None
    if last is not None and last.get("pre_return") is not None:
        print(f"iteration {last['iteration']}: return {last['pre_return']:.1f} before, "
              f"{last['post_return']:.1f} after adaptation (seed {config.seed})")
    print(f"wrote {out}")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="adapt trained runs, MAML² without reset and learning from scratch "
                                        "on fresh tasks; per category")
    p.add_argument("runs", help="a training run directory, or a directory of runs (each one seed)")
    p.add_argument("--out", required=True, help="output directory: summary.json, adaptation.png")
    p.add_argument("--tasks", type=int, default=40, help="test tasks (default %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="adaptation steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test tasks and rollouts (default %(default)s)")


def run_evaluate(args) -> None:
    """Impure: evaluates, prints a table, writes the outputs."""
    from maml2_jax import deep_evaluation, plotting
    from maml2_jax.io import files

    runs = deep_evaluation.find_runs(args.runs)
    check_writable(args.out)
    summary = deep_evaluation.evaluate(runs, args.tasks, args.steps, args.seed)
    print(deep_evaluation.table(summary))
    os.makedirs(args.out, exist_ok=True)
    files.write_atomically(os.path.join(args.out, "adaptation.png"), lambda tmp: plotting.return_figure(summary, tmp))
    files.write_json(os.path.join(args.out, "summary.json"), summary)
    print(f"wrote {args.out}/summary.json and adaptation.png")


def main(argv=None) -> int:
    from maml2_jax import sharding

    sharding.use_host_cores()  # before JAX starts; no effect on GPU/TPU
    parser = _Parser(prog="maml2", description="MAML² meta-reinforcement learning in JAX")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_gridworld(sub)
    _add_train(sub)
    _add_evaluate(sub)
    try:
        args = parser.parse_args(argv)
        if args.command == "gridworld":
            run_gridworld(args)
        elif args.command == "train":
            run_train(args)
        elif args.command == "evaluate":
            run_evaluate(args)
    except ConfigError as error:
        print(f"maml2: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
