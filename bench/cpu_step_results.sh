#!/usr/bin/env bash
# Regenerates docs/results/cpu_step.md from fresh runs: the PyTorch
# comparison at 1 and 2 threads, the long-sequence table, the GEMM table and
# the callgrind instruction count of one step. About 15-25 CPU-minutes on the
# 2-core machine (torch.compile alone takes ~2 minutes per thread count).
# Usage: bench/cpu_step_results.sh [--torch2 VENV_PYTHON] [--reference TRAIN_STEP_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
torch2=${SHEAF_TORCH2_VENV:-/tmp/sheaf_torch2_venv}/bin/python ref=""
while (($#)); do
  case "$1" in
    --torch2) torch2=$2; shift 2 ;;
    --reference) ref=$2; shift 2 ;;
    *) echo "usage: $0 [--torch2 PYTHON] [--reference BIN]" >&2; exit 2 ;;
  esac
done
out=docs/results/cpu_step.md
bazel build -c opt //bench:train_step //bench:gemm >/dev/null
bin="$(bazel info -c opt bazel-bin 2>/dev/null)/bench"
section() { printf '\n## %s\n\n`%s`\n\n```\n' "$1" "$2"; }
{
  echo "# CPU training step (raw outputs of bench/cpu_step_results.sh, $(date -u +%F))"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), load $(cut -d' ' -f1-3 /proc/loadavg)."
  section "sheaf vs PyTorch" "bench/compare_torch.sh --torch2 $torch2 --steps 5 --rounds 2"
  bench/compare_torch.sh --torch2 "$torch2" --steps 5 --rounds 2 2>&1 | grep -v Warning | grep -v _conversion_method
  echo '```'
  section "Long sequences, batch 1" "bench/long_seq.sh --seqs \"1024 2048 4096\"${ref:+ --reference $ref}"
  SHEAF_TRAIN_STEP="$bin/train_step" bench/long_seq.sh --seqs "1024 2048 4096" ${ref:+--reference "$ref"}
  echo '```'
  section "GEMM" "$bin/gemm --threads 1 --reps 5 (and with OPENBLAS_CORETYPE=Haswell)"
  "$bin/gemm" --threads 1 --reps 5
  OPENBLAS_CORETYPE=Haswell "$bin/gemm" --threads 1 --reps 5
  echo '```'
  section "Instructions of one step (callgrind, portable kernels: valgrind has no AVX-512)" \
    "valgrind --tool=callgrind train_step --threads 1 --batch 2 --steps S (S = 1, 2; the difference is one step)"
  for s in 1 2; do
    SHEAF_CPU_KERNELS=portable OMP_WAIT_POLICY=PASSIVE valgrind --tool=callgrind \
      --callgrind-out-file=/tmp/sheaf_cg.$s.out "$bin/train_step" --threads 1 --batch 2 --steps $s --warmup 0 >/dev/null 2>&1
  done
  i1=$(callgrind_annotate /tmp/sheaf_cg.1.out | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  i2=$(callgrind_annotate /tmp/sheaf_cg.2.out | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "instructions_per_step $((i2 - i1)) (batch 2 x 256 tokens)"
  callgrind_annotate /tmp/sheaf_cg.2.out | sed -n '/file:function/,$p' | head -14
  echo '```'
} > "$out"
echo "wrote $out"
