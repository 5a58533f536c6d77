#include "cli/connection.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/bearer_token.h"
#include "base/file.h"

namespace sheaf::cli {
namespace {

// A short reason for an unreachable coordinator, from gRPC's message
// ("failed to connect to all addresses; last error: UNKNOWN: ipv4:...:
// Failed to connect to remote host: Connection refused").
std::string UnreachableReason(const absl::Status& status, const ConnectionOptions& options) {
  const std::string message = absl::AsciiStrToLower(status.message());
  if (status.code() == absl::StatusCode::kDeadlineExceeded) {
    return absl::StrCat("no answer within ", absl::FormatDuration(options.call_timeout));
  }
  if (absl::StrContains(message, "connection refused")) return "connection refused";
  if (absl::StrContains(message, "dns resolution failed") ||
      absl::StrContains(message, "name resolution") || absl::StrContains(message, "resolve")) {
    return "cannot resolve the host name";
  }
  if (absl::StrContains(message, "handshake") || absl::StrContains(message, "ssl") ||
      absl::StrContains(message, "tls") || absl::StrContains(message, "certificate")) {
    return options.ca_path.empty()
               ? "TLS handshake failed"
               : absl::StrCat("TLS handshake failed (is ", options.ca_path,
                              " the CA that signed the coordinator's certificate, "
                              "and does the coordinator serve TLS?)");
  }
  if (absl::StrContains(message, "shutting down")) return "the coordinator is shutting down";
  if (options.ca_path.empty() && (absl::StrContains(message, "socket closed") ||
                                  absl::StrContains(message, "connection reset") ||
                                  absl::StrContains(message, "end of file"))) {
    return "the connection was closed (if the coordinator serves TLS, pass --ca FILE)";
  }
  return std::string(status.message());
}

}  // namespace

absl::StatusOr<ConnectionOptions> ResolveConnectionOptions(const ConnectionFlags& flags,
                                                           const GetEnv& getenv) {
  auto env = [&getenv](const char* name) -> std::string {
    std::optional<std::string> value = getenv ? getenv(name) : std::nullopt;
    return value.value_or("");
  };
  ConnectionOptions options;
  options.address = !flags.addr.empty() ? flags.addr : env("SHEAF_ADDR");
  if (options.address.empty()) options.address = kDefaultAddress;
  options.ca_path = !flags.ca.empty() ? flags.ca : env("SHEAF_CA");
  options.tls_server_name = flags.tls_server_name;
  // Flags first (token, then token file), then the environment likewise.
  if (!flags.token.empty()) {
    options.token = flags.token;
  } else if (!flags.token_file.empty()) {
    absl::StatusOr<std::string> token = ReadTokenFile(flags.token_file);
    if (!token.ok()) return token.status();
    options.token = *token;
  } else if (!env("SHEAF_TOKEN").empty()) {
    options.token = env("SHEAF_TOKEN");
  } else if (!env("SHEAF_TOKEN_FILE").empty()) {
    absl::StatusOr<std::string> token = ReadTokenFile(env("SHEAF_TOKEN_FILE"));
    if (!token.ok()) return token.status();
    options.token = *token;
  }
  if (options.token.empty()) {
    return absl::InvalidArgumentError(
        "no token: pass --token T or --token-file FILE, or set SHEAF_TOKEN");
  }
  return options;
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Create(ConnectionOptions options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  grpc::ChannelArguments args;
  if (!options.ca_path.empty()) {
    absl::StatusOr<std::string> pem = ReadFileToString(options.ca_path);
    if (!pem.ok()) {
      return absl::NotFoundError(absl::StrCat("CA file ", options.ca_path, ": cannot be read (",
                                              pem.status().message(), ")"));
    }
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = *pem;
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name);
    }
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  // Artifact chunks are at most 1 MiB and list pages stop near 2 MiB.
  args.SetMaxReceiveMessageSize(8 << 20);
  // gRPC's reconnect backoff grows to 2 minutes by default; `watch` and
  // `fetch` reconnecting after a coordinator restart should find it sooner.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 5000);
  auto stub =
      proto::Coordinator::NewStub(grpc::CreateCustomChannel(options.address, credentials, args));
  return std::unique_ptr<Connection>(new Connection(std::move(options), std::move(stub)));
}

std::unique_ptr<grpc::ClientContext> Connection::NewContext(bool unary) const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->AddMetadata("authorization", "Bearer " + options_.token);
  if (unary) {
    context->set_deadline(std::chrono::system_clock::now() +
                          absl::ToChronoMilliseconds(options_.call_timeout));
  }
  return context;
}

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

CliError DescribeError(const absl::Status& status, const ConnectionOptions& options,
                       absl::string_view job_id) {
  const std::string message(status.message());
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return {kExitUnreachable,
              absl::StrCat("cannot reach coordinator at ", options.address, ": ",
                           UnreachableReason(status, options),
                           " (is sheaf-coordinator running? set --addr or SHEAF_ADDR)")};
    case absl::StatusCode::kUnauthenticated:
      return {kExitUnreachable,
              "permission denied: the token is not valid for this coordinator "
              "(check --token, --token-file or SHEAF_TOKEN)"};
    case absl::StatusCode::kPermissionDenied:
      return {kExitUnreachable, absl::StrCat("permission denied: ", message)};
    case absl::StatusCode::kNotFound:
      // The service says "no job ID" for unknown jobs and other tenants'.
      if (!job_id.empty() && absl::StartsWith(message, "no job")) {
        return {kExitNotFound, absl::StrCat("job ", job_id, " not found")};
      }
      return {kExitNotFound, message};
    case absl::StatusCode::kInvalidArgument:
      return {kExitUsage, message};
    case absl::StatusCode::kUnimplemented:
      return {kExitFailed,
              absl::StrCat("the coordinator at ", options.address,
                           " does not support this call (is it an older version?): ", message)};
    default:
      return {kExitFailed, message.empty() ? status.ToString() : message};
  }
}

}  // namespace sheaf::cli
