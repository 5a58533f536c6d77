#!/usr/bin/env bash
# The second demo (LoRAM, issue 12): the same setup as tools/demo.sh — a
# coordinator, a worker world of 2 MPI ranks, the `sheaf` CLI — running a
# short `loram` job from examples/loram_tiny.yaml: prune models/tiny-en
# (p = 0.5, Taylor), align the pruned model on English, train LoRA on it over
# German, recover the adapter to the full model and evaluate it there. Then
# it fetches the recovered adapter and loram_report.json and prints the
# losses of the base, of the full model with the recovered adapter, and of
# the pruned model with its own adapter ("infer small").
#
#   tools/demo_loram.sh [--steps N] [--out DIR]
#
# --out: where the adapter and the report are fetched to (default
# runs/demo-loram-de); the job writes under runs/demo/demo-loram-de.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
steps=40
out=runs/demo-loram-de
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
echo "== submitting examples/loram_tiny.yaml: LoRAM (prune, align, LoRA on German, recover) for $steps steps"
rm -rf runs/demo/demo-loram-de
id=$("$sheaf" submit examples/loram_tiny.yaml "${remote[@]}" --min-world 2 \
  --set base_model=tiny-en --set 'data.train=[manpages/de]' --set output_dir=demo-loram-de \
  --set 'loram.prune.calibration.data=[manpages/en]' --set 'loram.align.data=[manpages/en]' \
  --set 'loram.eval.data=[manpages/en]' --set train.max_steps="$steps" \
  --set train.threads="$threads")
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

echo "== fetching the recovered adapter and the report into $out"
rm -rf "$out"
"$sheaf" fetch "$id" -o "$out" --path adapter "${remote[@]}"
"$sheaf" fetch "$id" -o "$out" --path loram_report.json "${remote[@]}"
wait "$worker_pid" 2>/dev/null || true  # --once: the world ends after the job.
worker_pid=

python3 - "$out/loram_report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
e = r["eval"]
print(f"\nparameters: full {r['full_params']:,}, pruned {r['small_params']:,} ({r['param_reduction']:.2f}x)")
print("loss (nats/byte)               German (held out)   English")
for k, label in [("base", "base (full, no adapter)"), ("full_recovered", "full + recovered adapter"),
                 ("small_adapter", "pruned + pruned adapter")]:
    sets = e[k]
    en = [s for s in sets if s != "val"]
    print(f"{label:30s} {sets['val']['loss']:17.4f}   {sets[en[0]]['loss'] if en else float('nan'):7.4f}")
print("peak RSS per phase (MiB):", {p: round(v["peak_rss_bytes"] / 2**20) for p, v in r["phases"].items()})
ok = e["full_recovered"]["val"]["loss"] < e["base"]["val"]["loss"]
print("German loss of the full model went down with the recovered adapter:", "OK" if ok else "NO")
sys.exit(0 if ok else 1)
PY
echo "recovered adapter (PEFT, for models/tiny-en): $out/adapter; report: $out/loram_report.json"
