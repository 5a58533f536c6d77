#!/usr/bin/env bash
# The real binaries end to end: `sheaf` against a `sheaf-coordinator`
# process. What only a process shows: `id=$(sheaf submit ...)` captures
# exactly the id, exit codes come out of main, --help documents them, and
# SHEAF_ADDR / SHEAF_TOKEN are read from the environment. (cli/remote_test.cc
# covers the commands in depth, in-process.)
set -euo pipefail
find_runfile() {
  for base in "${TEST_SRCDIR:-}/sheaf" "$(dirname "$0")/.."; do
    [[ -e "$base/$1" ]] && { echo "$base/$1"; return 0; }
  done
  echo "cannot find $1" >&2; return 1
}
sheaf=$(find_runfile cli/sheaf)
coordinator=$(find_runfile coordinator/sheaf-coordinator)
worker=$(find_runfile worker/sheaf-worker)
work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/remote.XXXXXX")
fail() { echo "FAIL: $*"; exit 1; }

mkdir -p "$work/models/tiny" "$work/data" "$work/out"
echo "hallo welt" > "$work/data/corpus.txt"
tenant_token=tenant-token-0123456789
cat > "$work/tokens" <<EOT
$tenant_token alice
worker-token-0123456789 @worker
EOT
# Created before the coordinator starts: the background redirection opens it
# asynchronously, and reading a missing file would end this set -e script.
: > "$work/coordinator.log"
"$coordinator" --listen 127.0.0.1:0 --metrics-port 0 --db "$work/jobs.db" \
  --tokens "$work/tokens" --model-root "$work/models" --data-root "$work/data" \
  --output-root "$work/out" 2> "$work/coordinator.log" &
coordinator_pid=$!
trap 'kill $coordinator_pid 2>/dev/null; wait $coordinator_pid 2>/dev/null; rm -rf "$work"' EXIT
port=
for _ in $(seq 1 100); do
  port=$(sed -n 's/.*serving on .*(port \([0-9]*\).*/\1/p' "$work/coordinator.log")
  [[ -n "$port" ]] && break
  kill -0 $coordinator_pid 2>/dev/null || { cat "$work/coordinator.log"; fail "coordinator exited"; }
  sleep 0.1
done
[[ -n "$port" ]] || fail "the coordinator did not say its port"
export SHEAF_ADDR=127.0.0.1:$port SHEAF_TOKEN=$tenant_token

# --help documents every exit code.
help=$("$sheaf" --help)
for line in "0    ok" "1    failed" "2    bad usage" "3    cannot reach the coordinator" \
            "4    no such job" "submit JOB.yaml" "fetch ID -o DIR"; do
  grep -qF -- "$line" <<<"$help" || fail "--help lacks '$line'"
done

cat > "$work/job.yaml" <<EOT
name: remote test
base_model: tiny
data: {train: [corpus.txt], seq_len: 32}
train: {max_steps: 10}
lora:
EOT
id=$("$sheaf" submit "$work/job.yaml" --priority 3 2> "$work/submit.err") ||
  fail "submit: $(cat "$work/submit.err")"
[[ "$id" =~ ^job-[0-9a-f]{16}$ ]] || fail "submit printed '$id', want only a job id"
# No world has registered yet: stderr holds exactly the waiting warning.
want_err="sheaf: warning: job $id accepted, but no world has been seen in the last 3m (none registered, or all gone); the job waits for one"
[[ "$(cat "$work/submit.err")" == "$want_err" ]] ||
  fail "submit stderr: '$(cat "$work/submit.err")', want the waiting warning alone"
"$sheaf" status "$id" | grep -q "^state: *PENDING$" || fail "status of $id"
"$sheaf" list --output json | /usr/bin/python3 -c '
import json, sys
jobs = [json.loads(line) for line in sys.stdin]
assert len(jobs) == 1 and jobs[0]["id"] == sys.argv[1], jobs
assert jobs[0]["state"] == "JOB_STATE_PENDING" and jobs[0]["priority"] == 3, jobs[0]
' "$id" || fail "list --output json"
echo "submit/status/list: OK ($id)"

expect_exit() {  # code command...
  local want=$1; shift
  set +e; err=$("$@" 2>&1 >/dev/null); rc=$?; set -e
  ((rc == want)) || fail "$*: exit $rc, want $want: $err"
  (($(wc -l <<<"$err") == 1)) || fail "$*: not one line: $err"
  echo "exit $rc: $err"
}
expect_exit 4 "$sheaf" status job-0000000000000000
expect_exit 3 "$sheaf" list --token wrong-token-0123456789
expect_exit 3 "$sheaf" list --addr 127.0.0.1:1
expect_exit 2 "$sheaf" list --limit 0
expect_exit 2 "$sheaf" submit "$work/job.yaml" --set optimizer.lr=-1
"$sheaf" cancel "$id" | grep -q "CANCELLED" || fail "cancel"
expect_exit 1 "$sheaf" watch "$id"
echo "exit codes: OK"

# Flag values are checked, never read as 0 (base/flags.h), before anything
# is loaded.
usage_error() {  # message-fragment command...
  local want=$1; shift
  set +e; err=$("$@" 2>&1 >/dev/null); rc=$?; set -e
  ((rc == 2)) || fail "$*: exit $rc, want 2: $err"
  grep -qF -- "$want" <<<"$err" || fail "$*: no '$want' in: $err"
  echo "exit 2: $(head -1 <<<"$err")"
}
usage_error "--max-seqs: must be an integer" "$sheaf" eval --model "$work/models/tiny" --data "$work/data" --max-seqs abc
usage_error "--seq-len: must be an integer" "$sheaf" eval --model "$work/models/tiny" --data "$work/data" --seq-len 1
usage_error "--memory: not a byte size" "$sheaf" submit "$work/job.yaml" --memory 16GB
usage_error "--memory-bytes: not a byte size" "$worker" --coordinator "$SHEAF_ADDR" \
  --model-root "$work/models" --data-root "$work/data" --output-root "$work/out" \
  --memory-bytes 16GB
echo "flag values: OK"

# One token-file reader: a comment line and a tenant after the token work for
# `sheaf` and `sheaf-worker` alike (the worker used to take the whole file).
printf '# alice, for the remote test\n%s alice\n' "$tenant_token" > "$work/tenant.token"
env -u SHEAF_TOKEN "$sheaf" list --token-file "$work/tenant.token" >/dev/null 2>&1 ||
  fail "sheaf --token-file with a comment line"
printf '# the worker token\r\nworker-token-0123456789 @worker\r\n' > "$work/worker.token"
run_worker() {  # token-file; one world that idles out at once (no job is pending)
  "$worker" --coordinator "$SHEAF_ADDR" --token-file "$1" --model-root "$work/models" \
    --data-root "$work/data" --output-root "$work/out" --memory-bytes 16G \
    --idle-exit-s 1 --acquire-wait-s 1
}
run_worker "$work/worker.token" > "$work/worker.log" 2>&1 ||
  fail "sheaf-worker --token-file with a comment line: $(cat "$work/worker.log")"
printf '# the worker token\nwrong-token-0123456789\n' > "$work/wrong.token"
set +e; run_worker "$work/wrong.token" > "$work/worker.log" 2>&1; rc=$?; set -e
((rc == 1)) || fail "sheaf-worker with a wrong token: exit $rc, want 1: $(cat "$work/worker.log")"
echo "token files: OK"
