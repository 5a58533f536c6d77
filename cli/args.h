// Command-line parsing for the `sheaf` client commands: flags anywhere among
// the arguments, `--name value` or `--name=value`, short aliases, `--` ending
// the flags; and the value parsers the commands share (byte sizes, job
// states).
//
// Every error is kInvalidArgument with a message that names the flag, ready
// to be shown after "sheaf: ".
#ifndef SHEAF_CLI_ARGS_H_
#define SHEAF_CLI_ARGS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/coordinator.pb.h"

namespace sheaf::cli {

struct FlagSpec {
  FlagSpec(std::string name, bool takes_value = true, std::string short_name = "")
      : name(std::move(name)), takes_value(takes_value), short_name(std::move(short_name)) {}

  // Without the dashes: "addr" matches `--addr`.
  std::string name;
  // `--name VALUE`; false for switches (`--all-pages`).
  bool takes_value = true;
  // A one-letter alias matched as `-x` ("" for none).
  std::string short_name;
};

struct ParsedArgs {
  // Every value given, in order, keyed by the flag's long name; a switch
  // holds "true" once per time it was given.
  std::map<std::string, std::vector<std::string>> flags;
  std::vector<std::string> positional;

  bool Has(const std::string& name) const { return flags.count(name) > 0; }
  // The last value given, or `fallback`.
  std::string Last(const std::string& name, const std::string& fallback = "") const;
  const std::vector<std::string>& All(const std::string& name) const;
};

// kInvalidArgument for an unknown flag, a flag without its value, or a value
// given to a switch.
absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                                     const std::vector<FlagSpec>& specs);

// An integer flag value in [min, max]; kInvalidArgument naming `--flag`.
absl::StatusOr<int64_t> ParseIntFlag(absl::string_view flag, absl::string_view value, int64_t min,
                                     int64_t max);

// Bytes: a plain integer, or one with a binary suffix: K/KiB, M/MiB, G/GiB,
// T/TiB (16G = 16GiB = 16 * 2^30). kInvalidArgument otherwise.
absl::StatusOr<int64_t> ParseBytes(absl::string_view flag, absl::string_view value);

// A job state by name in any case, with or without the JOB_STATE_ prefix
// ("running", "RUNNING", "JOB_STATE_RUNNING"). kInvalidArgument listing the
// names otherwise.
absl::StatusOr<proto::JobState> ParseJobState(absl::string_view value);

}  // namespace sheaf::cli

#endif  // SHEAF_CLI_ARGS_H_
