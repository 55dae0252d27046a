#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one short, time-boxed run, for a lent
# accelerator machine that has JAX's CUDA build but no network (so no pip install from
# an index) and only minutes of time.
#
#   bash benchmarks/gpu_session.sh fetch          # here, beside the project's .venv: downloads
#                                                  # into .whl/ (git-ignored; carry it) the wheels
#                                                  # such an image lacks
#   bash benchmarks/gpu_session.sh run OUT         # there: installs .whl/ (if any), then writes
#                                                  # OUT/env.txt, OUT/throughput-512.json,
#                                                  # OUT/throughput-sweep.json, OUT/backends.json
#   bash benchmarks/gpu_session.sh hcdir OUT SECS  # there: starts, or continues, the customary
#                                                  # HalfCheetah-Dir MAML-TRPO run for SECS seconds;
#                                                  # OUT/hcdir-metrics.jsonl, OUT/hcdir-config.json
#
# `fetch` takes the versions installed in the project's environment (those of
# pyproject.toml) of brax, MuJoCo, MJX and the packages they import that such an image
# does not hold; it downloads them for Python $PYVER (default 3.12) on x86-64 Linux.
# Everything else (jax, flax, optax, chex, orbax, scikit-learn, ...) is the machine's.
#
# `run` measures, each step under its own time limit (seconds, overridable) so the
# whole fits one 10-minute call; every script saves its JSON after each size, so a step
# cut short keeps what it measured:
#   T_TARGET   (230) halfcheetah-vel at 512 tasks, 1 and 4 seeds, horizon 200, 20
#                    trajectories, and brax's PPO on 2048 environments (the yardstick)
#   T_SWEEP    (150) the rest of the sweep: 1024, 4096, 64 and 8 tasks, 1 seed (a size
#                    that runs out of memory is reported as failed; the rest go on)
#   T_BACKENDS (100) every physics backend on 4096 environments x 200 steps (what a GPU's
#                    default backend is to be chosen from; spring was chosen on a CPU)
# A step still running at its limit gets SIGINT, and SIGKILL 20 s later. Everything
# printed is also in OUT/session.log. SCALE=small shrinks every size, to check the
# script on a CPU first.
#
# Other settings: PYTHON (the interpreter there, default python3), VENV (the
# environment `fetch` reads versions from, default .venv), HCDIR_RUN (the run folder
# of `hcdir`, default /tmp/maml2-hcdir).
set -uo pipefail

PY=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

# What the lent image lacks (its own package list), and what the workload imports.
WHEELS="brax mujoco mujoco-core mujoco-studio mujoco-mjx glfw jaxopt ml_collections trimesh"

setup() {
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/maml2-site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/maml2-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
}

case "${1:-}" in
fetch)
    venv=${VENV:-.venv}
    pins=$("$venv/bin/python" - "$WHEELS" <<'EOF'
import importlib.metadata as md, sys
print(" ".join(f"{name}=={md.version(name)}" for name in sys.argv[1].split()))
EOF
    ) || exit 1
    mkdir -p .whl
    # shellcheck disable=SC2086  # one argument per pin
    "$venv/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pins || exit 1
    echo "fetched into .whl/: $pins"
    du -sh .whl
    ;;
run)
    out=${2:?usage: gpu_session.sh run OUT}
    mkdir -p "$out"
    exec > >(tee -a "$out/session.log") 2>&1
    setup
    if [ "${SCALE:-}" = small ]; then
        target="--sweep 8 --seeds 1,2 --trajectories 2 --horizon 20 --iterations 2 --ppo-envs 64"
        sweep="--sweep 16,4 --seeds 1 --trajectories 2 --horizon 20 --iterations 2"
        backends="--envs 16 --steps 20 --repeats 2"
    else
        target="--sweep 512 --seeds 1,4 --trajectories 20 --horizon 200 --iterations 3 --ppo-envs 2048"
        sweep="--sweep 1024,4096,64,8 --seeds 1 --trajectories 20 --horizon 200 --iterations 3"
        backends="--envs 4096 --steps 200 --repeats 3"
    fi
    { command -v nvidia-smi >/dev/null && nvidia-smi -L; "$PY" - <<'EOF'
import importlib.metadata as md
import jax
for name in ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "scikit-learn", "brax", "mujoco",
             "mujoco-mjx", "numpy"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
print("devices", jax.devices())
# Fails here, not minutes later, when a package is missing: both physics paths load.
from maml2_jax import envs
for backend in ("spring", "mjx"):
    envs.make_task_family("halfcheetah-vel", 200, backend)
print("brax and mjx families load")
EOF
    } 2>&1 | tee "$out/env.txt" || exit 1  # pipefail: a failed import stops here
    # shellcheck disable=SC2086
    timeout -s INT -k 20 "${T_TARGET:-230}" "$PY" benchmarks/throughput.py --env halfcheetah-vel $target \
        --out "$out/throughput-512.json"
    echo "throughput (target size and PPO): exit $?"
    # shellcheck disable=SC2086
    timeout -s INT -k 20 "${T_SWEEP:-150}" "$PY" benchmarks/throughput.py --env halfcheetah-vel $sweep \
        --out "$out/throughput-sweep.json"
    echo "throughput (sweep): exit $?"
    # shellcheck disable=SC2086
    timeout -s INT -k 20 "${T_BACKENDS:-100}" "$PY" benchmarks/brax_backends.py $backends --out "$out/backends.json"
    echo "backends: exit $?"
    ;;
hcdir)
    out=${2:?usage: gpu_session.sh hcdir OUT SECONDS}
    seconds=${3:?usage: gpu_session.sh hcdir OUT SECONDS}
    mkdir -p "$out"
    exec > >(tee -a "$out/session.log") 2>&1
    setup
    run=${HCDIR_RUN:-/tmp/maml2-hcdir}
    if [ "${SCALE:-}" = small ]; then
        size="--horizon 20 --meta-batch-size 4 --num-trajectories 2"
    else
        size="--horizon 200 --meta-batch-size 40 --num-trajectories 20"
    fi
    if [ -f "$run/config.json" ]; then
        how="--resume $run"
    else
        how="--env halfcheetah-dir --algo maml $size --outer-iterations 1000 --checkpoint-every 10 --out $run"
    fi
    # Ctrl-C (SIGINT) is maml2 train's own stop: it exits at once; the next call resumes
    # from the newest checkpoint.
    # shellcheck disable=SC2086
    timeout -s INT -k 20 "$seconds" "$PY" -m maml2_jax.cli train $how --quiet
    echo "hcdir: exit $? ($(wc -l <"$run/metrics.jsonl") iterations logged)"
    cp "$run/metrics.jsonl" "$out/hcdir-metrics.jsonl"
    cp "$run/config.json" "$out/hcdir-config.json"
    ;;
*)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
