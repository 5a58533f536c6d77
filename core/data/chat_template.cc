#include "core/data/chat_template.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace sheaf {
namespace {

// Jinja's |trim: leading and trailing whitespace.
std::string Trim(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

}  // namespace

absl::StatusOr<ChatFormat> ParseChatFormat(const std::string& name) {
  if (name == "llama3") return ChatFormat::kChatFormatLlama3;
  if (name == "chatml") return ChatFormat::kChatFormatChatMl;
  return absl::InvalidArgumentError(absl::StrCat(
      "chat template \"", name, "\" is not built in (llama3, chatml; a general Jinja engine is not implemented)"));
}

absl::StatusOr<RenderedChat> RenderChat(ChatFormat format, absl::Span<const ChatMessage> messages,
                                        const BpeTokenizer& tok, bool add_generation_prompt) {
  const bool llama3 = format == ChatFormat::kChatFormatLlama3;
  const std::vector<std::string> specials =
      llama3 ? std::vector<std::string>{"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}
             : std::vector<std::string>{"<|im_start|>", "<|im_end|>"};
  for (const std::string& s : specials) {
    if (tok.TokenId(s) < 0) {
      return absl::InvalidArgumentError(absl::StrCat("chat template ", llama3 ? "llama3" : "chatml",
                                                     ": the tokenizer has no ", s, " token"));
    }
  }
  RenderedChat out;
  std::vector<std::pair<size_t, size_t>> spans;  // trained byte ranges of out.text
  auto add = [&](const std::string& s, bool trained) {
    if (trained) spans.emplace_back(out.text.size(), out.text.size() + s.size());
    out.text += s;
  };
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].role: \"", m.role,
                                                     "\" (use system, user or assistant)"));
    }
    const bool trained = m.role == "assistant";
    if (llama3) {
      if (i == 0) add("<|begin_of_text|>", false);
      add(absl::StrCat("<|start_header_id|>", m.role, "<|end_header_id|>\n\n"), false);
      add(Trim(m.content) + "<|eot_id|>", trained);
    } else {
      if (i == 0 && m.role != "system") add("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", false);
      add(absl::StrCat("<|im_start|>", m.role, "\n"), false);
      add(m.content + "<|im_end|>", trained);
      add("\n", false);
    }
  }
  if (add_generation_prompt) {
    add(llama3 ? "<|start_header_id|>assistant<|end_header_id|>\n\n" : "<|im_start|>assistant\n", false);
  }
  out.ids = tok.Encode(out.text);
  size_t pos = 0;
  for (int32_t id : out.ids) {
    const int32_t one[1] = {id};
    // Decode skips BOS/EOS ids; their text is the token itself.
    absl::StatusOr<std::string> piece = tok.Decode(absl::MakeConstSpan(one, 1));
    size_t len = piece.ok() ? piece->size() : 0;
    if (len == 0 && (id == tok.bos_id() || id == tok.eos_id())) {
      // find the special's literal at pos
      for (const std::string& s : specials) {
        if (tok.TokenId(s) == id) len = s.size();
      }
    }
    bool trained = false;
    for (const auto& [b, e] : spans) trained |= pos < e && pos + len > b;
    out.trained.push_back(trained ? 1 : 0);
    pos += len;
  }
  return out;
}

}  // namespace sheaf
