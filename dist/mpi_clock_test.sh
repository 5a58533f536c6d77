#!/usr/bin/env bash
# A 2-rank MpiCommunicator world idle for 14 s (liveness pings only, peer
# timeout 3 s) with both ranks' wall clocks 10 s ahead of the kernel's
# (libfaketime; CLOCK_MONOTONIC untouched). Abseil's timed waits sleep to an
# absolute CLOCK_REALTIME deadline computed from the process's clock, so
# there each wait overslept by 10 s: the idle progress threads sent no pings
# for 10 s and broke a healthy world at the peer timeout (what a real step
# of the wall clock back by 10 s does to a wait in progress). The progress
# thread's idle sleep is now monotonic (base/monotonic_sleep.h), and a
# collective's Wait measures its timeout on the steady clock.
set -euo pipefail
source "$(dirname "$0")/mpi_test_lib.sh" 2>/dev/null ||
  source "$TEST_SRCDIR/sheaf/dist/mpi_test_lib.sh"
source "$(dirname "$0")/../tests/skip_lib.sh" 2>/dev/null ||
  source "$TEST_SRCDIR/sheaf/tests/skip_lib.sh"
CHECK=$(find_runfile dist/mpi_collectives_check)
FAKETIME_LIB=
for p in /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1; do
  [[ -e $p ]] && FAKETIME_LIB=$p && break
done
[[ -n $FAKETIME_LIB ]] || skip_test "libfaketime is not installed (tools/setup.sh installs it)"

set +e
out=$(timeout --kill-after=10 120 "${MPIRUN[@]}" -np 2 env LD_PRELOAD="$FAKETIME_LIB" \
        FAKETIME=+10 FAKETIME_DONT_FAKE_MONOTONIC=1 \
        "$CHECK" --mode=idle --timeout_ms=14000 --peer_timeout_ms=3000 2>&1)
rc=$?
set -e
echo "$out"
if ((rc != 0)); then
  echo "FAIL: mpirun exited $rc: the idle world broke under a shifted wall clock" >&2
  exit 1
fi
healthy=$(grep -c "health OK; all-reduce right" <<<"$out" || true)
if ((healthy != 2)); then
  echo "FAIL: $healthy of 2 ranks report a healthy world and a right all-reduce" >&2
  exit 1
fi
echo "PASS: both ranks healthy after 14 s idle with their clocks 10 s ahead (peer timeout 3 s)"
