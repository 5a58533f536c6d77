// The client's connection to a coordinator: address, bearer token and TLS
// from flags or the environment, one channel, fresh call contexts; and the
// translation of an RPC's failure into the one line the user reads and the
// exit code `sheaf` returns.
//
// Lifecycle: Create() makes the channel (lazily connected by gRPC); every
// call gets its own context from NewContext(). Thread-safety: the
// Connection is immutable after Create(); gRPC stubs are thread-safe.
#ifndef SHEAF_CLI_CONNECTION_H_
#define SHEAF_CLI_CONNECTION_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "proto/coordinator.grpc.pb.h"

namespace sheaf::cli {

// Exit codes of every `sheaf` client command (documented in `sheaf --help`).
enum ExitCode : int {
  kExitOk = 0,
  // The job failed or was cancelled (watch), or the operation failed.
  kExitFailed = 1,
  // Bad usage, a bad spec, or a request the coordinator found invalid.
  kExitUsage = 2,
  // The coordinator cannot be reached, or it refused the token.
  kExitUnreachable = 3,
  // No such job (or none of this tenant's), or no such artifact.
  kExitNotFound = 4,
};

inline constexpr char kDefaultAddress[] = "localhost:7070";

struct ConnectionOptions {
  // host:port.
  std::string address = kDefaultAddress;
  std::string token;
  // PEM file of the CA (or the self-signed certificate) that signed the
  // coordinator's certificate; TLS when set, plaintext otherwise.
  std::string ca_path;
  // The name the certificate must carry when it differs from the address's
  // host (e.g. connecting by IP to a certificate for a host name).
  std::string tls_server_name;
  // Deadline of each unary call (streams have none).
  absl::Duration call_timeout = absl::Seconds(30);
};

// Flag values (empty when not given) and an environment lookup; the
// environment is read only for what the flags leave out: SHEAF_ADDR,
// SHEAF_TOKEN, SHEAF_TOKEN_FILE, SHEAF_CA. A token file holds the token as
// its first word (blank lines and `#` comments are skipped).
//
// kInvalidArgument when no token is given or the token file holds none;
// kNotFound when the token or CA file cannot be read.
struct ConnectionFlags {
  std::string addr;
  std::string token;
  std::string token_file;
  std::string ca;
  std::string tls_server_name;
};
using GetEnv = std::function<std::optional<std::string>(const char* name)>;
absl::StatusOr<ConnectionOptions> ResolveConnectionOptions(const ConnectionFlags& flags,
                                                           const GetEnv& getenv);

class Connection {
 public:
  // kNotFound when the CA file cannot be read.
  static absl::StatusOr<std::unique_ptr<Connection>> Create(ConnectionOptions options);

  proto::Coordinator::Stub& stub() const { return *stub_; }
  const ConnectionOptions& options() const { return options_; }

  // A context carrying the bearer token; with the call deadline for unary
  // calls, none for streams.
  std::unique_ptr<grpc::ClientContext> NewContext(bool unary = true) const;

 private:
  Connection(ConnectionOptions options, std::unique_ptr<proto::Coordinator::Stub> stub)
      : options_(std::move(options)), stub_(std::move(stub)) {}

  const ConnectionOptions options_;
  const std::unique_ptr<proto::Coordinator::Stub> stub_;
};

// gRPC and absl share the canonical code numbering.
absl::Status FromGrpc(const grpc::Status& status);

// What `sheaf` prints (after "sheaf: ") and returns for a failed call.
struct CliError {
  int exit_code = kExitFailed;
  std::string message;
};

// Maps a failed call's status to the user's line:
//   kUnavailable / kDeadlineExceeded  "cannot reach coordinator at ADDR:
//                                     REASON (is sheaf-coordinator running?
//                                     set --addr or SHEAF_ADDR)", exit 3
//   kUnauthenticated                  "permission denied: the token is not
//                                     valid for this coordinator", exit 3
//   kPermissionDenied                 "permission denied: ...", exit 3
//   kNotFound                         "job ID not found" when the job is
//                                     unknown (else the message), exit 4
//   kInvalidArgument                  the message, exit 2
//   anything else                     the message, exit 1
// `job_id` is the job the command named ("" for none).
CliError DescribeError(const absl::Status& status, const ConnectionOptions& options,
                       absl::string_view job_id = "");

}  // namespace sheaf::cli

#endif  // SHEAF_CLI_CONNECTION_H_
