#!/usr/bin/env bash
# The GPU session's one prepared run (device tool, `run`): CUDA-graph tests, the behaviour-policy zoo trained on
# the GPU (three envs at once, time-limited), and the update-speed benchmark. Everything it measures goes to $OUT.
#   carry: .whl (gymnasium + mujoco wheels for the device's Python 3.12)   env: ZOO_SECONDS (default 440)
#   A local dry run of the plumbing on CPU: DRY_RUN=1 PY=.venv/bin/python DEVICE=cpu ZOO_SECONDS=20 OUT=/tmp/o bash ...
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if [ -z "${DRY_RUN:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import torch, gymnasium, mujoco; print(torch.__version__, gymnasium.__version__, mujoco.__version__)" \
  >> "$OUT/gpu.txt" 2>&1

echo "== 1. CUDA-graph tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py > "$OUT/tests.log" 2>&1
tail -3 "$OUT/tests.log"

echo "== 2. zoo: SAC on the GPU, three envs at once, ${ZOO_SECONDS:-440} s each"
mkdir -p /tmp/zoo
for env in Hopper-v5 Walker2d-v5 HalfCheetah-v5; do
  $PY -m offline_rl.zoo.train --env "$env" --steps 1000000 --seed 0 --device "${DEVICE:-cuda}" --snapshot-every 10000 \
    --eval-every 50000 --time-limit "${ZOO_SECONDS:-440}" --train-only --run-dir "/tmp/zoo/$env" \
    > "/tmp/zoo/$env.log" 2>&1 &
done
wait
for env in Hopper-v5 Walker2d-v5 HalfCheetah-v5; do tail -2 "/tmp/zoo/$env.log"; done

echo "== 3. update speed, eager vs CUDA graphs"
timeout 100 $PY benchmarks/train_speed.py --device "${DEVICE:-cuda}" --steps "${SPEED_STEPS:-2000}" --n 1000000 2>&1 | tee "$OUT/train_speed_cuda.txt"

echo "== 4. pack the runs (snapshots past 200k steps thinned to every 50k if a pack would pass 15 MB)"
$PY - <<'PY'
import os, subprocess, pathlib
out = pathlib.Path(os.environ["OUT"])
for env in ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"):
    run = pathlib.Path("/tmp/zoo") / env
    snaps = sorted(run.glob("snapshots/step_*.pt"))
    if not snaps:
        continue
    last = max(int(p.stem[5:]) for p in snaps)
    keep = snaps
    if sum(p.stat().st_size for p in snaps) > 15e6:
        keep = [p for p in snaps if (s := int(p.stem[5:])) <= 200_000 or s % 50_000 == 0 or s == last]
    files = [str(p.relative_to("/tmp/zoo")) for p in keep]
    files += [f"{env}/{n}" for n in ("zoo_train.json", "zoo_run.json", "result.json") if (run / n).exists()]
    files.append(f"{env}.log")
    subprocess.run(["tar", "czf", str(out / f"zoo-{env}.tar.gz"), "-C", "/tmp/zoo", *files], check=True)
    print(env, len(keep), "snapshots, last step", last, (out / f"zoo-{env}.tar.gz").stat().st_size // 1024, "KB")
PY
