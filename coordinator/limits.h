// Size and shape limits on what clients send, checked before anything else
// looks at a request, so that no request can make the coordinator do
// unbounded work or store unbounded data.
#ifndef SHEAF_COORDINATOR_LIMITS_H_
#define SHEAF_COORDINATOR_LIMITS_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

namespace sheaf::coordinator {

struct RequestLimits {
  // A JobSpec, serialized.
  size_t max_spec_bytes = 64 * 1024;
  // Any string field (paths included).
  size_t max_string_bytes = 4096;
  // Entries of any repeated field.
  int max_repeated = 1024;
  // Heartbeat metrics: entries and name length.
  int max_metrics = 64;
  size_t max_metric_name_bytes = 64;
  // Identifiers in requests (job, lease and world ids, page tokens).
  size_t max_id_bytes = 128;
};

// True when `s` is well-formed UTF-8 (no overlong forms, no surrogates,
// nothing above U+10FFFF).
bool IsValidUtf8(absl::string_view s);

// Checks `message` (a JobSpec) against `limits`; field paths in errors are
// prefixed with `root` (may be empty, as the spec's keys are in YAML):
// its serialized size, no unknown fields (a job kind or field this
// coordinator does not know), and every string (valid UTF-8, no NUL byte,
// at most max_string_bytes) and repeated field, recursively. Every problem
// is reported as `field.path: reason`, joined by "; ". kInvalidArgument.
absl::Status CheckMessageLimits(const google::protobuf::Message& message,
                                absl::string_view root,
                                const RequestLimits& limits);

// A free-text or identifier field of a request: valid UTF-8, no NUL, at
// most `max_bytes`. kInvalidArgument naming `field`.
absl::Status CheckString(absl::string_view field, absl::string_view value,
                         size_t max_bytes);

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_LIMITS_H_
