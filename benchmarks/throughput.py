"""Env-steps per second of meta-training on a brax family, against a random-action
ceiling and brax's own PPO trainer on the same device.

For a family, backend, trajectories and horizon, and each (tasks, seeds) of the sweep,
it compiles one MAML-TRPO meta-iteration (seeds vmapped, tasks split over the devices
as ``maml2 train --devices N`` splits them), times ``--iterations`` calls (median) and
reports

* seconds per meta-iteration and env-steps/s of meta-training: every rollout, the
  inner update, the meta-gradient, CG and the line search are inside the timed call;
  the steps counted are the sampled ones, seeds · (K + 1) · tasks · trajectories · horizon;
* the memory of the compiled iteration (XLA's arguments + outputs + temporaries) and,
  where the device reports it (GPUs, TPUs), its peak bytes in use;
* the ceiling: a batched rollout of the same number of env steps with uniform random
  actions on the same devices, and the ratio to it.

The JSON is written again after every size, so a sweep stopped part-way (by a time
limit) keeps the sizes it measured; ``finished`` says whether it ran to the end.

Every size is first checked against the devices' memory (the lower bound of
``maml2 train``): one that cannot fit is refused with the reason, before anything
compiles, and the sweep goes on with the others. A size that passes the check but
fails when it runs (out of device memory after all) is reported as failed, and the
sweep goes on too.

The yardstick, ``--ppo-envs E`` (0 skips it): brax's PPO trainer
(``brax.training.agents.ppo``) on the robot's own brax environment with the same
backend, episode length and devices, with brax's published HalfCheetah settings
(unroll 20, 32 minibatches, 8 updates per batch) and batch size E/4. Its env-steps/s is
brax's own ``training/sps``, the median over three epochs after two warm-up ones.

    python benchmarks/throughput.py --env halfcheetah-vel --tasks 8 --trajectories 4 --horizon 50
    python benchmarks/throughput.py --sweep 8,32,128 --seeds 1,4 --ppo-envs 256 \\
        --out benchmarks/results/throughput-cpu-2core.json
"""

from __future__ import annotations

import argparse
import statistics
import time

from maml2_jax import sharding

sharding.use_host_cores()  # before JAX starts: one CPU device per core, as the CLI does

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import common  # noqa: E402  (beside this file)
from maml2_jax import cli, deep_training, envs  # noqa: E402
from maml2_jax.core import train as engine_lib  # noqa: E402
from maml2_jax.errors import ConfigError, first_line  # noqa: E402
from maml2_jax.io import machine  # noqa: E402
from maml2_jax.learners.policy_gradient import PolicyGradientConfig  # noqa: E402


def _median_seconds(call, count):
    seconds = []
    for i in range(count):
        t0 = time.perf_counter()
        jax.block_until_ready(call(i))
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), seconds


def compiled_bytes(compiled) -> int | None:
    """Bytes XLA plans for one call of ``compiled``: arguments + outputs + temporaries
    (less what outputs alias); None where the backend does not say."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes)


def peak_device_bytes() -> int | None:
    """The largest ``peak_bytes_in_use`` of the local devices (GPUs, TPUs); None on CPUs."""
    peaks = [sharding.memory_stats(device).get("peak_bytes_in_use") for device in jax.local_devices()]
    peaks = [int(p) for p in peaks if p is not None]
    return max(peaks) if peaks else None


def random_rollout_ceiling(family, tasks, trajectories, mesh, key, count):
    """Env-steps/s of uniform random actions in [−1, 1], tasks × trajectories × horizon."""
    horizon = family.config.horizon

    def episode(task, k):
        state, _ = family.reset(task)

        def body(state, t):
            action = jax.random.uniform(jax.random.fold_in(k, t), (family.action_dim,), minval=-1.0, maxval=1.0)
            state, _, reward = family.step(state, action, task)
            return state, reward

        return jnp.sum(jax.lax.scan(body, state, jnp.arange(horizon))[1])

    def batch(tasks, key_data):
        tasks = sharding.constrain_tasks(tasks, mesh)
        keys = jax.random.split(jax.random.wrap_key_data(key_data), (tasks.shape[0], trajectories))
        return jax.vmap(lambda t, ks: jax.vmap(lambda k: episode(t, k))(ks))(tasks, keys)

    run = jax.jit(batch)
    # Host copies: with several processes, each passes its (equal) copy to a global array.
    tasks = jax.device_get(tasks)
    keys = [jax.device_get(jax.random.key_data(jax.random.fold_in(key, i))) for i in range(count)]
    if mesh is not None:
        tasks, keys = jax.device_put((tasks, keys), sharding.replicated(mesh))
    t0 = time.perf_counter()
    compiled = run.lower(tasks, keys[0]).compile()
    compile_seconds = time.perf_counter() - t0
    median, _ = _median_seconds(lambda i: compiled(tasks, keys[i]), count)
    steps = tasks.shape[0] * trajectories * horizon
    return {"compile_seconds": compile_seconds, "median_seconds": median, "env_steps_per_second": steps / median}


def train_config(args, num_tasks: int, seeds: int) -> deep_training.TrainConfig:
    """The run whose meta-iteration is timed: MAML-TRPO, as ``maml2 train --algo maml``."""
    return deep_training.TrainConfig(
        env=args.env, horizon=args.horizon, backend=args.backend, meta_batch_size=num_tasks, seeds=seeds,
        devices=args.devices, inner=PolicyGradientConfig(num_trajectories=args.trajectories,
                                                         inner_steps=args.inner_steps))


def measure(config: deep_training.TrainConfig, mesh, count: int, key) -> dict:
    """One row of the table (impure: compiles, times); ``mesh`` from ``mesh_for(config)``."""
    parts = deep_training.shared_parts(config, mesh)
    seeds = config.seeds
    step = engine_lib.over_seeds(parts.engine)[0] if seeds > 1 else parts.engine.step
    state = {"run": parts.init_seeds()}
    if mesh is not None:  # as maml2 train places it (and as several processes need it)
        state["run"] = jax.device_put(state["run"], sharding.replicated(mesh))
    t0 = time.perf_counter()
    compiled = step.lower(state["run"]).compile()
    compile_seconds = time.perf_counter() - t0

    def call(i):
        state["run"], metrics = compiled(state["run"])
        return metrics

    median, seconds = _median_seconds(call, count)
    family, inner = parts.family, config.inner
    tasks_count, horizon = config.meta_batch_size, family.config.horizon
    steps = seeds * (inner.inner_steps + 1) * tasks_count * inner.num_trajectories * horizon
    tasks, _ = family.sample_tasks(key, tasks_count)
    ceiling = random_rollout_ceiling(family, tasks, seeds * inner.num_trajectories * (inner.inner_steps + 1), mesh,
                                     key, count)
    return {"tasks": tasks_count, "seeds": seeds, "trajectories": inner.num_trajectories, "horizon": horizon,
            "inner_steps": inner.inner_steps, "devices_used": 1 if mesh is None else mesh.devices.size,
            "processes": jax.process_count(),
            "compile_seconds": compile_seconds, "seconds_per_iteration": median, "all_seconds": seconds,
            "env_steps_per_iteration": steps, "env_steps_per_second": steps / median,
            "compiled_bytes": compiled_bytes(compiled), "peak_device_bytes": peak_device_bytes(),
            "ceiling": ceiling, "ratio_to_ceiling": (steps / median) / ceiling["env_steps_per_second"]}


def put_replicated(tree, devices):
    """Every leaf of ``tree`` stacked ``len(devices)`` times on a new leading axis, slice
    ``i`` on ``devices[i]``: what ``jax.device_put_replicated`` gave, the input ``jax.pmap``
    expects."""
    mesh = jax.sharding.Mesh(devices, ("replica",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("replica"))
    return jax.tree.map(lambda x: jax.device_put(jnp.stack([jnp.asarray(x)] * len(devices)), split), tree)


def brax_ppo(robot: str, backend: str, num_envs: int, episode_length: int, devices: int, epochs: int = 3,
             warmup: int = 2) -> dict:
    """Env-steps/s of brax's PPO trainer on ``robot``'s brax environment (impure: trains).

    brax's published HalfCheetah settings, with ``num_envs`` environments and batch
    size ``num_envs / 4``; ``warmup`` + ``epochs`` epochs of one training step each.
    The warm-up epochs are dropped: the first compiles, and the second measured
    10-15x slower than the later ones on a CPU (brax recompiles for its own outputs).
    """
    from brax import envs as brax_envs
    from brax.training.agents.ppo import train as ppo
    from jax._src import api as jax_api

    # brax 0.14.2's PPO still calls jax.device_put_replicated, which jax 0.10 took out of
    # its public namespace (the function itself is unchanged inside jax 0.10; a later jax
    # that drops it there too gets the equivalent below).
    if not hasattr(jax, "device_put_replicated"):
        jax.device_put_replicated = getattr(jax_api, "device_put_replicated", put_replicated)

    if num_envs % 4 or num_envs % devices:
        raise ConfigError(f"--ppo-envs must be a multiple of 4 and of the {devices} devices, got {num_envs}")
    unroll, minibatches, batch = 20, 32, num_envs // 4
    per_step = batch * minibatches * unroll  # env steps of one training step
    sps = []
    started = time.perf_counter()
    ppo.train(environment=brax_envs.get_environment(robot, backend=backend), num_timesteps=(warmup + epochs) * per_step,
              num_evals=warmup + epochs + 1, num_envs=num_envs, batch_size=batch, num_minibatches=minibatches,
              unroll_length=unroll, num_updates_per_batch=8, episode_length=episode_length,
              max_devices_per_host=devices, normalize_observations=True, run_evals=False, seed=0,
              progress_fn=lambda step, metrics: sps.append(float(metrics["training/sps"])) if metrics else None)
    timed = sps[warmup:]
    return {"num_envs": num_envs, "batch_size": batch, "num_minibatches": minibatches, "unroll_length": unroll,
            "episode_length": episode_length, "devices": devices, "env_steps_per_training_step": per_step,
            "epochs_sps": sps, "env_steps_per_second": statistics.median(timed) if timed else None,
            "wall_seconds": time.perf_counter() - started}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="halfcheetah-vel", help="task family")
    parser.add_argument("--backend", default="", help="brax backend (default: the family's)")
    parser.add_argument("--tasks", type=int, default=8, help="tasks per meta-iteration")
    parser.add_argument("--trajectories", type=int, default=4, help="trajectories per task per batch")
    parser.add_argument("--horizon", type=int, default=50, help="steps per episode")
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations (median)")
    parser.add_argument("--sweep", default="", help="comma-separated task counts, e.g. 8,64,512,4096")
    parser.add_argument("--seeds", default="1", help="comma-separated seed counts (vmapped), e.g. 1,4")
    parser.add_argument("--devices", type=int, default=0,
                        help="devices to split the tasks over, as maml2 train --devices (default 0: all)")
    parser.add_argument("--ppo-envs", type=int, default=0,
                        help="environments of the brax PPO yardstick (0: skip it; brax's own setting is 2048)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    cli.add_process_flags(parser, "the tasks")  # as maml2 train
    args = parser.parse_args()
    if args.distributed and args.ppo_envs:
        parser.error("--ppo-envs runs brax's trainer in one process: not with --distributed")
    try:
        cli.join_from_flags(args)
    except ConfigError as error:
        parser.exit(2, f"throughput.py: error: {error}\n")
    lead = jax.process_index() == 0  # only process 0 prints and writes
    say = print if lead else (lambda *a, **k: None)

    counts = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.tasks]
    seed_counts = [int(x) for x in args.seeds.split(",")]
    family = envs.make_task_family(args.env, args.horizon, args.backend)
    backend = getattr(family.config, "backend", None)
    say(f"{args.env} ({backend or 'jax'}), {args.trajectories} trajectories x {args.horizon} steps, "
          f"on {jax.device_count()} x {jax.devices()[0].device_kind}")
    # Every size is checked before the first compilation, so a refusal shows at once.
    planned, refused = [], []
    for count in counts:
        for seeds in seed_counts:
            config = train_config(args, count, seeds)
            try:
                planned.append((config, deep_training.mesh_for(config)))  # refuses what cannot fit
            except ConfigError as error:
                refused.append({"tasks": count, "seeds": seeds, "refused": str(error)})
                say(f"refused: {count} tasks x {seeds} seeds: {error}", flush=True)
    rows, failed = [], []

    def write(ppo, finished):
        # After every row too: a run stopped part-way (a time limit on a lent machine)
        # keeps the sizes it measured.
        if lead:
            common.save({"benchmark": "throughput", **machine.describe(),
                         "env": args.env, "backend": backend, "args": vars(args), "finished": finished, "rows": rows,
                         "refused": refused, "failed": failed, "brax_ppo": ppo}, args.out, quiet=not finished)

    say(f"{'tasks':>6} {'seeds':>5} {'devices':>7} {'compile s':>10} {'s/iter':>8} {'meta-train steps/s':>19} "
          f"{'ceiling steps/s':>16} {'ratio':>6} {'memory MiB':>11}")
    for config, mesh in planned:
        try:
            row = measure(config, mesh, args.iterations, jax.random.key(args.seed + 1))
        except jax.errors.JaxRuntimeError as error:
            # The memory check is a lower bound: a size can still run out of device memory
            # (or hit another runtime limit). Recorded, and the sweep goes on.
            message = first_line(error, limit=1000)
            failed.append({"tasks": config.meta_batch_size, "seeds": config.seeds, "failed": message})
            say(f"failed: {config.meta_batch_size} tasks x {config.seeds} seeds: {message}", flush=True)
        else:
            rows.append(row)
            memory = row["peak_device_bytes"] or row["compiled_bytes"]
            say(f"{row['tasks']:>6} {row['seeds']:>5} {row['devices_used']:>7} {row['compile_seconds']:>10.1f} "
                  f"{row['seconds_per_iteration']:>8.3f} {row['env_steps_per_second']:>19,.0f} "
                  f"{row['ceiling']['env_steps_per_second']:>16,.0f} {row['ratio_to_ceiling']:>6.2f} "
                  f"{(memory or 0) / 2**20:>11,.0f}", flush=True)
        write(None, finished=False)
    ppo = None
    if args.ppo_envs:
        devices = rows[0]["devices_used"] if rows else (args.devices or jax.device_count())
        robot = args.env.split("-")[0]
        ppo = brax_ppo(robot, backend, args.ppo_envs, args.horizon, devices)
        best = max((r["env_steps_per_second"] for r in rows), default=None)
        share = f", meta-training's best is {best / ppo['env_steps_per_second']:.0%} of it" if best else ""
        say(f"brax PPO ({robot}, {backend}, {args.ppo_envs} envs): {ppo['env_steps_per_second']:,.0f} env-steps/s"
              f"{share}", flush=True)
    write(ppo, finished=True)
    if (refused or failed) and not rows:
        what = " or ".join(word for word, sizes in (("was refused", refused), ("failed", failed)) if sizes)
        raise SystemExit(f"every size {what} (above): nothing was measured")


if __name__ == "__main__":
    main()
