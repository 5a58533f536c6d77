// Chat JSONL: parsing with errors naming file:line, rendering into a masked
// corpus, and the one-per-row Dataset (targets only on assistant tokens,
// padded rows, no packing). Token-for-token equality with transformers'
// apply_chat_template is in tests/hf_reference_test.
#include "core/data/chat_data.h"

#include <algorithm>

#include <filesystem>
#include <fstream>

#include "core/data/dataset.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;

std::string Dir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/chat_data_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Byte-level BPE with single-character tokens for printable ASCII, space and
// newline, plus the ChatML specials (ids 200, 201) and no merges: every
// character is one token, so expected ids are easy to write down.
std::unique_ptr<BpeTokenizer> Tokenizer(const std::string& dir) {
  std::string vocab;
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
  std::ofstream(dir + "/tokenizer_config.json")
      << R"({"eos_token": "<|im_end|>", "chat_template": )"
      << "\"" << "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
      << "{{ '<|im_start|>system\\\\nYou are a helpful assistant.<|im_end|>\\\\n' }}{% endif %}"
      << "{{'<|im_start|>' + message['role'] + '\\\\n' + message['content'] + '<|im_end|>' + '\\\\n'}}"
      << "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\\\n' }}{% endif %}"
      << "\"}";
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> t = BpeTokenizer::Load(dir + "/tokenizer.json");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

TEST(ChatData, TemplateFromTokenizerConfig) {
  const std::string dir = Dir("template");
  ASSERT_NE(Tokenizer(dir), nullptr);
  absl::StatusOr<ChatFormat> f = ResolveChatTemplate("", dir + "/tokenizer_config.json");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*f, ChatFormat::kChatFormatChatMl);
  EXPECT_EQ(*ResolveChatTemplate("llama3", dir + "/tokenizer_config.json"),
            ChatFormat::kChatFormatLlama3);

  std::ofstream(dir + "/other.json") << R"({"chat_template": "{{ messages }}"})";
  absl::StatusOr<ChatFormat> other = ResolveChatTemplate("auto", dir + "/other.json");
  ASSERT_FALSE(other.ok());
  EXPECT_NE(Message(other.status()).find("data.chat_template: the chat_template of " + dir +
                                         "/other.json is not one of the built-in"),
                    std::string::npos)
      << other.status();
  std::ofstream(dir + "/none.json") << R"({"eos_token": "x"})";
  EXPECT_NE(Message(ResolveChatTemplate("", dir + "/none.json").status()).find("has no chat_template"),
            std::string::npos);
  EXPECT_NE(Message(ResolveChatTemplate("jinja", dir + "/none.json").status()).find("data.chat_template"),
            std::string::npos);
}

TEST(ChatData, MalformedLinesNameFileAndLine) {
  const std::string dir = Dir("bad");
  std::unique_ptr<BpeTokenizer> tok = Tokenizer(dir);
  ASSERT_NE(tok, nullptr);
  const std::string good = R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", "not JSON"},
      {"[1, 2]", "not a JSON object"},
      {R"({"messages": [{"role": "user", "content": "a"}], "id": 3})", "unknown key \"id\""},
      {R"({"messages": [{"role": "user", "content": "a", "name": "x"}]})", "messages[0]: unknown key \"name\""},
      {R"({"messages": [{"role": "tool", "content": "a"}]})", "messages[0].role: unknown role \"tool\""},
      {R"({"messages": [{"role": "user", "content": 3}]})", "messages[0].content: missing or not a string"},
      {R"({"messages": [{"role": "user", "content": "a"}]})", "no assistant message"},
      {R"({"messages": []})", "must be a non-empty list"},
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ")" +
           std::string(80, 'x') + "\"}]}",
       "more than data.seq_len + 1 = 64"},
  };
  for (const auto& [line, want] : cases) {
    const std::string file = dir + "/d.jsonl";
    // Line 3: a good line, a blank line, then the bad one.
    std::ofstream(file) << good << "\n\n" << line << "\n";
    absl::StatusOr<std::unique_ptr<InMemoryCorpus>> c =
        LoadChatCorpus({file}, ChatFormat::kChatFormatChatMl, *tok, 64, "data.train");
    ASSERT_FALSE(c.ok()) << line;
    EXPECT_TRUE(absl::IsInvalidArgument(c.status())) << c.status();
    EXPECT_NE(Message(c.status()).find("data.train: " + file + ":3: "), std::string::npos) << c.status();
    EXPECT_NE(Message(c.status()).find(want), std::string::npos) << c.status();
  }
}

// Instruction data: {"prompt", "completion"} is the user's turn and the
// assistant's answer (strings), or lists of messages before the answer and
// the answer's assistant messages; rendered by the same template, so the
// loss mask lands on the completion only.
TEST(ChatData, PromptCompletionLinesAreUserAndAssistantTurns) {
  auto pairs = [](const std::vector<ChatMessage>& ms) {
    std::vector<std::pair<std::string, std::string>> out;
    for (const ChatMessage& m : ms) out.emplace_back(m.role, m.content);
    return out;
  };
  using P = std::vector<std::pair<std::string, std::string>>;
  auto a = ParseChatLine(R"({"prompt": "2+2?", "completion": "4"})", "f:1");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(pairs(*a), (P{{"user", "2+2?"}, {"assistant", "4"}}));
  auto b = ParseChatLine(R"({"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}],)"
                         R"( "completion": [{"role": "assistant", "content": "A"}]})", "f:2");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(pairs(*b), (P{{"system", "S"}, {"user", "q"}, {"assistant", "A"}}));

  // The same rows as the messages form, token for token and mask for mask.
  const std::string dir = Dir("prompt_completion");
  std::unique_ptr<BpeTokenizer> tok = Tokenizer(dir);
  ASSERT_NE(tok, nullptr);
  std::ofstream(dir + "/pc.jsonl") << R"({"prompt": "hi", "completion": "ok"})" "\n";
  std::ofstream(dir + "/m.jsonl")
      << R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]})" "\n";
  auto pc = LoadChatCorpus({dir + "/pc.jsonl"}, ChatFormat::kChatFormatChatMl, *tok, 97, "data.train");
  auto m = LoadChatCorpus({dir + "/m.jsonl"}, ChatFormat::kChatFormatChatMl, *tok, 97, "data.train");
  ASSERT_TRUE(pc.ok() && m.ok());
  ASSERT_EQ((*pc)->doc_size(0), (*m)->doc_size(0));
  std::vector<int32_t> x((*pc)->doc_size(0)), y(x.size());
  std::vector<uint8_t> xm(x.size()), ym(x.size());
  (*pc)->CopyTokens(0, 0, static_cast<int64_t>(x.size()), x.data());
  (*m)->CopyTokens(0, 0, static_cast<int64_t>(y.size()), y.data());
  (*pc)->CopyLossMask(0, 0, static_cast<int64_t>(x.size()), xm.data());
  (*m)->CopyLossMask(0, 0, static_cast<int64_t>(y.size()), ym.data());
  EXPECT_EQ(x, y);
  EXPECT_EQ(xm, ym);
  EXPECT_GT(std::count(xm.begin(), xm.end(), uint8_t{1}), 0);  // "ok" and its end-of-turn
  EXPECT_LT(std::count(xm.begin(), xm.end(), uint8_t{1}), static_cast<long>(xm.size()));

  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"prompt": "q"})", "\"completion\" is missing"},
      {R"({"completion": "a"})", "\"prompt\" is missing"},
      {R"({"prompt": 3, "completion": "a"})", "\"prompt\" must be a string or a list of messages"},
      {R"({"prompt": "q", "completion": [{"role": "user", "content": "a"}]})",
       "completion[0].role: the completion's messages must be the assistant's"},
      {R"({"prompt": "q", "completion": "a", "messages": []})", "use one form"},
      {R"({"prompt": [{"role": "user", "content": "q", "x": 1}], "completion": "a"})",
       "prompt[0]: unknown key \"x\""},
  };
  for (const auto& [line, want] : bad) {
    auto r = ParseChatLine(line, "f:9");
    ASSERT_FALSE(r.ok()) << line;
    EXPECT_NE(Message(r.status()).find("f:9: "), std::string::npos) << r.status();
    EXPECT_NE(Message(r.status()).find(want), std::string::npos) << r.status();
  }
}

TEST(ChatData, OneConversationPerRowWithAssistantTargetsOnly) {
  const std::string dir = Dir("rows");
  std::unique_ptr<BpeTokenizer> tok = Tokenizer(dir);
  ASSERT_NE(tok, nullptr);
  fs::create_directories(dir + "/data");
  std::ofstream(dir + "/data/a.jsonl")
      << R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]})" "\n"
      << R"({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},)"
      << R"( {"role": "assistant", "content": "A"}, {"role": "user", "content": "r"},)"
      << R"( {"role": "assistant", "content": "BC"}]})" "\n";
  constexpr int64_t kT = 96;
  absl::StatusOr<std::unique_ptr<InMemoryCorpus>> c =
      LoadChatCorpus({dir + "/data"}, ChatFormat::kChatFormatChatMl, *tok, kT + 1, "data.train");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->num_docs(), 2);
  EXPECT_TRUE((*c)->has_loss_mask());

  // Expected rows computed here from the text: every character is a token,
  // so sample 0 is the ChatML text of the conversation char by char (with
  // 200/201 for the specials), and its targets are the next token where that
  // token belongs to an assistant content or its <|im_end|>.
  auto id = [&](char ch) { return ch == ' ' ? tok->TokenId("\u0120") : ch == '\n' ? tok->TokenId("\u010a")
                                                                                     : tok->TokenId(std::string(1, ch)); };
  std::vector<int32_t> want_ids;
  std::vector<bool> want_trained;
  auto text = [&](const std::string& s, bool trained) {
    for (char ch : s) want_ids.push_back(id(ch)), want_trained.push_back(trained);
  };
  auto special = [&](int32_t v, bool trained) { want_ids.push_back(v), want_trained.push_back(trained); };
  special(200, false), text("system\nYou are a helpful assistant.", false), special(201, false), text("\n", false);
  special(200, false), text("user\nhi", false), special(201, false), text("\n", false);
  special(200, false), text("assistant\n", false), text("ok", true), special(201, true), text("\n", false);
  ASSERT_EQ((*c)->doc_size(0), static_cast<int64_t>(want_ids.size()));

  std::shared_ptr<const TokenCorpus> corpus = std::move(*c);
  DatasetOptions o;
  o.seq_len = kT;
  o.seed = 1;
  // Packed reading of a masked corpus is refused.
  EXPECT_FALSE(Dataset::Create(o, corpus, corpus).ok());
  o.one_per_row = true;
  absl::StatusOr<std::unique_ptr<Dataset>> ds = Dataset::Create(o, corpus, corpus);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->num_train_sequences(), 2);
  EXPECT_EQ((*ds)->num_validation_sequences(), 2);
  EXPECT_EQ((*ds)->train_tokens_dropped(), 0);

  std::vector<int32_t> in(2 * kT), tg(2 * kT);
  absl::StatusOr<int64_t> rows = (*ds)->GetValidationBatch(0, 2, absl::MakeSpan(in), absl::MakeSpan(tg));
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(*rows, 2);
  const int32_t eos = tok->eos_id();
  EXPECT_EQ(eos, 201);
  for (int64_t t = 0; t < kT; ++t) {
    const size_t n = want_ids.size();
    EXPECT_EQ(in[t], t < static_cast<int64_t>(n) ? want_ids[t] : eos) << t;
    const bool target = t + 1 < static_cast<int64_t>(n) && want_trained[t + 1];
    EXPECT_EQ(tg[t], target ? want_ids[t + 1] : Dataset::kIgnoreIndex) << t;
  }
  // Row 1 starts with its own conversation (no packing): 3 + 1 assistant
  // content tokens and 2 <|im_end|> are its only targets.
  EXPECT_EQ(in[kT], 200);
  std::vector<int32_t> trained;
  for (int64_t t = kT; t < 2 * kT; ++t) {
    if (tg[t] != Dataset::kIgnoreIndex) trained.push_back(tg[t]);
  }
  EXPECT_EQ(trained, (std::vector<int32_t>{id('A'), 201, id('B'), id('C'), 201}));

  // Training batches read the same rows.
  std::vector<int32_t> bin(kT), btg(kT);
  absl::StatusOr<DataCursor> next = (*ds)->GetBatch(DataCursor{}, 1, RankSlice{}, absl::MakeSpan(bin),
                                                    absl::MakeSpan(btg));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(bin[0], 200);
  int64_t targets = 0;
  for (int32_t t : btg) targets += t != Dataset::kIgnoreIndex;
  EXPECT_TRUE(targets == 3 || targets == 5) << targets;
}

}  // namespace
}  // namespace sheaf
