#!/usr/bin/env bash
# Every GPU check in one go, for a machine with an NVIDIA GPU:
#   1. refuses to start without a GPU (nvidia-smi -L), or without mpirun;
#   2. builds with --config=cuda and runs every test tagged "gpu" or "cuda"
#      (and only those: --build_tests_only), e.g. //dist/cuda:*_test;
#   3. builds and runs every binary tagged "gpu" (the benchmarks, e.g.
#      //dist/cuda:nccl_allreduce_bench): each is started with no arguments,
#      must exit 0 and prints machine-readable `name value unit` lines;
#   4. prints a closing summary and exits non-zero when anything failed.
# Multi-rank binaries start `mpirun -np <visible GPUs>` themselves; set
# SHEAF_GPU_RANKS to override the rank count, CUDA_VISIBLE_DEVICES to pick
# GPUs. Everything runs under one time budget, SHEAF_GPU_CHECK_BUDGET_S
# (default 540 s), so the script ends in under 10 minutes.
#
# Usage: tools/gpu_check.sh [extra bazel test flags...]
#   SHEAF_BAZEL_OUTPUT_BASE=/path  runs bazel with --output_base=/path
#   CUDA_HOME / NCCL_HOME          where the toolkit / NCCL live, when not
#                                  under /usr/local/cuda (third_party/cuda)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

start=$SECONDS
budget=${SHEAF_GPU_CHECK_BUDGET_S:-540}
remaining() {
  local left=$((budget - (SECONDS - start)))
  ((left > 10)) && echo "$left" || echo 10
}

fail_early() {
  echo "gpu_check: $*" >&2
  echo "gpu_check summary: FAIL before running anything: $*"
  exit 1
}

# --- 1. prerequisites -------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 ||
  fail_early "no GPU: nvidia-smi is not installed (no NVIDIA driver on this machine)"
if ! gpus=$(nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$gpus"; then
  fail_early "no GPU: nvidia-smi -L found none (${gpus:-no output})"
fi
echo "gpu_check: $(grep -c '^GPU ' <<<"$gpus") GPU(s):"
echo "$gpus" | sed 's/^/  /'
command -v mpirun >/dev/null 2>&1 ||
  fail_early "mpirun not found (Debian: openmpi-bin libopenmpi-dev; see tools/setup.sh)"
command -v bazel >/dev/null 2>&1 || fail_early "bazel not found (see tools/setup.sh)"

bazel_cmd=(bazel)
[[ -n "${SHEAF_BAZEL_OUTPUT_BASE:-}" ]] && bazel_cmd+=("--output_base=$SHEAF_BAZEL_OUTPUT_BASE")
quiet() { grep -vE 'linux-sandbox(-pid1)?\.cc'; }

# --- 2. tests ---------------------------------------------------------------
log=$(mktemp /tmp/sheaf_gpu_check.XXXXXX)
trap 'rm -f "$log" "$log".bench' EXIT
# Bazel hands tests a clean environment: pass on the knobs that are set.
test_env=()
for var in SHEAF_GPU_RANKS CUDA_VISIBLE_DEVICES NCCL_DEBUG NCCL_DEBUG_SUBSYS; do
  [[ -n "${!var:-}" ]] && test_env+=("--test_env=$var")
done
echo "gpu_check: bazel test --config=cuda (tags gpu, cuda)"
timeout "$(remaining)" "${bazel_cmd[@]}" test --config=cuda --keep_going --build_tests_only \
  --test_tag_filters=gpu,cuda "${test_env[@]}" "$@" //... 2>&1 | tee "$log" | quiet
test_rc=${PIPESTATUS[0]}
testlogs=$("${bazel_cmd[@]}" info --config=cuda bazel-testlogs 2>/dev/null)
test_summary=$(/usr/bin/python3 tools/count_tests.py "$log" "$testlogs")
count_rc=$?
if ((test_rc == 124)); then
  test_summary="$test_summary (bazel test stopped by the time budget)"
fi

# --- 3. benchmarks ----------------------------------------------------------
bench_ran=0
bench_failed=0
bench_lines=()
mapfile -t benches < <("${bazel_cmd[@]}" query \
  'attr(tags, "\bgpu\b", kind(".*_binary rule", //...))' 2>/dev/null)
if ((${#benches[@]})); then
  echo "gpu_check: building ${#benches[@]} benchmark(s): ${benches[*]}"
  timeout "$(remaining)" "${bazel_cmd[@]}" build --config=cuda "${benches[@]}" 2>&1 | quiet
  if ((PIPESTATUS[0] != 0)); then
    bench_failed=${#benches[@]}
  else
    bin=$("${bazel_cmd[@]}" info --config=cuda bazel-bin 2>/dev/null)
    for label in "${benches[@]}"; do
      path="$bin/${label#//}"
      path="${path/://}"
      echo "gpu_check: running $label"
      bench_ran=$((bench_ran + 1))
      timeout "$(remaining)" "$path" >"$log.bench" 2>&1
      rc=$?
      cat "$log.bench"
      # `name value unit`, one figure per line, for the summary.
      while IFS= read -r line; do bench_lines+=("$line"); done \
        < <(grep -E '^[A-Za-z0-9_.-]+ [-+0-9.eE]+ [^ ]+$' "$log.bench")
      if ((rc != 0)); then
        bench_failed=$((bench_failed + 1))
        echo "gpu_check: $label FAILED (exit $rc$( ((rc == 124)) && echo ', time budget'))" >&2
      fi
    done
  fi
fi

# --- 4. summary -------------------------------------------------------------
echo
echo "==================== gpu_check summary ===================="
echo "GPUs:       $(grep -c '^GPU ' <<<"$gpus") ($(head -1 <<<"$gpus" | sed 's/ (UUID.*//'))"
echo "tests:      $test_summary"
echo "benchmarks: $bench_ran ran, $bench_failed failed"
for line in "${bench_lines[@]}"; do echo "  $line"; done
echo "time:       $((SECONDS - start)) s of a $budget s budget"
if ((test_rc != 0 || count_rc != 0 || bench_failed != 0)); then
  echo "gpu_check: FAIL"
  exit 1
fi
echo "gpu_check: PASS"
