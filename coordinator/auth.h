// Bearer-token authentication: who is calling.
//
// The tokens file has one token per line, `TOKEN TENANT` for a tenant or
// `TOKEN @worker` for worker worlds; `#` starts a comment, blank lines are
// skipped. Tokens are at least 16 printable ASCII characters without
// spaces; tenant names are 1 to 64 of [A-Za-z0-9_.-], starting with a
// letter or digit (they name directories under the output root). A tenant
// may have several tokens; a token may appear only once.
//
// Presented tokens are compared with every known token in time that does
// not depend on where (or whether) they match.
//
// Thread-safety: immutable after creation.
#ifndef SHEAF_COORDINATOR_AUTH_H_
#define SHEAF_COORDINATOR_AUTH_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sheaf::coordinator {

inline constexpr size_t kMinTokenLength = 16;

// The authenticated identity of a call.
struct Caller {
  enum class Role { kTenant, kWorker };
  Role role = Role::kTenant;
  // Empty for workers.
  std::string tenant;

  bool is_worker() const { return role == Role::kWorker; }
  static Caller Tenant(std::string name) { return {Role::kTenant, std::move(name)}; }
  static Caller Worker() { return {Role::kWorker, ""}; }
};

// True for names usable as tenants (see the file comment).
bool IsValidTenantName(absl::string_view name);

class TokenAuthenticator {
 public:
  // Reads a tokens file. kNotFound when it cannot be read; kInvalidArgument
  // naming `path:line` for a malformed line, a short token or a repeated
  // token.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromFile(
      const std::string& path);
  // The same from text; `origin` prefixes error messages.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromText(
      absl::string_view text, absl::string_view origin = "tokens");

  // `authorization` is the call's "authorization" metadata value
  // ("Bearer TOKEN"), empty when the call has none. kUnauthenticated when it
  // is missing, malformed or names no known token.
  absl::StatusOr<Caller> Authenticate(absl::string_view authorization) const;

  size_t token_count() const { return entries_.size(); }

 private:
  struct Entry {
    std::string token;
    Caller caller;
  };
  explicit TokenAuthenticator(std::vector<Entry> entries)
      : entries_(std::move(entries)) {}

  std::vector<Entry> entries_;
};

// kPermissionDenied unless `caller` is a tenant; `what` names the call.
absl::Status RequireTenant(const Caller& caller, absl::string_view what);
// kPermissionDenied unless `caller` is a worker.
absl::Status RequireWorker(const Caller& caller, absl::string_view what);

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_AUTH_H_
