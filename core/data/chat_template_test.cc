// Built-in chat templates: rendering text, label spans, refusals. (Token
// for token equality with apply_chat_template is in tests/hf_reference_test.)
#include "core/data/chat_template.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

// A byte-level BPE with only single-byte tokens plus the ChatML specials.
std::string WriteTokenizer() {
  const std::string dir = ::testing::TempDir() + "/chat_tok";
  std::filesystem::create_directories(dir);
  std::string vocab;
  // bytes_to_unicode stand-ins for printable ASCII are the characters
  // themselves; space is U+0120 (Ġ), newline U+010A (Ċ).
  int id = 0;
  for (char c = '!'; c <= '~'; ++c) {
    std::string s(1, c);
    if (c == '"' || c == '\\') s = "\\" + s;
    vocab += "\"" + s + "\": " + std::to_string(id++) + ", ";
  }
  vocab += "\"\u0120\": " + std::to_string(id++) + ", \"\u010a\": " + std::to_string(id++);
  std::ofstream(dir + "/tokenizer.json")
      << R"({"added_tokens": [{"id": 200, "content": "<|im_start|>", "special": true},
                              {"id": 201, "content": "<|im_end|>", "special": true}],
            "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
            "post_processor": null, "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": {)" << vocab << R"(}, "merges": []}})";
  std::ofstream(dir + "/tokenizer_config.json") << R"({"eos_token": "<|im_end|>"})";
  return dir + "/tokenizer.json";
}

TEST(ChatTemplate, ChatMlTextAndTrainedSpans) {
  auto tok = BpeTokenizer::Load(WriteTokenizer());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<ChatMessage> msgs = {{"user", "hi"}, {"assistant", "ok"}};
  auto r = RenderChat(ChatFormat::kChatFormatChatMl, msgs, **tok, false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\nok<|im_end|>\n");
  ASSERT_EQ(r->ids.size(), r->trained.size());
  // Trained: "o", "k", <|im_end|> of the assistant turn, nothing else.
  std::vector<int32_t> trained;
  for (size_t i = 0; i < r->ids.size(); ++i) {
    if (r->trained[i]) trained.push_back(r->ids[i]);
  }
  EXPECT_EQ(trained, (std::vector<int32_t>{(*tok)->TokenId("o"), (*tok)->TokenId("k"), 201}));
}

TEST(ChatTemplate, RefusalsNameWhatIsMissing) {
  auto tok = BpeTokenizer::Load(WriteTokenizer());
  ASSERT_TRUE(tok.ok());
  auto r = RenderChat(ChatFormat::kChatFormatLlama3, {{"user", "hi"}}, **tok, false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("<|begin_of_text|>"), std::string::npos);
  auto role = RenderChat(ChatFormat::kChatFormatChatMl, {{"tool", "x"}}, **tok, false);
  ASSERT_FALSE(role.ok());
  EXPECT_NE(role.status().message().find("messages[0].role"), std::string::npos);
  EXPECT_FALSE(ParseChatFormat("mistral").ok());
}

}  // namespace
}  // namespace sheaf
