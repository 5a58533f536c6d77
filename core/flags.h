// Long-flag parsing for the daemons (sheaf-coordinator, sheaf-worker):
// `--name value` or `--name=value` for every name already in *values (its
// entry is the default), and bare `--name` for names in `switches`.
// `--help`/`-h` is reported as help = true. The sheaf CLI has its own richer
// parser (cli/args.h) for repeated and short flags.
#ifndef SHEAF_CORE_FLAGS_H_
#define SHEAF_CORE_FLAGS_H_

#include <map>
#include <set>
#include <string>

#include "absl/status/status.h"

namespace sheaf {

struct ParsedFlags {
  bool help = false;
  std::set<std::string> switches_set;  // switches that were given
};

// InvalidArgument naming the flag: unknown flag, a positional argument, a
// value flag without a value.
absl::Status ParseLongFlags(int argc, char** argv, std::map<std::string, std::string>* values,
                            const std::set<std::string>& switches, ParsedFlags* parsed);

}  // namespace sheaf

#endif  // SHEAF_CORE_FLAGS_H_
