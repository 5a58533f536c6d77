// Value parsers of the `sheaf` client commands that know the coordinator's
// protos. The flag parser and the generic value parsers (integers, byte
// sizes) every program shares are in base/flags.h.
//
// Every error is kInvalidArgument with a message that names the flag, ready
// to be shown after "sheaf: ".
#ifndef SHEAF_CLI_ARGS_H_
#define SHEAF_CLI_ARGS_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/coordinator.pb.h"

namespace sheaf::cli {

// A job state by name in any case, with or without the JOB_STATE_ prefix
// ("running", "RUNNING", "JOB_STATE_RUNNING"). kInvalidArgument listing the
// names otherwise.
absl::StatusOr<proto::JobState> ParseJobState(absl::string_view value);

}  // namespace sheaf::cli

#endif  // SHEAF_CLI_ARGS_H_
