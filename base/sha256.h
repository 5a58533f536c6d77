// SHA-256 (FIPS 180-4), incremental, for content digests of artifacts
// (`sheaf fetch` verifies every file it downloads; issue 9, item 6).
// Thread-safety: one Sha256 per thread; the free functions are reentrant.
#ifndef SHEAF_BASE_SHA256_H_
#define SHEAF_BASE_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sheaf {

class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t size);
  void Update(absl::string_view data) { Update(data.data(), data.size()); }
  // The 32-byte digest; the object is spent afterwards.
  std::string Finish();

 private:
  void Block(const uint8_t* block);
  std::array<uint32_t, 8> h_;
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// Lowercase hex of a digest.
std::string HexDigest(absl::string_view digest);

// SHA-256 of the first `length` bytes of the open file `fd` (read with
// pread; fewer when the file is shorter: then kOutOfRange); length < 0:
// the whole file.
absl::StatusOr<std::string> Sha256OfFd(int fd, int64_t length = -1);

}  // namespace sheaf

#endif  // SHEAF_BASE_SHA256_H_
