#include "base/sha256.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

std::string Hex(absl::string_view text) {
  Sha256 sha;
  sha.Update(text);
  return HexDigest(sha.Finish());
}

// FIPS 180-4 example vectors (and Python's hashlib for the others).
TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, PiecesEqualTheWhole) {
  std::string text;
  for (int i = 0; i < 1000; ++i) text += absl::StrCat(i, ",");
  Sha256 pieces;
  for (size_t i = 0; i < text.size(); i += 37) pieces.Update(text.substr(i, 37));
  EXPECT_EQ(HexDigest(pieces.Finish()), Hex(text));
}

TEST(Sha256Test, OfFdPrefixAndWhole) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(tmp ? tmp : "/tmp", "/sha.txt");
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "abcdef", 6), 6);
  EXPECT_EQ(HexDigest(*Sha256OfFd(fd, 3)), Hex("abc"));
  EXPECT_EQ(HexDigest(*Sha256OfFd(fd)), Hex("abcdef"));
  EXPECT_TRUE(absl::IsOutOfRange(Sha256OfFd(fd, 7).status()));
  ::close(fd);
}

}  // namespace
}  // namespace sheaf
