#!/usr/bin/env bash
# A rank dies before a collective; the others must not hang.
#
# Under mpirun -np 3, rank 2 _exit(1)s after a warm-up all-reduce and a
# barrier; ranks 0 and 1 then issue an all-reduce and Wait(5 s).
#
# Case 1, mpirun's default (orte_abort_on_non_zero_status=1): when rank 2
#   exits non-zero, mpirun kills ranks 0 and 1. On this machine that takes
#   about 1 s, before their 5 s Wait expires, so they print nothing and
#   write no status file; mpirun exits non-zero and names rank 2. We assert
#   the non-zero exit and that the run ended within 30 s. If the survivors
#   did get to run out their Wait first (a very slow machine), their status
#   files must then say 42 (checked too).
# Case 2, orte_abort_on_non_zero_status=0 (mpirun leaves the survivors
#   alone, as a launcher without kill-on-failure would): the survivors'
#   progress threads poll forever (the tcp BTL reports no error for the dead
#   peer), so only our timeout ends it: Wait returns DeadlineExceeded after
#   5 s, the next call is Unavailable at once, the communicator's destructor
#   skips MPI_Finalize, and each survivor exits with 42, which it also
#   writes to $dir/rank<r> because mpirun's exit status does not carry it
#   (OpenMPI 4.1.4's mpirun exits 0 in this case although its ranks exited
#   1 and 42). We
#   assert both status files say 42, the clear message was printed, and the
#   run ended within 30 s.
# Case 3, as case 2 but Wait(60 s) and a 3 s watchdog (Options::timeout):
#   the watchdog must fail the collective after 3 s without Wait's help.
set -euo pipefail
source "$(dirname "$0")/mpi_test_lib.sh" 2>/dev/null ||
  source "$TEST_SRCDIR/sheaf/dist/mpi_test_lib.sh"
CHECK=$(find_runfile dist/mpi_collectives_check)
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
# Only a hang-stopper: each case must end through its own timeout (5 s, or
# the 3 s watchdog under a 60 s Wait), which expect_detected checks from the
# message; 100 s leaves mpirun's start-up on a loaded 2-core machine room and
# stays below the 120 s kill.
LIMIT_S=100

# run_case NAME EXTRA_MPIRUN_ARGS...; check_args: extra flags for the check.
# Sets rc, elapsed, out.
check_args=(--timeout_ms=5000)
run_case() {
  local name="$1"
  shift
  local dir="$TMP/$name"
  rm -rf "$dir"
  mkdir -p "$dir"
  local start=$SECONDS
  set +e
  out=$(timeout --kill-after=10 120 "${MPIRUN[@]}" -np 3 "$@" "$CHECK" --mode=dead_rank \
          --dead_rank=2 --status_dir="$dir" "${check_args[@]}" 2>&1)
  rc=$?
  set -e
  elapsed=$((SECONDS - start))
  echo "=== $name: mpirun exit $rc after ${elapsed}s"
  echo "$out"
  if ((elapsed >= LIMIT_S)); then
    echo "FAIL: $name took ${elapsed}s (limit ${LIMIT_S}s): something hung" >&2
    exit 1
  fi
}

status_of() { cat "$1/rank$2" 2>/dev/null || echo none; }

# Case 1: mpirun kills the survivors.
run_case default
if ((rc == 0)); then
  echo "FAIL: default: mpirun exited 0 although rank 2 died" >&2
  exit 1
fi
for r in 0 1; do
  s=$(status_of "$TMP/default" "$r")
  if [[ "$s" != none && "$s" != 42 ]]; then
    echo "FAIL: default: rank $r wrote status $s, want 42 (or none: killed by mpirun)" >&2
    exit 1
  fi
  echo "default: rank $r status: $s (none = killed by mpirun before its Wait expired)"
done

# Cases 2 and 3: the survivors detect the dead peer themselves.
expect_detected() {  # expect_detected NAME MESSAGE_REGEX
  local name="$1" message="$2"
  for r in 0 1; do
    s=$(status_of "$TMP/$name" "$r")
    if [[ "$s" != 42 ]]; then
      echo "FAIL: $name: rank $r status '$s', want 42 (DeadlineExceeded then Unavailable)" >&2
      exit 1
    fi
  done
  # The message we see is DeadlineExceeded's; an MPI error reported by the
  # transport instead would read "...: MPI_Test failed: ..." and is accepted.
  local pattern="collective all_reduce #2 \(adapter_grad\)( $message|: MPI_Test failed)"
  if ! grep -qE "$pattern" <<<"$out"; then
    echo "FAIL: $name: the survivors did not print the clear error message" >&2
    exit 1
  fi
  if ! grep -q "rank 0: exiting with 42" <<<"$out" ||
     ! grep -q "rank 1: exiting with 42" <<<"$out"; then
    echo "FAIL: $name: a survivor did not get past destroying its communicator" >&2
    exit 1
  fi
}

run_case no_abort --mca orte_abort_on_non_zero_status 0
expect_detected no_abort "did not complete within 5s: a peer rank may have died"

check_args=(--timeout_ms=60000 --watchdog_ms=3000)
run_case watchdog --mca orte_abort_on_non_zero_status 0
expect_detected watchdog "did not complete within 3s: a peer rank may have died"

# Cases 4 and 5, liveness (Options::peer_timeout = 2 s; Wait and watchdog at
# 60 s, so only liveness can end them in time): rank 2 dies (case 4) or
# stops itself with SIGSTOP, a hung rank that no launcher notices (case 5).
# Rank 0 stops hearing rank 2's pings and breaks within ~2 s ("rank 2 has
# not answered liveness pings"); rank 1 hears of it when rank 0's pings stop
# ("rank 0 has not answered"). Each must end within 20 s, not 60.
liveness_case() {  # liveness_case NAME DEAD_HOW
  check_args=(--timeout_ms=60000 --watchdog_ms=60000 --peer_timeout_ms=2000 "--dead_how=$2")
  run_case "$1" --mca orte_abort_on_non_zero_status 0
  expect_detected "$1" "failed: rank [02] has not answered liveness pings for [0-9.]+m?s \\(peer_timeout 2s\\): it died or hangs"
  if ! grep -qE "rank 0: all_reduce after [0-9]\.[0-9]+s: UNAVAILABLE: .*rank 2 has not answered" <<<"$out"; then
    echo "FAIL: $1: rank 0 did not name rank 2 within 10 s" >&2
    exit 1
  fi
  if ((elapsed >= 40)); then
    echo "FAIL: $1: took ${elapsed}s; liveness should end it in a few seconds" >&2
    exit 1
  fi
}
liveness_case liveness_dead exit
liveness_case liveness_stopped stop

# Case 6, bounded set-up: rank 1 of 3 starts 30 s late; the others give up
# after 3 s (Options::init_timeout) with DeadlineExceeded, having logged each
# second what they wait for (in MPI_Init_thread, OpenMPI's start-up
# exchange, or in our hello exchange, which names rank 1).
late_case() {
  local dir="$TMP/late"
  rm -rf "$dir"
  mkdir -p "$dir"
  local start=$SECONDS
  set +e
  out=$(timeout --kill-after=10 120 "${MPIRUN[@]}" -np 3 "$CHECK" --mode=late_rank --dead_rank=1 \
          --watchdog_ms=30000 --timeout_ms=3000 --status_dir="$dir" 2>&1)
  rc=$?
  set -e
  elapsed=$((SECONDS - start))
  echo "=== late: mpirun exit $rc after ${elapsed}s"
  echo "$out"
  for r in 0 2; do
    s=$(status_of "$dir" "$r")
    if [[ "$s" != 43 ]]; then
      echo "FAIL: late: rank $r status '$s', want 43 (set-up timed out)" >&2
      exit 1
    fi
  done
  if ! grep -qE "rank 0: set-up after [0-9]\.[0-9]+s: DEADLINE_EXCEEDED: .*(did not finish within 3s|has not heard from rank\(s\) 1 of 3)" <<<"$out"; then
    echo "FAIL: late: rank 0 did not time out within 10 s naming what it waited for" >&2
    exit 1
  fi
  if ! grep -q "set-up has waited 1s: " <<<"$out"; then
    echo "FAIL: late: no progress line while waiting" >&2
    exit 1
  fi
  if ((elapsed >= 28)); then
    echo "FAIL: late: took ${elapsed}s; the 3 s bound should end it before rank 1 arrives" >&2
    exit 1
  fi
}
late_case
echo "PASS"
