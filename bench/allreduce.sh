#!/usr/bin/env bash
# Builds //bench:allreduce and runs it under mpirun for N = 2 and 4 ranks
# (oversubscribed: fine on a small machine, but then the numbers measure the
# scheduler as much as the transport), printing one table per N:
#   size_bytes time_us algbw_GBps busbw_GBps check
# Usage: bench/allreduce.sh [--ranks "2 4"] [allreduce flags...]
# Env: BAZEL_OUTPUT_BASE (a private Bazel server), MPIRUN_ARGS (extra mpirun
# arguments, e.g. "--mca btl self,tcp" to measure TCP instead of shared
# memory).
set -euo pipefail
cd "$(dirname "$0")/.."
ranks="2 4"
if [[ "${1:-}" == --ranks ]]; then
  ranks=$2
  shift 2
fi
bazel_cmd=(bazel ${BAZEL_OUTPUT_BASE:+--output_base="$BAZEL_OUTPUT_BASE"})
"${bazel_cmd[@]}" build -c opt //bench:allreduce >/dev/null 2>&1 ||
  "${bazel_cmd[@]}" build -c opt //bench:allreduce
bin="$("${bazel_cmd[@]}" info -c opt bazel-bin 2>/dev/null)/bench/allreduce"

echo "# host: $(nproc) cores, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for n in $ranks; do
  # shellcheck disable=SC2086  # MPIRUN_ARGS is a list of words
  mpirun --oversubscribe --allow-run-as-root -np "$n" ${MPIRUN_ARGS:-} "$bin" "$@"
done
