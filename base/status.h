// Status helpers shared by every package: RETURN_IF_ERROR / ASSIGN_OR_RETURN
// in the style of absl-based codebases (absl itself does not ship them).
#ifndef SHEAF_BASE_STATUS_H_
#define SHEAF_BASE_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SHEAF_CONCAT_INNER_(a, b) a##b
#define SHEAF_CONCAT_(a, b) SHEAF_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` is not OK.
#define RETURN_IF_ERROR(expr)                                   \
  do {                                                          \
    const ::absl::Status sheaf_status_ = (expr);                \
    if (!sheaf_status_.ok()) return sheaf_status_;              \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` declares/assigns `x` from a StatusOr or
// returns its error.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(SHEAF_CONCAT_(sheaf_statusor_, __LINE__), lhs, rexpr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                           \
  if (!statusor.ok()) return statusor.status();      \
  lhs = std::move(statusor).value()

#endif  // SHEAF_BASE_STATUS_H_
