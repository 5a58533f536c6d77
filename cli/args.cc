#include "cli/args.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sheaf::cli {

absl::StatusOr<proto::JobState> ParseJobState(absl::string_view value) {
  std::string upper = absl::AsciiStrToUpper(value);
  if (!absl::StartsWith(upper, "JOB_STATE_")) upper = "JOB_STATE_" + upper;
  proto::JobState state = proto::JOB_STATE_UNSPECIFIED;
  if (upper != "JOB_STATE_UNSPECIFIED" && proto::JobState_Parse(upper, &state)) {
    return state;
  }
  std::vector<std::string> names;
  for (int i = proto::JobState_MIN + 1; i <= proto::JobState_MAX; ++i) {
    if (!proto::JobState_IsValid(i)) continue;
    names.push_back(
        absl::AsciiStrToLower(proto::JobState_Name(static_cast<proto::JobState>(i)).substr(10)));
  }
  return absl::InvalidArgumentError(absl::StrCat("--state: unknown state '", value, "' (one of ",
                                                 absl::StrJoin(names, ", "), ")"));
}

}  // namespace sheaf::cli
