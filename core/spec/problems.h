// Collects `key.path: reason` lines so that one validation run reports
// every problem of a spec (core/spec/validate.h), and the range checks
// every section uses, with one wording for each.
#ifndef SHEAF_CORE_SPEC_PROBLEMS_H_
#define SHEAF_CORE_SPEC_PROBLEMS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sheaf {

class Problems {
 public:
  // `path` empty: a problem of the whole spec.
  void Add(const std::string& path, const std::string& reason) {
    list_.push_back(path.empty() ? reason : absl::StrCat(path, ": ", reason));
  }

  // `value` >= `min`.
  void AtLeast(const std::string& path, int64_t value, int64_t min) {
    if (value < min) {
      Add(path, absl::StrCat("must be >= ", min, ", got ", value));
    }
  }

  // `value` <= `max` (the upper bounds of core/spec/limits.h).
  void AtMost(const std::string& path, int64_t value, int64_t max) {
    if (value > max) {
      Add(path, absl::StrCat("must be <= ", max, ", got ", value));
    }
  }

  // Finite and <= `max`; written as !(value <= max) so that NaN fails too
  // (the lower bound is the caller's, with its own wording).
  void FiniteAtMost(const std::string& path, double value, double max) {
    if (!(value <= max)) {
      Add(path, absl::StrCat("must be <= ", max, ", got ", value));
    }
  }

  // Written as !(value > 0) so that NaN fails too.
  void Positive(const std::string& path, double value) {
    if (!(value > 0)) Add(path, absl::StrCat("must be > 0, got ", value));
  }

  void NonNegative(const std::string& path, double value) {
    if (!(value >= 0)) Add(path, absl::StrCat("must be >= 0, got ", value));
  }

  // [0, 1), or [0, 1] when `one_allowed`.
  void Fraction(const std::string& path, double value, bool one_allowed) {
    if (!(value >= 0 && (value < 1 || (one_allowed && value == 1)))) {
      Add(path, absl::StrCat("must be in [0, 1", one_allowed ? "]" : ")",
                             ", got ", value));
    }
  }

  bool empty() const { return list_.empty(); }
  const std::vector<std::string>& list() const { return list_; }

  // OK when nothing was found, else `code` with every line joined by "; ".
  absl::Status ToStatus(absl::StatusCode code) const {
    if (list_.empty()) return absl::OkStatus();
    return absl::Status(code, absl::StrJoin(list_, "; "));
  }

 private:
  std::vector<std::string> list_;
};

}  // namespace sheaf

#endif  // SHEAF_CORE_SPEC_PROBLEMS_H_
