// Closed-form checks of the typed collectives (communicator.h) that every
// backend must pass, shared by thread_communicator_test (threads) and
// mpi_collectives_check (mpirun). Every rank of a world calls it, with the
// same arguments, in the same collective order: it issues the collectives.
//
// Expectations are closed forms, as in c10d's tests: rank r contributes
// r + f(i), so a sum over N ranks is N(N-1)/2 + N·f(i). The bf16 values are
// small multiples of 1/4 whose every partial sum (in any combine order, up
// to N = 4) is exactly representable in bf16, so every backend must be exact
// whatever its accumulation order and rounding steps; the averages are exact
// too ((N-1)/2 + f(i), IEEE division being correctly rounded). Also checks
// the byte counters (DTypeBytes of the dtype, the algorithm factors of
// communicator.h), NF4 gathers in whole blocks, the dtype errors (which are
// reported before any rendezvous, so one rank alone may make them), and that
// host-memory backends answer WaitOnStream with Unimplemented.
#ifndef SHEAF_DIST_DTYPE_COLLECTIVES_CHECK_H_
#define SHEAF_DIST_DTYPE_COLLECTIVES_CHECK_H_

#include <chrono>
#include <string>
#include <vector>

#include "dist/communicator.h"

namespace sheaf::dist {

struct DTypeCheckResult {
  int checks = 0;
  std::vector<std::string> failures;  // empty when all passed
};

// Runs every check on `comm` (stats are reset before and after each
// collective). `wait` bounds each Wait; `host_memory` says whether
// WaitOnStream must be Unimplemented.
DTypeCheckResult CheckDTypeCollectives(Communicator& comm, std::chrono::milliseconds wait,
                                       bool host_memory = true);

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_DTYPE_COLLECTIVES_CHECK_H_
