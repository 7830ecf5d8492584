#!/usr/bin/env bash
# Every GPU measurement of issue #25 in one call, for a machine lent for minutes: JSON lines under OUT.
# Run from the project root on the GPU machine, with Ray installed (or the bundle that
# ../shared/tools/device_ray_bundle.sh packs, carried as .devbundle):
#
#   bash benchmarks/gpu_suite.sh "$OUT"
#
# Each part has its own time limit so that one slow part cannot eat the others' window; a part that fails
# or times out writes its exit status to OUT/status.txt and the suite goes on. Figures go to
# docs/results/performance.md with this command.
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR}
mkdir -p "$out"
if [ -f .devbundle/install.sh ]; then
  # shellcheck disable=SC1091
  source .devbundle/install.sh
fi
export RAY_DATA_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

part() {  # part NAME SECONDS CMD...: stdout to OUT/NAME.jsonl, stderr to OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  local tic=$SECONDS
  timeout "$limit" "$@" > "$out/$name.jsonl" 2> "$out/$name.log"
  echo "$name rc=$? seconds=$((SECONDS - tic))" | tee -a "$out/status.txt"
  ray stop --force > /dev/null 2>&1
}

nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv > "$out/gpu.csv" 2>&1
# utilisation, sampled every second through the whole suite
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 > "$out/gpu_utilisation.csv" 2>&1 &
smi=$!

# 1. collection: kernel and the Ray Data pipeline on the GPU (the start is timed apart: theta0=shared)
part collect_cuda 150 "$py" benchmarks/collect_throughput.py --device cuda --tasks 200000 --per-task-tasks 20 \
  --overrides trajectory.theta0=shared collect.batch_size=16384
# 2. training through Ray Train on the GPU: small and base, meta-batch 64 and 256, single level and Reptile
for preset in small base; do
  for mb in 64 256; do
    part "train_${preset}_${mb}" 90 "$py" benchmarks/train_scaling.py --root "/tmp/gpu_train" --tasks 2048 \
      --workers 1 --metas none reptile --steps 20 \
      --overrides train.use_gpu=true model.preset=$preset train.meta_batch=$mb
  done
done
# 3. whole-network Omniglot collection at 10,000 episodes on the GPU, with each process's peak memory
part omniglot_full_10k 180 "$py" benchmarks/collect_scale.py --sizes 10000 --overrides task=omniglot \
  task.root="${OMNIGLOT_ROOT:-../shared/data/omniglot}" trajectory.theta0=shared collect.gpus_per_actor=1
# 4. the GPU test tier
part pytest_gpu 120 "$py" -m pytest -m gpu -q -p no:cacheprovider

kill "$smi" 2> /dev/null
cat "$out/status.txt"
