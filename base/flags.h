// Command-line flags for every sheaf program: the `sheaf` subcommands (local
// and remote) and the daemons (sheaf-coordinator, sheaf-worker) share one
// parser and one set of value parsers, so `--max-seqs abc` and
// `--memory 16G` mean the same everywhere.
//
// Grammar: flags anywhere among the arguments, `--name value` or
// `--name=value`, one-letter aliases (`-o DIR`), switches without a value
// (`--quiet`), `--` ending the flags; a lone `-` is a positional argument.
//
// Why not absl flags (linked already): absl flag names are C++ identifiers,
// so `--model-root` would become `--model_root` in every script, manifest and
// guide; absl reports errors itself and exits 1 where ours print the usage
// and exit 2; and absl flags are process globals, which keeps Main from being
// parsed twice in one test. Neither daemon needs what absl adds (flag files,
// flags spread over libraries).
//
// Every error is InvalidArgument with a message that names the flag, ready
// to be shown after "PROGRAM: ".
#ifndef SHEAF_BASE_FLAGS_H_
#define SHEAF_BASE_FLAGS_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sheaf {

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

// InvalidArgument for an unknown flag ("unknown flag --x"), a flag without
// its value ("--x needs a value"), or a value given to a switch ("--x takes
// no value").
absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                                     const std::vector<FlagSpec>& specs);

// The daemons' form: every name in *values takes a value (its entry is the
// default and is replaced by the last value given), names in `switches`
// take none, `--help`/`-h` set help. A positional argument is an error
// ("unexpected argument X").
struct ParsedFlags {
  bool help = false;
  std::set<std::string> switches_set;  // switches that were given
};
absl::Status ParseLongFlags(int argc, char** argv, std::map<std::string, std::string>* values,
                            const std::set<std::string>& switches, ParsedFlags* parsed);

// An integer in [min, max]: "--flag: must be an integer in [min, max], got
// 'value'" otherwise (so `abc`, `12x`, `1.5` and out-of-range values are
// refused, never read as 0).
absl::StatusOr<int64_t> ParseIntFlag(absl::string_view flag, absl::string_view value, int64_t min,
                                     int64_t max);

// A byte size, the one grammar of `sheaf submit --memory` and
// `sheaf-worker --memory-bytes`: decimal digits, then optionally a binary
// suffix in any case, K or KiB (2^10), M or MiB (2^20), G or GiB (2^30), T
// or TiB (2^40). So 16G = 16GiB = 16 * 2^30 = 17179869184: memory is sized
// in powers of two, and both commands documented it so. No fraction (1.5G),
// no sign, no "GB"/"kB" (decimal or binary? refused rather than guessed),
// nothing past INT64_MAX bytes. Surrounding whitespace is ignored.
absl::StatusOr<int64_t> ParseByteSize(absl::string_view flag, absl::string_view value);

}  // namespace sheaf

#endif  // SHEAF_BASE_FLAGS_H_
