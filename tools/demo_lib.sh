# Shared by tools/demo*.sh (sourced from the repository root, with `repo`
# set): the build, and a coordinator + 2-rank worker world on loopback.

# Installs what is missing and builds the three binaries; sets `bazel`,
# `bin` and `sheaf`.
demo_build() {
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
}

# Starts a coordinator (SQLite in a temporary `work` directory; roots: the
# repository's models/, data/ and runs/) and a worker world of 2 ranks under
# mpirun (--once), both stopped when the script exits. Sets `work`, `addr`,
# `remote` (the CLI's --addr/--token-file), `coordinator_pid`, `worker_pid`.
demo_start_cluster() {
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
}
