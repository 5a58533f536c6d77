#!/bin/bash
# A/B of two train_step binaries: runs them alternately (A B A B ...) for a
# few rounds with the same flags, so that load drifts hit both alike, and
# prints each run, both medians and the ratio B/A of tokens per second
# (> 1: B is faster).
#
# Usage: bench/train_step_ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [-- train_step flags]
# e.g.   bench/train_step_ab.sh /work/old_bin/train_step "$(bazel info bazel-bin)/bench/train_step" 5 -- --threads 1
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 OLD_BINARY NEW_BINARY [ROUNDS] [-- train_step flags]" >&2
  exit 2
fi
a=$1 b=$2
shift 2
rounds=5
if [[ $# -gt 0 && $1 != -- ]]; then rounds=$1; shift; fi
[[ $# -gt 0 && $1 == -- ]] && shift
flags=("$@")

tok() { "$1" "${flags[@]}" | awk '$1 == "sheaf_tokens_per_s" { print $2 }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
ra=() rb=()
for ((i = 1; i <= rounds; ++i)); do
  x=$(tok "$a"); y=$(tok "$b")
  ra+=("$x"); rb+=("$y")
  echo "round $i: A $x tok/s  B $y tok/s"
done
ma=$(printf '%s\n' "${ra[@]}" | median)
mb=$(printf '%s\n' "${rb[@]}" | median)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ab_a_tokens_per_s $ma tok/s"
echo "ab_b_tokens_per_s $mb tok/s"
awk -v a="$ma" -v b="$mb" 'BEGIN { printf "ab_ratio_b_over_a %.3f x\n", b / a }'
