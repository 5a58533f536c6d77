#include "coordinator/page_token.h"

#include <sys/random.h>

#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/sha256.h"

namespace sheaf::coordinator {
namespace {

constexpr size_t kNonceBytes = 8;
constexpr size_t kSeqBytes = 8;
constexpr size_t kTagBytes = 16;

std::string RandomBytes(size_t n) {
  std::string out(n, '\0');
  size_t filled = 0;
  while (filled < n) {
    const ssize_t got = getrandom(out.data() + filled, n - filled, 0);
    if (got > 0) filled += static_cast<size_t>(got);
  }
  return out;
}

std::string Sha(absl::string_view a, absl::string_view b = {},
                absl::string_view c = {}) {
  Sha256 sha;
  sha.Update(a);
  sha.Update(b);
  sha.Update(c);
  return sha.Finish();
}

// Constant-time comparison of equal-length strings.
bool SameBytes(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

absl::Status Refused() {
  return absl::InvalidArgumentError(
      "page_token: not a token this coordinator gave this tenant (altered, "
      "another tenant's, or from before a coordinator restart); list again "
      "without a page token");
}

}  // namespace

std::string HmacSha256(absl::string_view key, absl::string_view message) {
  constexpr size_t kBlock = 64;
  std::string k = key.size() > kBlock ? Sha(key) : std::string(key);
  k.resize(kBlock, '\0');
  std::string inner_pad(kBlock, '\0'), outer_pad(kBlock, '\0');
  for (size_t i = 0; i < kBlock; ++i) {
    inner_pad[i] = static_cast<char>(k[i] ^ 0x36);
    outer_pad[i] = static_cast<char>(k[i] ^ 0x5c);
  }
  return Sha(outer_pad, Sha(inner_pad, message));
}

PageTokenCodec::PageTokenCodec() : key_(RandomBytes(32)) {}

std::string PageTokenCodec::Pad(absl::string_view nonce) const {
  return Sha(key_, "pad", nonce).substr(0, kSeqBytes);
}

std::string PageTokenCodec::Tag(absl::string_view tenant, absl::string_view nonce,
                                absl::string_view ciphertext) const {
  return HmacSha256(key_, absl::StrCat(tenant, absl::string_view("\0", 1), nonce,
                                       ciphertext))
      .substr(0, kTagBytes);
}

std::string PageTokenCodec::Encode(absl::string_view tenant, int64_t seq) const {
  const std::string nonce = RandomBytes(kNonceBytes);
  const std::string pad = Pad(nonce);
  std::string ciphertext(kSeqBytes, '\0');
  const uint64_t value = static_cast<uint64_t>(seq);
  for (size_t i = 0; i < kSeqBytes; ++i) {
    ciphertext[i] = static_cast<char>(static_cast<unsigned char>(value >> (8 * i)) ^
                                      static_cast<unsigned char>(pad[i]));
  }
  std::string raw = absl::StrCat(nonce, ciphertext, Tag(tenant, nonce, ciphertext));
  std::string token;
  absl::WebSafeBase64Escape(raw, &token);
  return token;
}

absl::StatusOr<int64_t> PageTokenCodec::Decode(absl::string_view tenant,
                                               absl::string_view token) const {
  std::string raw;
  if (token.size() > 64 || !absl::WebSafeBase64Unescape(token, &raw) ||
      raw.size() != kNonceBytes + kSeqBytes + kTagBytes) {
    return Refused();
  }
  // Only the canonical spelling: the last character of unpadded base64 has
  // spare bits, so several tokens would otherwise decode to the same bytes.
  std::string canonical;
  absl::WebSafeBase64Escape(raw, &canonical);
  if (canonical != token) return Refused();
  const absl::string_view view(raw);
  const absl::string_view nonce = view.substr(0, kNonceBytes);
  const absl::string_view ciphertext = view.substr(kNonceBytes, kSeqBytes);
  const absl::string_view tag = view.substr(kNonceBytes + kSeqBytes);
  if (!SameBytes(tag, Tag(tenant, nonce, ciphertext))) return Refused();
  const std::string pad = Pad(nonce);
  uint64_t value = 0;
  for (size_t i = 0; i < kSeqBytes; ++i) {
    value |= static_cast<uint64_t>(static_cast<unsigned char>(ciphertext[i]) ^
                                   static_cast<unsigned char>(pad[i]))
             << (8 * i);
  }
  const int64_t seq = static_cast<int64_t>(value);
  if (seq < 0) return Refused();
  return seq;
}

}  // namespace sheaf::coordinator
