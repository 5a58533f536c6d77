#!/usr/bin/env bash
# bench/train_step under mpirun for N = 1, 2, 4 ranks on one machine
# (oversubscribed here): tokens/s, communication wait, bytes per purpose per
# step, and peak RSS per rank with the frozen weights sharded 1/N.
#
#   bench/train_step_dist.sh            # the fixed small LoRA configuration
#   bench/train_step_dist.sh --big      # ~95M frozen parameters (~380 MB fp32), batch 4:
#                                       # frozen weights dominate memory
set -euo pipefail
cd "$(dirname "$0")/.."
args=(--steps 5 --warmup 1 --threads 1)
if [[ "${1:-}" == --big ]]; then
  args=(--steps 2 --warmup 1 --threads 1 --hidden 1024 --layers 8 --intermediate 2816 --batch 4)
fi
tools/setup.sh
bazel build //bench:train_step 2>&1 | grep -vE 'linux-sandbox' | tail -1
bin="$(bazel info bazel-bin 2>/dev/null)/bench/train_step"
source dist/mpi_test_lib.sh
"$bin" --prepare "${args[@]}"   # the model file the sharded ranks read
for n in 1 2 4; do
  echo "== ranks $n"
  if ((n == 1)); then "$bin" "${args[@]}"; else "${MPIRUN[@]}" -np "$n" "$bin" --ranks "$n" "${args[@]}"; fi
done
