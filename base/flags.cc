#include "base/flags.h"

#include <algorithm>
#include <limits>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace sheaf {

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

absl::Status ParseLongFlags(int argc, char** argv, std::map<std::string, std::string>* values,
                            const std::set<std::string>& switches, ParsedFlags* parsed) {
  std::vector<FlagSpec> specs = {{"help", false, "h"}};
  for (const auto& [name, default_value] : *values) specs.push_back({name});
  for (const std::string& name : switches) specs.push_back({name, false});
  absl::StatusOr<ParsedArgs> args =
      ParseArgs(std::vector<std::string>(argv + (argc > 0 ? 1 : 0), argv + argc), specs);
  if (!args.ok()) return args.status();
  if (!args->positional.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument ", args->positional[0]));
  }
  parsed->help = args->Has("help");
  for (const auto& [name, given] : args->flags) {
    if (name == "help") continue;
    if (switches.count(name)) {
      parsed->switches_set.insert(name);
    } else {
      (*values)[name] = given.back();
    }
  }
  return absl::OkStatus();
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

absl::StatusOr<int64_t> ParseByteSize(absl::string_view flag, absl::string_view value) {
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
  const bool all_digits =
      !digits.empty() && std::all_of(digits.begin(), digits.end(),
                                     [](char c) { return absl::ascii_isdigit(c); });
  int64_t n = 0;
  if (!all_digits || !absl::SimpleAtoi(digits, &n) ||
      n > (std::numeric_limits<int64_t>::max() >> shift)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, ": not a byte size (e.g. 17179869184, 16G, 512MiB): '", value, "'"));
  }
  return n << shift;
}

}  // namespace sheaf
