// The `sheaf` client commands, which talk to a coordinator over gRPC:
// submit, list, status, watch, cancel, fetch, logs (kRemoteUsage lists
// their flags). Each returns the process's exit code (connection.h
// ExitCode) after printing its results on `out` and one-line errors,
// "sheaf: ...", on `err`.
//
// Everything a command reads from its surroundings comes in RemoteIo, so
// tests run the commands in-process against a LocalCoordinator.
#ifndef SHEAF_CLI_REMOTE_H_
#define SHEAF_CLI_REMOTE_H_

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "cli/connection.h"

namespace sheaf::cli {

// The client commands' part of `sheaf --help`.
extern const char kRemoteUsage[];

struct RemoteIo {
  std::FILE* out = stdout;
  std::FILE* err = stderr;
  // `watch` draws a progress bar on a terminal, plain lines otherwise.
  bool out_is_tty = false;
  // SHEAF_ADDR, SHEAF_TOKEN, SHEAF_TOKEN_FILE, SHEAF_CA.
  GetEnv getenv;
  // Times in `list` and `status`.
  absl::TimeZone zone = absl::UTCTimeZone();
  // How often `logs -f` looks for more, and the first wait before `watch`
  // and `fetch` reconnect after a broken stream (doubling each time).
  absl::Duration poll_interval = absl::Seconds(1);
  absl::Duration reconnect_delay = absl::Seconds(1);
};

bool IsRemoteCommand(absl::string_view command);

// `command` is one of the client commands; `args` follow it.
int RunRemoteCommand(absl::string_view command, const std::vector<std::string>& args,
                     const RemoteIo& io);

}  // namespace sheaf::cli

#endif  // SHEAF_CLI_REMOTE_H_
