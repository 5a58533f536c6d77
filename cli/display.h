// How the `sheaf` client commands show jobs and progress: the progress bar
// (a terminal) and progress lines (a pipe), the `sheaf list` table, the
// `sheaf status` details, and JSON lines for `--output json`. Pure
// functions of their arguments, so tests can compare whole strings.
#ifndef SHEAF_CLI_DISPLAY_H_
#define SHEAF_CLI_DISPLAY_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "proto/coordinator.pb.h"

namespace sheaf::cli {

// "RUNNING" for JOB_STATE_RUNNING; "UNKNOWN(9)" for values this build does
// not know.
std::string StateName(proto::JobState state);
bool IsTerminalState(proto::JobState state);

// Seconds as "45s", "12m05s", "3h02m" (rounded down); "?" when negative or
// not finite.
std::string FormatDuration(double seconds);

// One line, for logs and pipes:
//   step 120/150 loss 1.2345 val_loss 1.4567 tokens/s 2345 eta 1m12s
// (val_loss only once an evaluation happened; total and eta only when known).
std::string FormatProgressLine(const proto::Progress& progress);

// One terminal line, `width` characters of bar:
//   [########>           ] 120/150  80%  loss 1.2345  val 1.4567  2345 tok/s  ETA 1m12s
std::string FormatProgressBar(const proto::Progress& progress, int width = 24);

// A state change for `sheaf watch`:
//   job-0123456789abcdef: PENDING -> RUNNING (attempt 1, world world-ab12)
// and ": REASON" when there is one. A first event (from UNSPECIFIED) reads
// "job-...: RUNNING (attempt 1, ...)".
std::string FormatStateChange(absl::string_view job_id, const proto::StateChange& change);

// The `sheaf list` table: a header, then one row per job. Times in `zone`.
std::string FormatJobTableHeader();
std::string FormatJobTableRow(const proto::Job& job, absl::TimeZone zone);

// `sheaf status`: one "key: value" line per field that is set.
std::string FormatJobDetails(const proto::Job& job, absl::TimeZone zone);

// `message` as one line of JSON (protobuf's JSON mapping: field names as in
// the .proto file, enums by name, 64-bit integers as strings, fields with
// their default values included), without the trailing newline.
std::string ToJsonLine(const google::protobuf::Message& message);

}  // namespace sheaf::cli

#endif  // SHEAF_CLI_DISPLAY_H_
