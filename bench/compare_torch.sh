#!/usr/bin/env bash
# Runs the CPU LoRA training-step benchmark in sheaf and in PyTorch (eager,
# Debian's python3-torch, plain torch.nn LoRA) on the same configuration and
# thread count, one after the other in this script, and prints both figures
# and their ratios:
#   sheaf_tokens_per_s / torch_tokens_per_s   (target >= 1.5)
#   sheaf_peak_rss_mb  / torch_peak_rss_mb    (target < 1)
# Usage: bench/compare_torch.sh [--threads N] [--steps S]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=$(nproc)
steps=10
while (($#)); do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "usage: $0 [--threads N] [--steps S]" >&2; exit 2 ;;
  esac
done
tools/setup.sh
bazel build -c opt //bench:train_step >/dev/null 2>&1 || bazel build -c opt //bench:train_step
bin="$(bazel info -c opt bazel-bin 2>/dev/null)/bench/train_step"

sheaf_out=$("$bin" --threads "$threads" --steps "$steps" --warmup 2)
torch_out=$(/usr/bin/python3 bench/compare_torch.py --threads "$threads" --steps "$steps" --warmup 2)
echo "$sheaf_out"
echo "$torch_out"
get() { awk -v k="$1" '$1 == k {print $2}' <<<"$2"; }
st=$(get sheaf_tokens_per_s "$sheaf_out"); tt=$(get torch_tokens_per_s "$torch_out")
sr=$(get sheaf_peak_rss_mb "$sheaf_out"); tr=$(get torch_peak_rss_mb "$torch_out")
awk -v a="$st" -v b="$tt" 'BEGIN {printf "ratio_tokens_per_s %.3f x\n", a / b}'
awk -v a="$sr" -v b="$tr" 'BEGIN {printf "ratio_peak_rss %.3f x\n", a / b}'
