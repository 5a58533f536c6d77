#include "base/utf8.h"

#include <cstdint>
#include <optional>
#include <string>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

// An independent reading of RFC 3629 §3-4 straight from its bit patterns:
// lead byte 0xxxxxxx / 110xxxxx / 1110xxxx / 11110xxx, continuations
// 10xxxxxx, and the value must need that many bytes (no overlong form), must
// not be a surrogate and must be <= U+10FFFF. Returns the value for a
// well-formed string of exactly that sequence, nullopt otherwise.
std::optional<uint32_t> NaiveDecode(const std::string& s) {
  const auto u = [&](size_t k) { return static_cast<uint32_t>(static_cast<uint8_t>(s[k])); };
  size_t n;
  uint32_t cp;
  if ((u(0) >> 7) == 0) { n = 1; cp = u(0); }
  else if ((u(0) >> 5) == 0x6) { n = 2; cp = u(0) & 0x1F; }
  else if ((u(0) >> 4) == 0xE) { n = 3; cp = u(0) & 0x0F; }
  else if ((u(0) >> 3) == 0x1E) { n = 4; cp = u(0) & 0x07; }
  else return std::nullopt;
  if (s.size() != n) return std::nullopt;
  for (size_t k = 1; k < n; ++k) {
    if ((u(k) >> 6) != 0x2) return std::nullopt;
    cp = (cp << 6) | (u(k) & 0x3F);
  }
  const uint32_t min_for_length[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_for_length[n] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
    return std::nullopt;
  }
  return cp;
}

// Checks one candidate sequence (the whole string) against NaiveDecode.
void ExpectAgrees(const std::string& s) {
  const std::optional<uint32_t> want = NaiveDecode(s);
  ASSERT_EQ(Utf8SequenceLength(s, 0) == s.size(), want.has_value()) << testing::PrintToString(s);
  size_t pos = 0;
  const std::optional<uint32_t> got = DecodeUtf8(s, &pos);
  if (want.has_value()) {
    ASSERT_EQ(got, want);
    ASSERT_EQ(pos, s.size());
    EXPECT_TRUE(IsValidUtf8(s));
  } else {
    // A shorter well-formed prefix may decode (e.g. "A" then garbage), but
    // never the whole string as one scalar.
    ASSERT_FALSE(got.has_value() && pos == s.size()) << testing::PrintToString(s);
  }
}

// Every 1-, 2- and 3-byte string, and the 4-byte strings whose last two
// bytes sit at the edges of the continuation range.
TEST(Utf8Test, AgreesWithTheRfcDefinitionExhaustively) {
  for (int a = 0; a < 256; ++a) ExpectAgrees(std::string(1, static_cast<char>(a)));
  for (int a = 0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) {
      ExpectAgrees({static_cast<char>(a), static_cast<char>(b)});
    }
  }
  for (int a = 0xC0; a < 256; ++a) {  // leads below C0 are checked above
    for (int b = 0; b < 256; ++b) {
      for (int c = 0; c < 256; ++c) {
        ExpectAgrees({static_cast<char>(a), static_cast<char>(b), static_cast<char>(c)});
      }
    }
  }
  for (int a = 0xF0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) {
      for (int c : {0x7F, 0x80, 0xBF, 0xC0}) {
        for (int d : {0x7F, 0x80, 0xBF, 0xC0}) {
          ExpectAgrees({static_cast<char>(a), static_cast<char>(b), static_cast<char>(c),
                        static_cast<char>(d)});
        }
      }
    }
  }
}

TEST(Utf8Test, KnownEncodings) {
  std::string out;
  for (uint32_t cp : {0x41u, 0xE9u, 0x4E2Du, 0x1F600u, 0x10FFFFu}) {
    EXPECT_TRUE(AppendUtf8(cp, &out)) << cp;
  }
  EXPECT_EQ(out, "A\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80\xF4\x8F\xBF\xBF");
  size_t pos = 0;
  for (uint32_t cp : {0x41u, 0xE9u, 0x4E2Du, 0x1F600u, 0x10FFFFu}) {
    EXPECT_EQ(DecodeUtf8(out, &pos), cp);
  }
  EXPECT_EQ(pos, out.size());
  EXPECT_EQ(DecodeUtf8(out, &pos), std::nullopt);  // at the end
}

TEST(Utf8Test, EncodeRoundTripsEveryScalarAndRefusesTheRest) {
  for (uint32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    std::string s;
    const bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
    ASSERT_EQ(AppendUtf8(cp, &s), !surrogate) << cp;
    if (surrogate) {
      ASSERT_TRUE(s.empty());
      continue;
    }
    ASSERT_EQ(s.size(), cp < 0x80 ? 1u : cp < 0x800 ? 2u : cp < 0x10000 ? 3u : 4u);
    size_t pos = 0;
    ASSERT_EQ(DecodeUtf8(s, &pos), cp);
    ASSERT_EQ(pos, s.size());
  }
  std::string s = "x";
  EXPECT_FALSE(AppendUtf8(0x110000, &s));
  EXPECT_FALSE(AppendUtf8(0xFFFFFFFF, &s));
  EXPECT_EQ(s, "x");
}

TEST(Utf8Test, IllFormedClasses) {
  EXPECT_EQ(FindInvalidUtf8("\xC0\xAF"), 0u);          // overlong '/'
  EXPECT_EQ(FindInvalidUtf8("\xE0\x80\xAF"), 0u);      // overlong, 3 bytes
  EXPECT_EQ(FindInvalidUtf8("\xF0\x80\x80\xAF"), 0u);  // overlong, 4 bytes
  EXPECT_EQ(FindInvalidUtf8("ok\xED\xA0\x80"), 2u);    // U+D800
  EXPECT_EQ(FindInvalidUtf8("\xED\xBF\xBF"), 0u);      // U+DFFF
  EXPECT_EQ(FindInvalidUtf8("\xF4\x90\x80\x80"), 0u);  // U+110000
  EXPECT_EQ(FindInvalidUtf8("\xF5\x80\x80\x80"), 0u);
  EXPECT_EQ(FindInvalidUtf8("a\x80"), 1u);             // stray continuation
  EXPECT_EQ(FindInvalidUtf8("\xE4\xB8"), 0u);          // cut short
  EXPECT_EQ(FindInvalidUtf8("\xF0\x9F\x98"), 0u);      // cut short, 4-byte
  EXPECT_EQ(FindInvalidUtf8("\xFF"), 0u);
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain \xC3\xA9\xF0\x9F\x98\x80"));
  EXPECT_TRUE(IsValidUtf8(std::string_view("\0", 1)));  // NUL is a scalar
  EXPECT_EQ(Utf8SequenceLength("abc", 3), 0u);
  size_t pos = 1;
  EXPECT_EQ(DecodeUtf8("a\x80", &pos), std::nullopt);
  EXPECT_EQ(pos, 1u);  // unchanged on failure
}

}  // namespace
}  // namespace sheaf
