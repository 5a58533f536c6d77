// Writing a small output file (summary.json, spec.yaml, a rewritten
// metrics.jsonl) so that a reader never sees half of it. Local to jobs/
// until base/'s WriteFileAtomically lands (then this goes).
#ifndef SHEAF_JOBS_FILE_UTIL_H_
#define SHEAF_JOBS_FILE_UTIL_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace sheaf::jobs {

// Writes `contents` to `path`.tmp.<pid>, then renames it over `path`.
// Internal naming the path on failure (the temporary file is removed).
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

}  // namespace sheaf::jobs

#endif  // SHEAF_JOBS_FILE_UTIL_H_
