"""The ``maml2`` command line.

``maml2 gridworld --out DIR`` runs the published tabular experiment (Fu et al. 2023,
the grid world): classification, MAML² training, re-adaptation tests, the no-reset
ablation, MAML and learning from scratch on every run; it prints a table and writes
``DIR/summary.json`` and ``DIR/adaptation.png``.

``maml2 train --env nav2d --algo {maml,maml2} --out DIR`` meta-trains a neural
policy (deep track: MAML-TRPO, or deep MAML² with categories) and writes
``DIR/metrics.jsonl``, the parameters and ``DIR/summary.json``. ``maml2 evaluate DIR
--out EVAL`` adapts the runs found in DIR (and learning from scratch) on fresh tasks
and writes ``EVAL/summary.json`` and ``EVAL/adaptation.png``. ``maml2 online --out DIR``
runs the online setting (tasks arriving one at a time) on the grid world or a deep
family and writes ``DIR/summary.json`` and ``DIR/online.png``.

Conventions shared by the commands: settings from ``--config FILE`` with flags
overriding it; progress on stderr (``--quiet`` silences it), results on stdout;
an ``--out`` holding an earlier run is refused unless ``--overwrite``; every ``--out``
keeps ``machines.jsonl``, a line per session naming its machine
(:mod:`maml2_jax.io.machine`), and a resume on another kind of machine is noted on
stderr (even with ``--quiet``) in one line ``maml2: note: ...``. Exit status:
2 and one line ``maml2: error: ...`` for bad input, before anything is written; 1
for a run that diverged (a NaN or infinity); 130 on Ctrl-C, with one line saying how
to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import os
import signal
import sys
import threading
import time
import warnings

from maml2_jax.errors import ConfigError, check_path


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


def _categories(text: str):
    """``--categories``: N (an integer; its range is the config's to check) or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None


def _groups(text: str) -> tuple[tuple[int, ...], ...]:
    groups = []
    for part in text.split(";"):
        tasks = []
        for item in part.split(","):
            item = item.strip()
            try:
                if "-" in item:
                    lo, hi = (int(x) for x in item.split("-"))
                    if hi < lo:
                        raise argparse.ArgumentTypeError(f"reversed range {item!r} in group list {text!r}")
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
    add_meta_flags(p, d.meta_config(), skip=("tasks_per_category", "category_batch", "category_init",
                                             "classify_every", "classify_from", "stop_tolerance"))
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
    _add_reset_rule(p)
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
    add_process_flags(p, "the runs")
    _add_output_flags(p, config_file=True)


# Each flag's place in the command's config dataclass (the rest keep their names).
_GRIDWORLD_PATHS = {"rows": "world.rows", "cols": "world.cols", "walls": "world.walls", "start": "world.start",
                    "goals": "world.goals", "max_steps": "world.max_steps", "alpha": "sarsa.alpha",
                    "gamma": "sarsa.gamma", "epsilon": "sarsa.epsilon", "epsilon_decay": "sarsa.epsilon_decay",
                    "q_init": "sarsa.q_init"}
_TRAIN_PATHS = {"num_trajectories": "inner.num_trajectories", "inner_steps": "inner.inner_steps",
                "inner_lr": "inner.inner_lr", "first_order": "inner.first_order", "weight_init": "policy.weight_init",
                "max_kl": "trpo.max_kl", "cg_iterations": "trpo.cg_iterations"}
# Flags that steer the command, not the run's settings.
_CONTROL = {"command", "out", "config", "resume", "overwrite", "quiet", "tensorboard", "distributed", "coordinator",
            "num_processes", "process_id", "join_timeout"}
# Every entry each command writes in --out: what --overwrite may replace.
GRIDWORLD_OUTPUTS = ("config.json", "summary.json", "adaptation.png", "checkpoint", "tensorboard", "machines.jsonl")
TRAIN_OUTPUTS = ("config.json", "run_config.json", "metrics.jsonl", "params.msgpack", "category_params.msgpack",
                 "categories.json", "summary.json", "checkpoint", "tensorboard", "seed_*", "machines.jsonl")
EVALUATE_OUTPUTS = ("config.json", "summary.json", "adaptation.png", "machines.jsonl")


def _config(default, args, explicit: dict, paths: dict):
    """``default`` ← the ``--config`` file ← the flags given on the command line."""
    import dataclasses

    from maml2_jax.io import config_files

    data = config_files.read(args.config) if args.config is not None else {}
    top_level = {f.name for f in dataclasses.fields(default)}
    overrides = {}
    for dest, value in explicit.items():
        if dest in _CONTROL:
            continue
        path = paths.get(dest, dest)
        if path.split(".")[0] not in top_level:
            path = "meta." + dest  # the deep track keeps the shared schedule in one nested field
        overrides[path] = value
    return config_files.build(default, data, overrides)


def _gridworld_config(args, explicit):
    from maml2_jax.gridworld_experiment import GridworldConfig

    return _config(GridworldConfig(), args, explicit, _GRIDWORLD_PATHS)


def _check_resume(out: str, config) -> None:
    """ConfigError unless ``out/config.json`` is readable and holds ``config``'s settings
    (:func:`maml2_jax.io.config_files.same_settings`)."""
    import json

    from maml2_jax.io import config_files

    try:
        with open(os.path.join(out, "config.json")) as f:
            previous = json.load(f)
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"--resume: nothing to resume in {out} (no readable config.json)") from None
    if not config_files.same_settings(previous, config):
        raise ConfigError(f"--resume: the run in {out} had other settings; resume it with the same flags")


def run_gridworld(args, explicit, status) -> None:
    """Impure: runs the experiment, prints progress (stderr) and the table (stdout), writes the outputs."""
    import jax

    from maml2_jax import evaluation, gridworld_experiment, sharding
    from maml2_jax.io import files, machine
    from maml2_jax.io.checkpoint import Checkpoints

    config = _gridworld_config(args, explicit)
    if not args.out:
        raise ConfigError("--out: empty path")
    join_from_flags(args)
    gridworld_experiment.check_memory(config)
    writer = jax.process_index() == 0  # in a multi-process run only process 0 writes
    config_path = os.path.join(args.out, "config.json")
    if args.resume:
        _check_resume(args.out, config)
    else:
        def claim():
            files.claim_directory(args.out, GRIDWORLD_OUTPUTS, args.overwrite)
            os.makedirs(args.out, exist_ok=True)
            files.write_json(config_path, dataclasses.asdict(config))  # tuples are written as lists

        sharding.from_process_zero(claim)
    if writer:
        machine.session(args.out, args.resume, status["argv"])
    stages = {"classify": "learning every task from scratch for its feature (compiling first)",
              "k-means": "clustering tasks into categories",
              "train": "meta-training MAML² and MAML (compiling first)",
              "test": "adapting to every task: MAML², no reset, MAML, LFS (compiling first)"}
    started = time.perf_counter()
    say = _stderr(args.quiet or not writer)
    status.update(out=args.out, resume=" ".join(["maml2", "gridworld", *_argv_without(status["argv"], "--overwrite"),
                                                 *([] if args.resume else ["--resume"])]))

    def progress(stage):
        status["stage"] = stage
        say(f"[{time.perf_counter() - started:6.1f}s] {stage}: {stages.get(stage, '')}")

    n = f"N=auto (1..{config.max_categories})" if config.automatic else f"N={config.categories}"
    say(f"grid world: {config.runs} runs x {config.world.num_tasks} tasks, {n}, "
        f"K_out={config.outer_iterations}, K_in={config.inner_iterations}, "
        f"MAML {config.maml_iterations} it., {config.outer_update} outer update; writing {args.out}")
    checkpoints = Checkpoints(os.path.join(args.out, "checkpoint"), keep=len(gridworld_experiment.STAGES) - 1)
    # The k-means and the figure need scikit-learn and matplotlib (~1 s to import):
    # import them while the devices run the first stage.
    _import_in_background("sklearn.cluster", "maml2_jax.plotting", "matplotlib.font_manager")
    try:
        result = gridworld_experiment.run(config, progress, checkpoints=checkpoints)
    finally:
        checkpoints.close()
    if not writer:
        return
    from maml2_jax import plotting

    summary = evaluation.summarize(result)
    summary_path = os.path.join(args.out, "summary.json")
    figure_path = os.path.join(args.out, "adaptation.png")
    if args.tensorboard:
        _gridworld_events(summary, os.path.join(args.out, "tensorboard"))
    files.write_atomically(figure_path, lambda tmp: plotting.adaptation_figure(summary, tmp))
    files.write_json(summary_path, summary)
    print(evaluation.table(summary))
    if config.automatic:
        print(evaluation.chosen_categories(summary))
    print(f"{result.seconds:.1f} s; wrote {summary_path} and {figure_path}")


def _import_in_background(*modules: str) -> None:
    """Imports ``modules`` on a daemon thread (Python's import locks make a later import
    of the same module wait for it, not import it twice)."""
    import importlib
    import threading

    threading.Thread(target=lambda: [importlib.import_module(m) for m in modules], daemon=True,
                     name="maml2-imports").start()


def _argv_without(argv, flag):
    return [a for a in argv if a != flag]


def _gridworld_events(summary: dict, directory: str) -> None:
    """The experiment's curves as TensorBoard scalars: ``<method>/group_<g>`` at step = episode."""
    from maml2_jax.io.tensorboard import ScalarWriter

    writer = ScalarWriter(directory)
    try:
        episodes = len(next(iter(next(iter(summary["curves"].values())).values())))
        for e in range(episodes):
            writer.write(e, {f"{method}/group_{g}": curve[e]
                             for method, by_group in summary["curves"].items() for g, curve in by_group.items()})
        writer.write(0, {f"seconds/{stage}": t for stage, t in summary["phase_seconds"].items()})
    finally:
        writer.close()


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
        if field.name == "categories":
            kwargs.update(type=_categories, metavar="{N,auto}")
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
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest checkpoint with its "
                                                   "saved settings; --outer-iterations alone may be given with it, "
                                                   "to lengthen a run (or shorten an unfinished one)")
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
    p.add_argument("--init-params", metavar="RUN", default=d.init_params,
                   help="start θ from a finished run of one seed (its directory or params.msgpack; same policy "
                        "shapes) instead of a fresh θ; every seed starts from it (default: fresh)")
    g = p.add_argument_group("schedule (MAML²: --algo maml2; MAML uses --outer-iterations only)")
    add_meta_flags(g, d.meta, skip=("stop_tolerance", "classify_from"))
    g.add_argument("--pool-size", type=int, default=d.pool_size,
                   help="training tasks drawn once and classified (default %(default)s)")
    g.add_argument("--feature", choices=FEATURES, default=d.feature,
                   help="classification feature: the update θ_T − θ or the adapted θ_T (default %(default)s)")
    g.add_argument("--classify-trajectories", type=int, default=d.classify_trajectories,
                   help="trajectories per task of the adaptations that classify: the pool's features and, in "
                        "evaluate, the update tendency (default %(default)s: --num-trajectories)")
    add_process_flags(p, "the tasks")
    _add_output_flags(p, config_file=True)


def _train_config(args, explicit):
    from maml2_jax.deep_training import TrainConfig

    return _config(TrainConfig(), args, explicit, _TRAIN_PATHS)


def run_train(args, explicit, status) -> None:
    """Impure: trains (or resumes), shows progress on stderr, writes the outputs."""
    import jax
    from tqdm import tqdm

    from maml2_jax import deep_training

    if args.resume:
        out = args.resume
        ignored = sorted(set(explicit) - _CONTROL - {"outer_iterations"})
        if ignored or args.config:
            flag = "--config" if args.config else "--" + ignored[0].replace("_", "-")
            raise ConfigError(f"{flag}: --resume continues with the run's saved settings (only --outer-iterations "
                              f"may change); drop {flag}")
        config = deep_training.load_config(out)
    else:
        if not args.out:
            raise ConfigError("--out: required (or --resume DIR)")
        out = args.out
        config = _train_config(args, explicit)
    join_from_flags(args)
    writer = jax.process_index() == 0  # in a multi-process run only process 0 writes
    if args.resume and "outer_iterations" in explicit:
        config = deep_training.extend(out, args.outer_iterations, writer=writer)
    deep_training.mesh_for(config)  # refuse a meta-batch that does not split before writing anything
    if not args.resume:
        with _silenced():
            deep_training.initial_params(config)  # a bad --init-params is refused before anything is written
        from maml2_jax import sharding
        from maml2_jax.io import files

        # The others open the shared checkpoint folder once process 0 has claimed it,
        # and stop with its message when it could not.
        sharding.from_process_zero(lambda: files.claim_directory(out, TRAIN_OUTPUTS, args.overwrite))
    _load_family_quietly(config)
    status.update(out=out, total=config.iterations, iteration=None, resume=f"maml2 train --resume {out}")
    say = _stderr(args.quiet or not writer)
    say(f"{config.algo} on {config.env}: {config.iterations} outer iterations, seed {config.seed}"
        + (f" (+{config.seeds - 1} more)" if config.seeds > 1 else "") + f"; writing {out}")
    bar = None

    def progress(row):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=config.iterations, initial=row["iteration"], disable=args.quiet or not writer,
                       desc=f"{config.algo} on {config.env}", file=sys.stderr)
        status.update(iteration=row["iteration"] + 1)
        bar.set_postfix({k: f"{row[k]:.1f}" for k in ("pre_return", "post_return") if row.get(k) is not None})
        bar.update()

    try:
        _, histories = deep_training.train(config, out, progress, resume=bool(args.resume), notify=say,
                                           tensorboard=args.tensorboard, writer=writer, argv=status["argv"])
    finally:
        if bar is not None:
            bar.close()
    if not writer:
        return
    last = histories[0][-1] if histories[0] else None
    if last is not None and last.get("pre_return") is not None:
        print(f"iteration {last['iteration']}: return {last['pre_return']:.1f} before, "
              f"{last['post_return']:.1f} after adaptation (seed {config.seed})")
    print(f"wrote {out}")


def _add_reset_rule(p) -> None:
    from maml2_jax.core.readaptation import RESET_RULES

    p.add_argument("--reset-rule", default="category", choices=RESET_RULES,
                   help="where MAML² continues after the update-tendency reset: category, θ_c* (the paper's), or "
                        "carry, θ_c* + (θ₁ − θ), the update before the reset carried over (default %(default)s)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="adapt trained runs, MAML² without reset and learning from scratch "
                                        "on fresh tasks; per category")
    p.add_argument("runs", nargs="?", help="a training run directory, or a directory of runs (each one seed)")
    p.add_argument("--out", required=True, help="output directory: summary.json, adaptation.png")
    p.add_argument("--pool", nargs="+", metavar="EVALUATION",
                   help="instead of runs: earlier evaluate outputs of other runs on the same test tasks (same "
                        "--tasks, --steps, --seed, --reset-rule, --num-trajectories, --devices), pooled into one "
                        "summary without adapting anything again; e.g. seeds trained later added to an evaluation")
    p.add_argument("--tasks", type=int, default=40, help="test tasks (default %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="adaptation steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test tasks and rollouts (default %(default)s)")
    p.add_argument("--num-trajectories", type=int, default=None,
                   help="trajectories per test task in each adaptation step, for every method (default: each "
                        "run's own --num-trajectories); the tendency still reads a run's --classify-trajectories")
    p.add_argument("--devices", type=int, default=0,
                   help="devices to split the test tasks over (default %(default)s: all; on a CPU one per core); "
                        "1 runs them as one batch, as evaluate did before this option; the count changes the "
                        "float32 rounding, so repeat it to repeat an evaluation")
    _add_reset_rule(p)
    _add_output_flags(p, config_file=False)


# ``online`` flags that belong to one kind of environment: {dest: (kind, config path)}.
_ONLINE_GRID_ONLY = ("initial_tasks", "outer_iterations", "inner_iterations", "maml_iterations", "arrival_episodes",
                     "classify_episodes")
_ONLINE_DEEP_PATHS = {"max_categories": "train.meta.max_categories", "horizon": "train.horizon",
                      "classify_trajectories": "train.classify_trajectories"}
_ONLINE_DEEP_ONLY = ("initial_pool", "iterations_per_arrival", "steps", "horizon", "classify_trajectories",
                     "devices")
ONLINE_OUTPUTS = ("config.json", "summary.json", "online.png", "checkpoint", "tensorboard", "machines.jsonl")


def _names(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _add_online(sub) -> None:
    from maml2_jax.online import OnlineConfig

    d = OnlineConfig()
    p = sub.add_parser("online", help="the online setting: tasks arrive one at a time; MAML² (fixed and automatic "
                                      "N) against MAML, each warm-started")
    p.add_argument("--env", default="gridworld", metavar="ENV",
                   help="gridworld (the published protocol) or a deep task family such as nav2d-isolated "
                        "(default %(default)s)")
    p.add_argument("--out", required=True, help="output directory: config.json, summary.json, online.png, checkpoint/")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint (give the same settings)")
    p.add_argument("--methods", type=_names, default=None,
                   help="comma-separated: maml2-N<k> (k categories), maml2-auto (N chosen at each classification), "
                        "maml (default: maml2-N2,maml2-N3,maml2-N4,maml2-auto,maml on the grid world; "
                        "maml2-auto,maml on a deep family)")
    p.add_argument("--trials", type=int, default=None,
                   help="independent trials, vmapped in one program (default: 10 grid world, 4 deep)")
    p.add_argument("--arrivals", type=int, default=None, help="tasks arriving one at a time (default: 50 grid "
                                                             "world, 12 deep)")
    p.add_argument("--seed", type=int, default=d.seed, help="master seed (default %(default)s)")
    p.add_argument("--max-categories", type=int, default=d.max_categories,
                   help="N_max of maml2-auto (default %(default)s)")
    _add_reset_rule(p)
    grid = p.add_argument_group("grid world only")
    grid.add_argument("--initial-tasks", type=int, default=d.initial_tasks,
                      help="initial pool of maml2-auto and maml; maml2-N<k> starts from k tasks (default %(default)s)")
    grid.add_argument("--outer-iterations", type=int, default=d.outer_iterations,
                      help="MAML²'s K_out per arrival (default %(default)s)")
    grid.add_argument("--inner-iterations", type=int, default=d.inner_iterations,
                      help="MAML²'s K_in per arrival (default %(default)s)")
    grid.add_argument("--maml-iterations", type=int, default=d.maml_iterations,
                      help="MAML's iterations per arrival (default %(default)s)")
    grid.add_argument("--arrival-episodes", type=int, default=d.arrival_episodes,
                      help="episodes of adaptation to an arriving task (default %(default)s)")
    grid.add_argument("--classify-episodes", type=int, default=d.classify_episodes,
                      help="episodes learning an initial task from scratch for its feature (default %(default)s)")
    grid.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                      help="processes classifying the pools between arrivals; results do not depend on it "
                           "(default: one per core, %(default)s)")
    deep = p.add_argument_group("deep task families only")
    deep.add_argument("--initial-pool", type=int, default=None, help="tasks in the pool before the first arrival "
                                                                     "(default 8)")
    deep.add_argument("--iterations-per-arrival", type=int, default=None,
                      help="outer iterations of the warm start before each arrival (default 2)")
    deep.add_argument("--steps", type=int, default=None, help="adaptation steps recorded per arrival (default 3)")
    deep.add_argument("--horizon", type=int, default=None, help="steps per episode (default 20)")
    deep.add_argument("--classify-trajectories", type=int, default=None,
                      help="trajectories per task of MAML²'s adaptations that classify: the pool's features and "
                           "each arrival's update tendency (default: the inner loop's)")
    deep.add_argument("--devices", type=int, default=None,
                      help="devices to split the trials over (default 0: all; on a CPU one per core; 1 repeats "
                           "runs made before this option)")
    _add_output_flags(p, config_file=True)


def run_online(args, explicit, status) -> None:
    """Impure: runs (or resumes) the online experiment with progress on stderr, prints the
    table, writes the outputs."""
    from tqdm import tqdm

    from maml2_jax.io import files

    if not args.out:
        raise ConfigError("--out: empty path")
    grid = args.env == "gridworld"
    wrong = sorted(set(explicit) & set(_ONLINE_DEEP_ONLY if grid else _ONLINE_GRID_ONLY))
    if wrong:
        raise ConfigError(f"--{wrong[0].replace('_', '-')} applies to "
                          f"{'a deep task family' if grid else '--env gridworld'} only")
    settings = {k: v for k, v in explicit.items() if k not in ("env", "workers") and v is not None}
    if grid:
        from maml2_jax import online

        config = _config(online.OnlineConfig(), args, settings, {})
    else:
        from maml2_jax import deep_online
        from maml2_jax.envs import family_names

        if args.env not in family_names():
            raise ConfigError(f"unknown env {args.env!r}; choose gridworld or one of {', '.join(family_names())}")
        default = deep_online.OnlineDeepConfig()
        default = dataclasses.replace(default, train=dataclasses.replace(default.train, env=args.env))
        config = _config(default, args, settings, _ONLINE_DEEP_PATHS)
        deep_online.check_memory(config)  # a size that cannot fit is refused before --out is claimed
    if not args.resume:
        files.claim_directory(args.out, ONLINE_OUTPUTS, args.overwrite)
    resume = " ".join(["maml2", "online", *_argv_without(status["argv"], "--overwrite"),
                       *([] if args.resume else ["--resume"])])
    status.update(out=args.out, total=config.arrivals, iteration=None, resume=resume)
    say = _stderr(args.quiet)
    say(f"online on {args.env}: {config.trials} trials x {config.arrivals} arrivals, "
        f"{', '.join(config.methods)}; writing {args.out}")
    bar = tqdm(total=config.arrivals, desc=f"arrivals ({args.env})", unit="arrival", disable=args.quiet,
               file=sys.stderr)
    try:
        if grid:
            summary, table = _run_grid_online(config, args, bar, status)
        else:
            summary, table = _run_deep_online(config, args, bar, status)
    finally:
        bar.close()
    print(table)
    print(f"wrote {args.out}/summary.json and online.png")


def _run_grid_online(config, args, bar, status):
    from maml2_jax import online, plotting
    from maml2_jax.io import files, machine
    from maml2_jax.io.checkpoint import Checkpoints

    config_path = os.path.join(args.out, "config.json")
    if args.resume:
        _check_resume(args.out, config)
    else:
        os.makedirs(args.out, exist_ok=True)
        files.write_json(config_path, dataclasses.asdict(config))  # tuples are written as lists
    machine.session(args.out, args.resume, status["argv"], devices_used=1)  # the default device computes it all

    def progress(done, total):
        status.update(iteration=done if done else None)
        bar.n = done
        bar.refresh()

    checkpoints = Checkpoints(os.path.join(args.out, "checkpoint"))
    try:
        result = online.run(config, progress, checkpoints, workers=args.workers)
    finally:
        checkpoints.close()
    summary = online.summarize(result)
    if args.tensorboard:
        _online_events({f"{m}/score": curve for m, curve in summary["per_arrival"].items()},
                       os.path.join(args.out, "tensorboard"))
    files.write_atomically(os.path.join(args.out, "online.png"), lambda tmp: plotting.online_figure(summary, tmp))
    files.write_json(os.path.join(args.out, "summary.json"), summary)
    return summary, online.table(summary) + f"\n{result.seconds:.1f} s"


def _run_deep_online(config, args, bar, status):
    from maml2_jax import deep_online
    from maml2_jax.io import files

    def progress(row):
        status.update(iteration=row["arrival"] + 1)
        bar.update()

    with _silenced():  # brax families print chatter while they load
        deep_online.method_parts(config, config.methods[0])
    summary = deep_online.run(config, args.out, progress, resume=args.resume, argv=status["argv"])
    if args.tensorboard:
        _online_events({f"{m}/return_after_1": [row[1] for row in entry["by_arrival_mean"]]
                        for m, entry in summary["methods"].items()}, os.path.join(args.out, "tensorboard"))
    files.write_atomically(os.path.join(args.out, "online.png"), lambda tmp: deep_online.plot(summary, tmp))
    return summary, deep_online.table(summary)


def _online_events(curves: dict, directory: str) -> None:
    """``{tag: [A] values}`` as TensorBoard scalars at step = arrival."""
    from maml2_jax.io.tensorboard import ScalarWriter

    writer = ScalarWriter(directory)
    try:
        for a in range(len(next(iter(curves.values())))):
            writer.write(a, {tag: curve[a] for tag, curve in curves.items() if curve[a] is not None})
    finally:
        writer.close()


def add_process_flags(p, split: str) -> None:
    """``--distributed`` and the three values of a multi-process launch (``train``, ``gridworld``,
    ``benchmarks/throughput.py``); ``split`` names what is spread over the devices."""
    g = p.add_argument_group("several processes (docs/multihost.md)")
    g.add_argument("--distributed", action="store_true",
                   help=f"join the other processes with jax.distributed.initialize() and split {split} over the "
                        "devices of all of them; only process 0 writes. Without the three flags below JAX finds "
                        "the cluster itself (SLURM, TPU pods, GKE)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0's coordinator (default $JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, metavar="N", help="processes in all (default $JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process, 0 … N−1 (default $JAX_PROCESS_ID)")
    g.add_argument("--join-timeout", type=int, default=60, metavar="S",
                   help="seconds to wait for the other processes before giving up (default %(default)s)")


def _add_output_flags(p, config_file: bool) -> None:
    """The flags every command shares: where settings come from and how outputs behave."""
    if config_file:
        p.add_argument("--config", metavar="FILE",
                       help="settings from a YAML or JSON file (a run's saved config.json works); "
                            "flags given on the command line override it")
        p.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard event files in OUT/tensorboard")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --out (without it such an --out is refused)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr; stdout holds the results only")


def run_evaluate(args, explicit, status) -> None:
    """Impure: evaluates with a progress bar on stderr, prints a table, writes the outputs."""
    from tqdm import tqdm

    from maml2_jax import deep_evaluation
    from maml2_jax.io import files, machine

    if args.pool:
        _pool_evaluations(args, explicit)
        return
    if args.runs is None:
        raise ConfigError("give a run directory to evaluate (or --pool EVALUATION ...)")
    runs = deep_evaluation.find_runs(args.runs, args.out)
    files.claim_directory(args.out, EVALUATE_OUTPUTS, args.overwrite)
    with _silenced():  # brax families print chatter while the runs load; a damaged run is refused here
        loaded = deep_evaluation.load_runs(runs, args.tasks, args.steps, args.seed, args.reset_rule,
                                           args.num_trajectories, args.devices)
    with tqdm(total=len(runs), desc="evaluating runs", unit="run", disable=args.quiet, file=sys.stderr) as bar:
        # loaded holds the trajectories per step
        summary = deep_evaluation.evaluate(runs, args.tasks, args.steps, args.seed, progress=lambda _: bar.update(),
                                           loaded=loaded, reset_rule=args.reset_rule, devices=args.devices)
    print(deep_evaluation.table(summary))
    _write_evaluation(args.out, summary, {"runs": runs, "tasks": args.tasks, "steps": args.steps, "seed": args.seed,
                                          "reset_rule": args.reset_rule, "num_trajectories": args.num_trajectories,
                                          "devices": summary["devices"]})
    machine.session(args.out, False, status["argv"], devices_used=summary["devices"])


def _pool_evaluations(args, explicit) -> None:
    """Impure: ``maml2 evaluate --pool``: reads earlier evaluations, writes their pooled one."""
    from maml2_jax import deep_evaluation, deep_training
    from maml2_jax.io import files

    settings = sorted(set(explicit) & {"tasks", "steps", "seed", "reset_rule", "num_trajectories", "devices"})
    if args.runs is not None or settings:
        flag = args.runs if args.runs is not None else "--" + settings[0].replace("_", "-")
        raise ConfigError(f"{flag}: --pool reads the runs and settings from the evaluations it pools; drop {flag}")
    configs, summaries = [], []
    for path in args.pool:
        check_path("--pool", path)
        config = deep_training.read_json(os.path.join(path, "config.json"))
        if not isinstance(config, dict) or "runs" not in config:
            raise ConfigError(f"--pool: {path} is not a maml2 evaluate output")
        configs.append(config)
        summaries.append(deep_training.read_json(os.path.join(path, "summary.json")))
        if os.path.realpath(path) == os.path.realpath(args.out):
            raise ConfigError(f"--out: {args.out} is one of the pooled evaluations; write the pool elsewhere")
    summary = deep_evaluation.pool(summaries)
    files.claim_directory(args.out, EVALUATE_OUTPUTS, args.overwrite)
    print(deep_evaluation.table(summary))
    _write_evaluation(args.out, summary, {
        "runs": [run for config in configs for run in config["runs"]], "pooled": list(args.pool),
        "tasks": sum(summary["categories"].values()), "steps": summary["steps"], "seed": summary["seed"],
        "reset_rule": summary["reset_rule"], "num_trajectories": configs[0].get("num_trajectories"),
        "devices": summary["devices"]})


def _write_evaluation(out: str, summary: dict, config: dict) -> None:
    """Impure: an evaluation's outputs, config.json, adaptation.png and summary.json."""
    from maml2_jax import plotting
    from maml2_jax.io import files

    os.makedirs(out, exist_ok=True)
    files.write_json(os.path.join(out, "config.json"), config)
    files.write_atomically(os.path.join(out, "adaptation.png"), lambda tmp: plotting.return_figure(summary, tmp))
    files.write_json(os.path.join(out, "summary.json"), summary)
    print(f"wrote {out}/summary.json and adaptation.png")


def _stderr(quiet: bool):
    """A ``say(line)`` that prints progress lines on stderr (nothing when ``quiet``)."""
    return lambda line: None if quiet else print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _silenced():
    """Sends what dependencies print (Python or C, stdout or stderr) to /dev/null meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [null]:
            os.close(fd)


def _load_family_quietly(config) -> None:
    """Builds the run's task family once (it is cached) with brax's and MuJoCo's chatter silenced."""
    from maml2_jax import envs

    with _silenced():
        envs.make_task_family(config.env, config.horizon, config.backend)


def join_from_flags(args) -> None:
    """With ``--distributed`` (flags of :func:`add_process_flags`), joins the run's other
    processes (before JAX starts); ConfigError for those flags without it."""
    from maml2_jax import sharding

    if args.distributed:
        sharding.join_processes(args.coordinator, args.num_processes, args.process_id, args.join_timeout)
    elif any(getattr(args, name) is not None for name in ("coordinator", "num_processes", "process_id")):
        raise ConfigError("--coordinator, --num-processes and --process-id need --distributed")


class _Status(dict):
    """Where the command is, for the one line Ctrl-C prints."""

    def line(self) -> str:
        command = self.get("command")
        if command == "evaluate" or not self.get("resume"):
            return "maml2: interrupted; nothing was written" if command == "evaluate" else "maml2: interrupted"
        if command == "gridworld":
            where = f"in the {self['stage']} stage" if "stage" in self else "while setting up"
        elif command == "online":
            done = self.get("iteration")
            where = "before the first arrival finished" if done is None else f"after arrival {done} of {self['total']}"
        elif self.get("iteration") is None:
            where = "before this session's first outer iteration finished (compiling)"
        else:
            where = f"after outer iteration {self['iteration']} of {self['total']}"
        return f"maml2: interrupted {where}; resume from the last checkpoint with: {self['resume']}"


class _Interrupts:
    """Ctrl-C prints one line and exits 130 at once, also during compilation.

    The signal's wake-up byte goes to a pipe that a watcher thread reads, so the
    exit does not wait for the main thread to leave XLA. ``os._exit`` skips the
    teardown that crashes when XLA is stopped mid-compile; files are written
    atomically and checkpoints complete-or-absent, so nothing is left half-written.
    """

    def __init__(self, status: _Status):
        self.status = status
        self.installed = threading.current_thread() is threading.main_thread()
        if not self.installed:
            return
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._fds = (read, write)
        self._old_handler = signal.signal(signal.SIGINT, lambda *_: None)
        self._old_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, daemon=True).start()

    _STOP = b"\x00"  # no signal has number 0: the command's own "stop watching"

    def _watch(self):
        # The thread owns both ends of the pipe and closes them itself: were the main
        # thread to close them, a thread not yet reading could read (and consume) a
        # file that reused the descriptor's number.
        read, write = self._fds
        try:
            while True:
                data = os.read(read, 64)
                if signal.SIGINT in data:
                    # Everyone else's stderr goes quiet first, so no progress bar redraws after the line.
                    terminal = os.dup(2)
                    null = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(null, 2)
                    os.write(terminal, ("\n" + self.status.line() + "\n").encode())
                    os._exit(130)
                if not data or self._STOP in data:
                    return
        finally:
            os.close(read)
            os.close(write)

    def close(self):
        if self.installed:
            signal.set_wakeup_fd(self._old_fd)
            signal.signal(signal.SIGINT, self._old_handler)
            os.write(self._fds[1], self._STOP)


def _explicit_flags(parser, argv) -> dict:
    """The options given on the command line (not defaults): a second parse where every
    default is "absent"."""
    quiet = copy.deepcopy(parser)
    for action in _all_actions(quiet):
        if action.option_strings and action.dest != "help":
            action.default = argparse.SUPPRESS
    return vars(quiet.parse_args(argv))


def _all_actions(parser):
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_actions(child)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="maml2", description="MAML² meta-reinforcement learning in JAX")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_gridworld(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_online(sub)
    return parser


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    """Shows a warning meant for the user (the only ones :func:`main` lets through) as one line."""
    print(f"maml2: note: {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    """The ``maml2`` command. Returns the exit status: 0, 2 for bad input, 1 for a
    diverged run, 130 on Ctrl-C (which exits at once)."""
    from maml2_jax import sharding
    from maml2_jax.errors import NonFiniteError
    from maml2_jax.io import compile_cache, machine

    sharding.use_host_cores()  # before JAX starts; no effect on GPU/TPU
    compile_cache.enable()  # later runs of the same settings skip compilation
    argv = sys.argv[1:] if argv is None else list(argv)
    status = _Status()
    interrupts = _Interrupts(status)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dependencies' deprecation notices are not the user's business
            # A resume on another kind of machine is: one line on stderr, even with --quiet.
            warnings.simplefilter("always", machine.MachineChanged)
            warnings.showwarning = _note
            parser = build_parser()
            args = parser.parse_args(argv)
            explicit = _explicit_flags(parser, argv)
            status.update(command=args.command, argv=argv)
            {"gridworld": run_gridworld, "train": run_train, "evaluate": run_evaluate, "online": run_online}[
                args.command](
                args, explicit, status)
    except ConfigError as error:
        print(f"maml2: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteError as error:
        print(f"maml2: error: {error}", file=sys.stderr)
        return 1
    finally:
        interrupts.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
