#!/usr/bin/env bash
# Runs dist/mpi_collectives_check under mpirun for N = 1, 2, 3, 4: every
# collective of MpiCommunicator against closed-form expectations and the
# byte counters (see mpi_collectives_check.cc); then dist::World's factory.
set -euo pipefail
source "$(dirname "$0")/mpi_test_lib.sh" 2>/dev/null ||
  source "$TEST_SRCDIR/sheaf/dist/mpi_test_lib.sh"
CHECK=$(find_runfile dist/mpi_collectives_check)
echo "# OpenMPI session directories under $OMPI_MCA_orte_tmpdir_base"

for n in 1 2 3 4; do
  echo "=== mpirun -np $n mpi_collectives_check"
  start=$SECONDS
  # timeout: a hang must fail this run, not eat the whole test's budget.
  if ! timeout --kill-after=10 120 "${MPIRUN[@]}" -np "$n" "$CHECK"; then
    echo "FAIL: mpi_collectives_check with N=$n" >&2
    exit 1
  fi
  echo "=== N=$n passed in $((SECONDS - start)) s"
done

# dist::World from the launcher's environment (N = 1 is a local world).
for n in 1 2; do
  echo "=== mpirun -np $n mpi_collectives_check --mode=world"
  if ! timeout --kill-after=10 120 "${MPIRUN[@]}" -np "$n" "$CHECK" --mode=world; then
    echo "FAIL: mpi_collectives_check --mode=world with N=$n" >&2
    exit 1
  fi
done
