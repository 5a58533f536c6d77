#include "core/flags.h"

namespace sheaf {

absl::Status ParseLongFlags(int argc, char** argv, std::map<std::string, std::string>* values,
                            const std::set<std::string>& switches, ParsedFlags* parsed) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      parsed->help = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) return absl::InvalidArgumentError("unexpected argument " + arg);
    arg = arg.substr(2);
    if (switches.count(arg)) {
      parsed->switches_set.insert(arg);
      continue;
    }
    std::string value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc && values->count(arg)) {
      value = argv[++i];
    } else if (values->count(arg)) {
      return absl::InvalidArgumentError("--" + arg + " needs a value");
    }
    if (!values->count(arg)) return absl::InvalidArgumentError("unknown flag --" + arg);
    (*values)[arg] = value;
  }
  return absl::OkStatus();
}

}  // namespace sheaf
