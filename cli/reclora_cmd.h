// `sheaf crm train` (the recommender of the reclora kind, on its own) and
// `sheaf reclora ...` subcommands.
#ifndef SHEAF_CLI_RECLORA_CMD_H_
#define SHEAF_CLI_RECLORA_CMD_H_

#include <string>
#include <vector>

namespace sheaf::cli {

extern const char* const kRecloraUsage;

// args after "crm". Returns the process exit code (0 ok, 1 failed, 2 usage).
int RunCrmCommand(const std::vector<std::string>& args);
// args after "reclora".
int RunRecloraCommand(const std::vector<std::string>& args);

}  // namespace sheaf::cli

#endif  // SHEAF_CLI_RECLORA_CMD_H_
