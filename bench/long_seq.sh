#!/usr/bin/env bash
# Long sequences on the bench model shape (hidden 256, 4 layers, 8/4 heads,
# intermediate 688, LoRA r 8 on all projections), batch 1: tokens/s, tokens
# per CPU-second and peak RSS for each T, showing activation memory linear
# in T (the attention keeps 2 floats per head and row, not a T x T tensor).
# With --reference BIN (a train_step built with another attention, e.g. the
# probabilities-saving kernel) both run alternately at each T.
# Usage: bench/long_seq.sh [--threads N] [--seqs "512 1024 2048 4096"] [--steps S] [--reference BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=1 seqs="512 1024 2048 4096" steps=2 ref=""
while (($#)); do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --seqs) seqs=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --reference) ref=$2; shift 2 ;;
    *) echo "usage: $0 [--threads N] [--seqs LIST] [--steps S] [--reference BIN]" >&2; exit 2 ;;
  esac
done
bin=${SHEAF_TRAIN_STEP:-}
if [[ -z $bin ]]; then
  bazel build -c opt //bench:train_step >/dev/null 2>&1 || bazel build -c opt //bench:train_step
  bin="$(bazel info -c opt bazel-bin 2>/dev/null)/bench/train_step"
fi
get() { awk -v k="$1" '$1 == k {print $2}' <<<"$2"; }
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; threads $threads, $steps steps after 1 warmup"
printf '%-10s %6s %12s %16s %12s\n' binary T tokens_per_s tokens_per_cpu_s peak_rss_mb
for T in $seqs; do
  for which in sheaf ${ref:+reference}; do
    b=$bin; [[ $which == reference ]] && b=$ref
    out=$("$b" --threads "$threads" --steps "$steps" --warmup 1 --batch 1 --seq "$T" 2>/dev/null)
    printf '%-10s %6s %12s %16s %12s\n' "$which" "$T" "$(get sheaf_tokens_per_s "$out")" \
      "$(get sheaf_tokens_per_cpu_s "$out")" "$(get sheaf_peak_rss_mb "$out")"
  done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
