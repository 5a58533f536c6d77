// Hand-made tokenizer.json files: merges by rank, added tokens first,
// ignore_merges, special ids, decode, refusals naming the component. (The
// check against the `tokenizers` library on multilingual text is
// tests/hf_reference_test.)
#include "core/data/bpe_tokenizer.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

// Vocab: the characters of "hello world" (Ġ is GPT-2's stand-in for the
// space byte), their merges, and an added token.
std::string TokenizerJson(const std::string& model_extra = "", const std::string& normalizer = "null",
                          const std::string& pre = R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})") {
  return absl::StrCat(R"({"version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [{"id": 14, "content": "<|end|>", "single_word": false, "lstrip": false,
                      "rstrip": false, "normalized": false, "special": true}],
    "normalizer": )", normalizer, R"(, "pre_tokenizer": )", pre, R"(,
    "post_processor": null, "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false,
      "byte_fallback": false)", model_extra, R"(,
      "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "w": 5, "r": 6, "d": 7,
                "he": 8, "ll": 9, "hell": 10, "hello": 11, "Ġw": 12, "or": 13, "lo": 15, "dr": 16},
      "merges": ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "l o"]}})");
}

std::string Write(const std::string& name, const std::string& json,
                  const std::string& config = R"({"eos_token": "<|end|>"})") {
  const std::string dir = ::testing::TempDir() + "/" + name;
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/tokenizer.json") << json;
  std::ofstream(dir + "/tokenizer_config.json") << config;
  return dir + "/tokenizer.json";
}

TEST(BpeTokenizer, MergesByRankAddedTokensFirstAndDecode) {
  auto t = BpeTokenizer::Load(Write("basic", TokenizerJson()));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 17);
  EXPECT_EQ((*t)->eos_id(), 14);
  EXPECT_FALSE((*t)->adds_bos());
  EXPECT_EQ((*t)->bos_id(), 14);  // no BOS: the EOS separates documents
  // "hello" merges h+e (rank 0), l+l (1), he+ll (2), hell+o (3); "l o"
  // (rank 6) never applies. " world": Ġ+w, o+r; l, d stay.
  EXPECT_EQ((*t)->Encode("hello world"), (std::vector<int32_t>{11, 12, 13, 2, 7}));
  // The added token is cut out first, even glued to words.
  EXPECT_EQ((*t)->Encode("hello<|end|>hello"), (std::vector<int32_t>{11, 14, 11}));
  auto d = (*t)->Decode({11, 12, 13, 2, 7});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, "hello world");
  EXPECT_FALSE((*t)->Decode({17}).ok());
  // Characters outside the vocab (no unk token) are dropped, never a crash,
  // and invalid UTF-8 is fine.
  EXPECT_EQ((*t)->Encode("h\xff\xfe" "e"), (std::vector<int32_t>{0, 1}));
}

TEST(BpeTokenizer, IgnoreMergesTakesWholeWordsFromTheVocab) {
  auto plain = BpeTokenizer::Load(Write("plain", TokenizerJson()));
  auto whole = BpeTokenizer::Load(Write("whole", TokenizerJson(R"(, "ignore_merges": true)")));
  ASSERT_TRUE(plain.ok() && whole.ok());
  // "llo": merges l+l (rank 1) first -> ll, o; ignore_merges does the
  // same (llo is not in the vocab). "lo" is: ignore_merges takes it whole;
  // merges also reach it (rank 6). "orlo" is not in the vocab.
  EXPECT_EQ((*plain)->Encode("llo"), (std::vector<int32_t>{9, 3}));
  EXPECT_EQ((*whole)->Encode("llo"), (std::vector<int32_t>{9, 3}));
  EXPECT_EQ((*whole)->Encode("lo"), (std::vector<int32_t>{15}));
  EXPECT_EQ((*whole)->Encode("hello"), (std::vector<int32_t>{11}));
  // "dr" is in the vocab but no merge makes it: only ignore_merges finds it.
  EXPECT_EQ((*plain)->Encode("dr"), (std::vector<int32_t>{7, 6}));
  EXPECT_EQ((*whole)->Encode("dr"), (std::vector<int32_t>{16}));
}

TEST(BpeTokenizer, UnsupportedComponentsAreNamed) {
  auto expect = [](const std::string& name, const std::string& json, const std::string& needle) {
    auto t = BpeTokenizer::Load(Write(name, json));
    ASSERT_FALSE(t.ok()) << name;
    EXPECT_NE(t.status().message().find(needle), std::string::npos) << t.status();
    EXPECT_NE(t.status().message().find("tokenizer.json"), std::string::npos) << t.status();
  };
  expect("lower", TokenizerJson("", R"({"type": "Lowercase"})"), "normalizer \"Lowercase\"");
  expect("meta", TokenizerJson("", "null", R"({"type": "Metaspace"})"), "pre-tokenizer \"Metaspace\"");
  expect("fallback", TokenizerJson(R"(, "continuing_subword_prefix": "##")"), "continuing_subword_prefix");
  std::string wp = TokenizerJson();
  wp.replace(wp.find("\"BPE\""), 5, "\"WordPiece\"");
  expect("wordpiece", wp, "model.type");
  // No EOS anywhere.
  auto t = BpeTokenizer::Load(Write("noeos", TokenizerJson(), "{}"));
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("no EOS"), std::string::npos);
}

}  // namespace
}  // namespace sheaf
