# Shared by the mpirun-based tests: finds runfiles and runs mpirun with
# settings that work on a single machine, inside Bazel's linux-sandbox and
# as root.

# $TEST_SRCDIR/<workspace>/... under `bazel test`, or next to the script.
find_runfile() {
  local rel="$1"
  for base in "${TEST_SRCDIR:-}/sheaf" "${RUNFILES_DIR:-}/sheaf" "$0.runfiles/sheaf" \
              "$(dirname "$0")/.."; do
    if [[ -e "$base/$rel" ]]; then
      echo "$base/$rel"
      return 0
    fi
  done
  echo "$0: cannot find runfile $rel" >&2
  return 1
}

# OpenMPI settings, as environment so that they reach every rank:
#  - btl self,tcp over loopback only: no shared-memory segments (vader) to
#    leak or collide in a sandbox's /dev/shm, no other interfaces (a VM's
#    bridges can make TCP wire-up hang);
#  - oob (mpirun <-> ranks) over loopback too;
#  - no rsh agent: everything is local, so nothing should ever be ssh'ed;
#  - session directories under the test's own tmp.
export OMPI_MCA_btl=self,tcp
export OMPI_MCA_btl_tcp_if_include=lo
export OMPI_MCA_oob_tcp_if_include=lo
export OMPI_MCA_plm_rsh_agent=false
export OMPI_MCA_orte_tmpdir_base="${TEST_TMPDIR:-${TMPDIR:-/tmp}}"
export OMPI_MCA_rmaps_base_oversubscribe=1
# Root in a container: allow it (mpirun refuses root otherwise).
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# mpirun, oversubscribed (2 cores here), as an array so that `timeout`
# can run it: "${MPIRUN[@]}" -np N program args.
MPIRUN=(mpirun --oversubscribe --allow-run-as-root)
