#!/usr/bin/env bash
# Re-runs issue 9's attacks on real processes (tests/attacks.cc): a
# coordinator, MPI worker worlds and the CLI on loopback, attacked at the
# issue's scale; prints each attack's counts and a Markdown table, exits 1
# when a promise did not hold. About 10 minutes on 2 cores; not part of
# tools/test.sh (each item has its own test there).
#
#   tools/attacks.sh                 every attack
#   tools/attacks.sh symlinks fetch  some (bounds symlinks swap clock outage
#                                    fetch configs small kill_loop)
#
# Work files go to ${SHEAF_ATTACK_DIR:-/tmp/sheaf-attacks} (kept: the
# processes' logs are there).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
tools/setup.sh
bazel build //tests:attacks 2>&1 | grep -vE 'linux-sandbox' | tail -1
bin=$(bazel info bazel-bin 2>/dev/null)
dir=${SHEAF_ATTACK_DIR:-/tmp/sheaf-attacks}
mkdir -p "$dir"
export TEST_TMPDIR=$dir
export RUNFILES_DIR=$bin/tests/attacks.runfiles
exec "$bin/tests/attacks" "$@"
