#include "core/data/tokenizer.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

TEST(ByteTokenizerTest, IdsAndVocab) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 258);
  EXPECT_EQ(tok.bos_id(), 256);
  EXPECT_EQ(tok.eos_id(), 257);
  EXPECT_EQ(tok.Encode("Ab\n"), (std::vector<int32_t>{65, 98, 10}));
}

TEST(ByteTokenizerTest, RoundTripNonAsciiUtf8) {
  ByteTokenizer tok;
  // Two-, three- and four-byte UTF-8 characters.
  const std::string text = "Größe – 日本語 🙂 naïve";
  const std::vector<int32_t> ids = tok.Encode(text);
  ASSERT_EQ(ids.size(), text.size());
  for (int32_t id : ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 256);
  }
  // "ö" is 0xC3 0xB6: high bytes must not come out negative.
  EXPECT_EQ(ids[2], 0xC3);
  EXPECT_EQ(ids[3], 0xB6);
  absl::StatusOr<std::string> back = tok.Decode(ids);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, text);
}

TEST(ByteTokenizerTest, RoundTripEveryByte) {
  ByteTokenizer tok;
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  absl::StatusOr<std::string> back = tok.Decode(tok.Encode(all));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, all);
}

TEST(ByteTokenizerTest, DecodeSkipsSpecialsAndRejectsOutOfRange) {
  ByteTokenizer tok;
  absl::StatusOr<std::string> text = tok.Decode({256, 104, 105, 257});
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "hi");
  EXPECT_EQ(tok.Decode({104, 258}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tok.Decode({-1}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sheaf
