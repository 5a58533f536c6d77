#!/usr/bin/env bash
# The langadapt job end to end through a coordinator, as tools/demo.sh runs
# the LoRA job: a coordinator (SQLite in a temporary directory; roots: the
# repository's models/ and data/, and runs/), a worker world of 2 MPI ranks,
# and the `sheaf` CLI, which submits examples/langadapt_tiny.yaml (LayRA on
# models/tiny-multi: + Dutch, + Polish), watches it, prints `sheaf status`
# (its metrics carry val_loss/<lang> of the latest stage) and fetches the
# matrix.
#
#   tools/demo_langadapt.sh [--steps N] [--out DIR]
#
# --steps: steps per language (default 20); --out: where the matrix and
# adapters are fetched to (default runs/demo-langadapt). The job writes
# under runs/demo/demo-langadapt/.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
steps=20
out=runs/demo-langadapt
while (($#)); do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--steps N] [--out DIR]" >&2; exit 2 ;;
  esac
done

tools/setup.sh
echo "== building"
# BAZEL_OUTPUT_BASE: build in a Bazel output base of your own (several
# checkouts or users on one machine).
bazel=(bazel ${BAZEL_OUTPUT_BASE:+--output_base="$BAZEL_OUTPUT_BASE"})
"${bazel[@]}" build //cli:sheaf //coordinator:sheaf-coordinator //worker:sheaf-worker 2>&1 \
  | grep -vE 'linux-sandbox' | tail -2
bin="$("${bazel[@]}" info bazel-bin 2>/dev/null)"
sheaf="$bin/cli/sheaf"
for b in "$sheaf" "$bin/coordinator/sheaf-coordinator" "$bin/worker/sheaf-worker"; do
  [[ -x "$b" ]] || { echo "demo: $b was not built" >&2; exit 1; }
done

echo "== preparing corpora (man pages in six languages, fixed splits)"
tools/prepare_data.sh --split data/langadapt --max-train-bytes 2500000 --max-val-bytes 60000 \
  en de fr nl pl ru | grep split

# ---- The coordinator: tokens for one tenant ("demo") and the worker world.
work=$(mktemp -d /tmp/sheaf_demo.XXXXXX)
coordinator_pid=
worker_pid=
cleanup() {
  local rc=$?
  # The world first (mpirun passes SIGTERM on to the ranks), then the
  # coordinator, each waited for, so that nothing outlives the demo.
  if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  if [[ -n "$coordinator_pid" ]] && kill -0 "$coordinator_pid" 2>/dev/null; then
    kill -TERM "$coordinator_pid" 2>/dev/null || true
    wait "$coordinator_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

random_token() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
tenant_token="demo-$(random_token)"
worker_token="worker-$(random_token)"
printf '%s\n' "$tenant_token" > "$work/tenant.token"
printf '%s\n' "$worker_token" > "$work/worker.token"
printf '%s demo\n%s @worker\n' "$tenant_token" "$worker_token" > "$work/tokens"
chmod 600 "$work"/*token*
mkdir -p runs

echo "== starting a coordinator (SQLite in $work)"
# A short lease TTL: heartbeats (and so progress reports) every few seconds.
# Created before the coordinator starts: the background redirection opens it
# asynchronously, and reading a missing file would end this set -e script.
: > "$work/coordinator.log"
"$bin/coordinator/sheaf-coordinator" --listen 127.0.0.1:0 --metrics-port 0 --lease-ttl 10s \
  --db "$work/jobs.db" --tokens "$work/tokens" \
  --model-root "$repo/models" --data-root "$repo/data" --output-root "$repo/runs" \
  2> "$work/coordinator.log" &
coordinator_pid=$!
port=
for _ in $(seq 1 100); do
  port=$(sed -n 's/.*serving on .*(port \([0-9]*\).*/\1/p' "$work/coordinator.log")
  [[ -n "$port" ]] && break
  kill -0 "$coordinator_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$port" ]]; then
  echo "demo: the coordinator did not start:" >&2
  cat "$work/coordinator.log" >&2
  exit 1
fi
addr=127.0.0.1:$port
echo "coordinator at $addr"
remote=(--addr "$addr" --token-file "$work/tenant.token")

# ---- A worker world of 2 ranks. OpenMPI over loopback only, allowed as
# root in a container; each rank trains on half of the cores.
echo "== starting a worker world of 2 ranks (mpirun)"
threads=$(( $(nproc) / 2 )); ((threads >= 1)) || threads=1
(
  export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
  export OMPI_MCA_plm_rsh_agent=false OMPI_MCA_rmaps_base_oversubscribe=1
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  exec mpirun --oversubscribe -np 2 "$bin/worker/sheaf-worker" \
    --coordinator "$addr" --token-file "$work/worker.token" \
    --model-root "$repo/models" --data-root "$repo/data" --output-root "$repo/runs" --once
) > "$work/worker.log" 2>&1 &
worker_pid=$!

# ---- The job: the example spec with paths relative to the coordinator's
# roots (models/, data/). Lists of languages cannot be --set item by item,
# so the paths are rewritten in a copy of the spec.
echo "== submitting examples/langadapt_tiny.yaml: LayRA, + nl, + pl, $steps steps each"
rm -rf runs/demo/demo-langadapt
sed -e 's#base_model: models/#base_model: #' -e 's#data/langadapt/#langadapt/#g' \
  examples/langadapt_tiny.yaml > "$work/langadapt.yaml"
id=$("$sheaf" submit "$work/langadapt.yaml" "${remote[@]}" --min-world 2 \
  --set output_dir=demo-langadapt --set langadapt.steps_per_language="$steps" \
  --set train.max_steps=$((2 * steps)) --set train.threads="$threads")
echo "job $id"

echo "== watching $id"
rc=0
"$sheaf" watch "$id" "${remote[@]}" || rc=$?
((rc <= 128)) || exit 130  # Ctrl-C
if ((rc != 0)); then
  echo "demo: the job did not succeed; the worker said:" >&2
  tail -20 "$work/worker.log" >&2
  exit 1
fi
echo "== sheaf status $id"
"$sheaf" status "$id" "${remote[@]}"

echo "== fetching the matrix and the adapters into $out"
rm -rf "$out"
for p in langadapt_matrix.md langadapt_matrix.json adapters summary.json; do
  "$sheaf" fetch "$id" -o "$out" --path "$p" "${remote[@]}"
done
wait "$worker_pid" 2>/dev/null || true  # --once: the world ends after the job.
worker_pid=
echo
cat "$out/langadapt_matrix.md"
grep -q '"val_loss/pl"' runs/demo/demo-langadapt/metrics.jsonl
echo "matrix: $out/langadapt_matrix.md; adapters: $out/adapters/{nl,pl}"
