// Opaque, per-tenant ListJobs page tokens (issue 9, item 10).
//
// A token carries the store sequence number of the last job of a page, but
// a client can neither read it (it is encrypted) nor forge or move one to
// another tenant (it is authenticated together with the tenant's name):
//
//   token = base64url(nonce[8] || seq[8] XOR pad || tag[16])
//   pad   = SHA-256(key || "pad" || nonce)[0, 8)
//   tag   = HMAC-SHA-256(key, tenant || 0x00 || nonce || ciphertext)[0, 16)
//
// The 32-byte key is drawn at random when the codec is made (one per
// coordinator process): tokens do not survive a restart, which is refused
// like a forged one and means "list again from the first page".
//
// Thread-safety: thread-safe (immutable after construction).
#ifndef SHEAF_COORDINATOR_PAGE_TOKEN_H_
#define SHEAF_COORDINATOR_PAGE_TOKEN_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sheaf::coordinator {

class PageTokenCodec {
 public:
  // A fresh random key.
  PageTokenCodec();
  // A given key (tests); any length.
  explicit PageTokenCodec(std::string key) : key_(std::move(key)) {}

  std::string Encode(absl::string_view tenant, int64_t seq) const;
  // kInvalidArgument naming page_token for anything not issued by this
  // codec to `tenant`.
  absl::StatusOr<int64_t> Decode(absl::string_view tenant,
                                 absl::string_view token) const;

 private:
  std::string Pad(absl::string_view nonce) const;
  std::string Tag(absl::string_view tenant, absl::string_view nonce,
                  absl::string_view ciphertext) const;
  std::string key_;
};

// HMAC-SHA-256 (RFC 2104) of `message` under `key`: 32 bytes.
std::string HmacSha256(absl::string_view key, absl::string_view message);

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_PAGE_TOKEN_H_
