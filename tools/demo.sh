#!/usr/bin/env bash
# The main job end to end, as a cluster runs it: a coordinator (SQLite in a
# temporary directory; roots: the repository's models/ and data/, and runs/),
# a worker world of 2 MPI ranks (`sheaf-worker` under mpirun), and the
# `sheaf` CLI, which submits examples/lora_tiny.yaml (LoRA on the shipped
# English byte-level model models/tiny-en, German data), watches it to the
# end and fetches the adapter. Then it prints the validation perplexity of
# the base and of the adapted model on German (held-out pages, from the
# job's metrics) and on English (`sheaf eval`, to show what the adapter
# costs there).
#
#   tools/demo.sh [--steps N] [--out DIR]
#
# --out is where the adapter and the metrics are fetched to (default
# runs/demo-lora-de); the job itself writes under runs/demo/ (runs/TENANT/
# on the coordinator's output root). Installs what is missing
# (tools/setup.sh), builds, prepares the man-page corpora (cached under
# data/), trains for a few minutes on all cores. Everything it starts is
# stopped when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
steps=150
out=runs/demo-lora-de
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

echo "== preparing corpora (German and English manual pages)"
tools/prepare_data.sh de en

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

# ---- The job: the example spec, with paths relative to the coordinator's
# roots (models/, data/; the output under runs/demo/).
echo "== submitting examples/lora_tiny.yaml: LoRA on German for $steps steps"
rm -rf runs/demo/demo-lora-de
id=$("$sheaf" submit examples/lora_tiny.yaml "${remote[@]}" --min-world 2 \
  --set base_model=tiny-en --set 'data.train=[manpages/de]' --set output_dir=demo-lora-de \
  --set train.max_steps="$steps" --set train.eval_every=50 --set train.eval_batches=12 \
  --set train.checkpoint_every=50 --set train.threads="$threads")
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

echo "== fetching the adapter and the metrics into $out"
rm -rf "$out"
"$sheaf" fetch "$id" -o "$out" --path adapter "${remote[@]}"
"$sheaf" fetch "$id" -o "$out" --path metrics.jsonl "${remote[@]}"
wait "$worker_pid" 2>/dev/null || true  # --once: the world ends after the job.
worker_pid=

# German: the job's held-out split, before training (step 0) and after (the
# last evaluation), from metrics.jsonl.
ppls=$(grep -o '"val_ppl": [0-9.]*' "$out/metrics.jsonl" | awk '{print $2}')
de_base=$(printf '%.2f' "$(head -1 <<<"$ppls")")
de_lora=$(printf '%.2f' "$(tail -1 <<<"$ppls")")

eval_ppl() {  # model_dir data_dir [adapter_dir]
  local args=(eval --model "$1" --data "$2" --seq-len 256 --max-seqs 96)
  [[ -n "${3:-}" ]] && args+=(--adapter "$3")
  "$sheaf" "${args[@]}" | awk '{print $4}'
}
echo "== evaluating on English"
en_base=$(printf "%.3f" "$(eval_ppl models/tiny-en data/manpages/en)")
en_lora=$(printf "%.3f" "$(eval_ppl models/tiny-en data/manpages/en "$out/adapter")")

echo
echo "perplexity (bytes)    base (tiny-en)   + German LoRA"
printf "German (held out)     %14s   %13s\n" "$de_base" "$de_lora"
printf "English               %14s   %13s\n" "$en_base" "$en_lora"
echo
echo "adapter: $out/adapter (PEFT format); metrics: $out/metrics.jsonl"
echo "the job's own output (train.log, checkpoints, spec.yaml): runs/demo/demo-lora-de"
if awk -v a="$de_lora" -v b="$de_base" 'BEGIN {exit !(a < b)}'; then
  echo "German perplexity went down: OK"
else
  echo "German perplexity did not go down" >&2
  exit 1
fi
