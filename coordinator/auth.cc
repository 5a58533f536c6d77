#include "coordinator/auth.h"

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/file.h"

namespace sheaf::coordinator {
namespace {

// Equality whose running time depends only on the length of `presented`
// (which the caller already knows), not on `secret` or on where they differ.
bool ConstantTimeEquals(absl::string_view presented, absl::string_view secret) {
  unsigned diff = presented.size() == secret.size() ? 0u : 1u;
  if (secret.empty()) return false;
  for (size_t i = 0; i < presented.size(); ++i) {
    diff |= static_cast<unsigned char>(presented[i]) ^
            static_cast<unsigned char>(secret[i % secret.size()]);
  }
  // Keep the compiler from turning the loop into an early exit.
  volatile unsigned result = diff;
  return result == 0;
}

bool IsTokenChar(char c) { return c > ' ' && c < 127; }

}  // namespace

bool IsValidTenantName(absl::string_view name) {
  if (name.empty() || name.size() > 64 || !absl::ascii_isalnum(name[0])) {
    return false;
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '.' && c != '-') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>>
TokenAuthenticator::FromFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) {
    return absl::NotFoundError(absl::StrCat("tokens file ", path, ": cannot be read (",
                                            text.status().message(), ")"));
  }
  return FromText(*text, path);
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>>
TokenAuthenticator::FromText(absl::string_view text, absl::string_view origin) {
  std::vector<Entry> entries;
  absl::flat_hash_set<std::string> seen;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    const size_t hash = line.find('#');
    if (hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    const std::string where = absl::StrCat(origin, ":", line_number, ": ");
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "expected `TOKEN TENANT` or `TOKEN @worker`, got ",
          fields.size(), " fields"));
    }
    const absl::string_view token = fields[0];
    const absl::string_view who = fields[1];
    if (token.size() < kMinTokenLength) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "token is shorter than ", kMinTokenLength,
                       " characters"));
    }
    for (char c : token) {
      if (!IsTokenChar(c)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, "token holds a non-printable character"));
      }
    }
    if (!seen.insert(std::string(token)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "token appears more than once"));
    }
    Caller caller;
    if (who == "@worker") {
      caller = Caller::Worker();
    } else if (IsValidTenantName(who)) {
      caller = Caller::Tenant(std::string(who));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "bad tenant name '", who,
          "' (1-64 of [A-Za-z0-9_.-], starting with a letter or digit; "
          "or @worker)"));
    }
    entries.push_back({std::string(token), std::move(caller)});
  }
  return std::unique_ptr<TokenAuthenticator>(
      new TokenAuthenticator(std::move(entries)));
}

absl::StatusOr<Caller> TokenAuthenticator::Authenticate(
    absl::string_view authorization) const {
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "missing bearer token (send `authorization: Bearer TOKEN` metadata)");
  }
  absl::string_view token = authorization;
  if (token.size() < 7 || !absl::EqualsIgnoreCase(token.substr(0, 7), "bearer ")) {
    return absl::UnauthenticatedError(
        "malformed authorization metadata (expected `Bearer TOKEN`)");
  }
  token = absl::StripAsciiWhitespace(token.substr(7));
  // Look at every entry so that the time taken does not say which matched.
  const Entry* match = nullptr;
  for (const Entry& entry : entries_) {
    if (ConstantTimeEquals(token, entry.token)) match = &entry;
  }
  if (match == nullptr) {
    return absl::UnauthenticatedError("invalid bearer token");
  }
  return match->caller;
}

absl::Status RequireTenant(const Caller& caller, absl::string_view what) {
  if (!caller.is_worker()) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("a worker token cannot call ", what,
                   " (use a tenant token)"));
}

absl::Status RequireWorker(const Caller& caller, absl::string_view what) {
  if (caller.is_worker()) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat(what, " is for worker worlds (tenant '", caller.tenant,
                   "' cannot call it)"));
}

}  // namespace sheaf::coordinator
