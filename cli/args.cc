#include "cli/args.h"

#include <limits>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sheaf::cli {

std::string ParsedArgs::Last(const std::string& name, const std::string& fallback) const {
  auto it = flags.find(name);
  return it == flags.end() || it->second.empty() ? fallback : it->second.back();
}

const std::vector<std::string>& ParsedArgs::All(const std::string& name) const {
  static const std::vector<std::string>* const kNone = new std::vector<std::string>;
  auto it = flags.find(name);
  return it == flags.end() ? *kNone : it->second;
}

absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                                     const std::vector<FlagSpec>& specs) {
  ParsedArgs parsed;
  bool flags_ended = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_ended || arg.size() < 2 || arg[0] != '-') {
      parsed.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_ended = true;
      continue;
    }
    std::string name;
    std::string value;
    bool has_inline_value = false;
    const FlagSpec* spec = nullptr;
    if (absl::StartsWith(arg, "--")) {
      name = arg.substr(2);
      const size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_inline_value = true;
      }
      for (const FlagSpec& s : specs) {
        if (s.name == name) spec = &s;
      }
    } else {
      for (const FlagSpec& s : specs) {
        if (!s.short_name.empty() && arg.substr(1) == s.short_name) spec = &s;
      }
    }
    if (spec == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
    }
    if (spec->takes_value) {
      if (!has_inline_value) {
        if (i + 1 >= args.size()) {
          return absl::InvalidArgumentError(absl::StrCat("--", spec->name, " needs a value"));
        }
        value = args[++i];
      }
      parsed.flags[spec->name].push_back(value);
    } else {
      if (has_inline_value) {
        return absl::InvalidArgumentError(absl::StrCat("--", spec->name, " takes no value"));
      }
      parsed.flags[spec->name].push_back("true");
    }
  }
  return parsed;
}

absl::StatusOr<int64_t> ParseIntFlag(absl::string_view flag, absl::string_view value, int64_t min,
                                     int64_t max) {
  int64_t n = 0;
  if (!absl::SimpleAtoi(value, &n) || n < min || n > max) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": must be an integer in [", min,
                                                   ", ", max, "], got '", value, "'"));
  }
  return n;
}

absl::StatusOr<int64_t> ParseBytes(absl::string_view flag, absl::string_view value) {
  absl::string_view digits = absl::StripAsciiWhitespace(value);
  int shift = 0;
  struct Suffix {
    const char* text;
    int shift;
  };
  // Longest first, so that "KiB" is not read as "B" after "Ki".
  for (const Suffix& s :
       {Suffix{"KiB", 10}, Suffix{"MiB", 20}, Suffix{"GiB", 30}, Suffix{"TiB", 40}, Suffix{"K", 10},
        Suffix{"M", 20}, Suffix{"G", 30}, Suffix{"T", 40}}) {
    if (absl::EndsWithIgnoreCase(digits, s.text)) {
      digits.remove_suffix(std::char_traits<char>::length(s.text));
      shift = s.shift;
      break;
    }
  }
  int64_t n = 0;
  if (digits.empty() || !absl::SimpleAtoi(digits, &n) || n < 0 ||
      n > (std::numeric_limits<int64_t>::max() >> shift)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, ": not a byte size (e.g. 17179869184, 16G, 512MiB): '", value, "'"));
  }
  return n << shift;
}

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
