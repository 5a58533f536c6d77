#include "core/data/chat_data.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/open_beneath.h"
#include "base/status.h"
#include "core/json.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;

std::string Strip(const std::string& s) {
  const char* ws = " \t\n\r";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// Regular files of `path` (itself, or below it when a directory).
absl::StatusOr<std::vector<std::string>> FilesOf(const std::string& path, const std::string& key) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) return absl::NotFoundError(absl::StrCat(key, ": no such file or directory: ", path));
  if (!fs::is_directory(st)) return std::vector<std::string>{path};
  // Listed beneath the roots (base/open_beneath.h), dot-names skipped.
  absl::StatusOr<std::vector<std::string>> files = ListFilesInsideRoots(path);
  if (!files.ok()) {
    return absl::Status(files.status().code(), absl::StrCat(key, ": ", files.status().message()));
  }
  if (files->empty()) return absl::InvalidArgumentError(absl::StrCat(key, ": ", path, " has no files"));
  return *std::move(files);
}

}  // namespace

const std::string& Llama3ChatTemplateSource() {
  static const std::string* s = new std::string(
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
      "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim "
      "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
      "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
      "<|end_header_id|>\\n\\n' }}{% endif %}");
  return *s;
}

const std::string& ChatMlChatTemplateSource() {
  static const std::string* s = new std::string(
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
      "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
      "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
      "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}");
  return *s;
}

absl::StatusOr<ChatFormat> ResolveChatTemplate(const std::string& name,
                                               const std::string& tokenizer_config) {
  if (!name.empty() && name != "auto") {
    absl::StatusOr<ChatFormat> f = ParseChatFormat(name);
    if (!f.ok()) return absl::InvalidArgumentError(absl::StrCat("data.chat_template: ", f.status().message()));
    return f;
  }
  std::ifstream in(tokenizer_config, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.chat_template: auto needs the model's tokenizer_config.json with a chat_template, and ",
        tokenizer_config, " cannot be read; set data.chat_template to llama3 or chatml"));
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  absl::StatusOr<Json> j = Json::Parse(text);
  if (!j.ok() || !j->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("data.chat_template: ", tokenizer_config, " is not a JSON object"));
  }
  const Json* t = j->Find("chat_template");
  if (t == nullptr || t->is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.chat_template: ", tokenizer_config,
        " has no chat_template; set data.chat_template to llama3 or chatml"));
  }
  if (!t->is_string()) {
    // A list of named templates (tool use, RAG): not one of ours.
    return absl::InvalidArgumentError(absl::StrCat(
        "data.chat_template: the chat_template of ", tokenizer_config,
        " is not a single template string (named templates are not supported); set "
        "data.chat_template to llama3 or chatml"));
  }
  const std::string src = Strip(t->as_string());
  if (src == Llama3ChatTemplateSource()) return ChatFormat::kChatFormatLlama3;
  if (src == ChatMlChatTemplateSource()) return ChatFormat::kChatFormatChatMl;
  return absl::InvalidArgumentError(absl::StrCat(
      "data.chat_template: the chat_template of ", tokenizer_config,
      " is not one of the built-in templates (Llama-3 Instruct, Qwen2 ChatML; a general Jinja "
      "engine is not implemented); set data.chat_template to llama3 or chatml if it renders "
      "the same"));
}

namespace {

// A JSON list of {"role", "content"} messages; `field` names it in errors
// ("messages", "prompt", "completion").
absl::Status ParseMessages(const Json& list, const std::string& where, const std::string& field,
                           std::vector<ChatMessage>* out) {
  if (!list.is_array() || list.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": \"", field, "\" must be a non-empty list of {\"role\", \"content\"}"));
  }
  for (size_t i = 0; i < list.size(); ++i) {
    const Json& m = list[i];
    const std::string at = absl::StrCat(where, ": ", field, "[", i, "]");
    if (!m.is_object()) return absl::InvalidArgumentError(absl::StrCat(at, ": not an object"));
    const Json* role = nullptr;
    const Json* content = nullptr;
    for (const auto& [k, v] : m.items()) {
      if (k == "role") {
        role = &v;
      } else if (k == "content") {
        content = &v;
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            at, ": unknown key \"", k, "\" (a message has only \"role\" and \"content\")"));
      }
    }
    if (role == nullptr || !role->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(at, ".role: missing or not a string"));
    }
    if (content == nullptr || !content->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(at, ".content: missing or not a string"));
    }
    const std::string& r = role->as_string();
    if (r != "system" && r != "user" && r != "assistant") {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ".role: unknown role \"", r, "\" (use system, user or assistant)"));
    }
    out->push_back({r, content->as_string()});
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<ChatMessage>> ParseChatLine(const std::string& line,
                                                       const std::string& where) {
  absl::StatusOr<Json> j = Json::Parse(line);
  if (!j.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": not JSON: ", j.status().message()));
  if (!j->is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
  const Json* messages = nullptr;
  const Json* prompt = nullptr;
  const Json* completion = nullptr;
  for (const auto& [k, v] : j->items()) {
    if (k == "messages") {
      messages = &v;
    } else if (k == "prompt") {
      prompt = &v;
    } else if (k == "completion") {
      completion = &v;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": unknown key \"", k,
          "\" (a chat line has \"messages\", or \"prompt\" and \"completion\")"));
    }
  }
  std::vector<ChatMessage> out;
  if (messages != nullptr) {
    if (prompt != nullptr || completion != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": \"messages\" together with \"prompt\"/\"completion\"; use one form"));
    }
    RETURN_IF_ERROR(ParseMessages(*messages, where, "messages", &out));
  } else if (prompt != nullptr || completion != nullptr) {
    // Instruction data: the prompt is the user's turn (or a list of
    // messages before the answer), the completion the assistant's (or a list
    // of assistant messages); both rendered by the chat template.
    if (prompt == nullptr || completion == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": \"", prompt == nullptr ? "prompt" : "completion", "\" is missing (a line with \"",
          prompt == nullptr ? "completion" : "prompt", "\" needs both)"));
    }
    // A string is one message of `role`; a list is messages as they are.
    auto take = [&](const Json& v, const char* field, const char* role) -> absl::Status {
      if (v.is_string()) {
        out.push_back({role, v.as_string()});
        return absl::OkStatus();
      }
      if (v.is_array()) return ParseMessages(v, where, field, &out);
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": \"", field, "\" must be a string or a list of messages"));
    };
    RETURN_IF_ERROR(take(*prompt, "prompt", "user"));
    const size_t first_completion = out.size();
    RETURN_IF_ERROR(take(*completion, "completion", "assistant"));
    for (size_t i = first_completion; i < out.size(); ++i) {
      if (out[i].role != "assistant") {
        return absl::InvalidArgumentError(absl::StrCat(where, ": completion[", i - first_completion,
                                                       "].role: the completion's messages must be the assistant's"));
      }
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": \"messages\" must be a non-empty list of {\"role\", \"content\"} (or give "
        "\"prompt\" and \"completion\")"));
  }
  bool assistant = false;
  for (const ChatMessage& m : out) assistant |= m.role == "assistant";
  if (!assistant) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": no assistant message (nothing to train on)"));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<InMemoryCorpus>> LoadChatCorpus(
    absl::Span<const std::string> paths, ChatFormat format, const BpeTokenizer& tokenizer,
    int64_t max_tokens, const std::string& key) {
  std::vector<std::vector<int32_t>> docs;
  std::vector<std::vector<uint8_t>> masks;
  for (const std::string& path : paths) {
    absl::StatusOr<std::vector<std::string>> files = FilesOf(path, key);
    if (!files.ok()) return files.status();
    for (const std::string& file : *files) {
      std::ifstream in(file, std::ios::binary);
      if (!in) return absl::NotFoundError(absl::StrCat(key, ": cannot open ", file));
      std::string line;
      int64_t n = 0;
      while (std::getline(in, line)) {
        ++n;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (Strip(line).empty()) continue;
        const std::string where = absl::StrCat(key, ": ", file, ":", n);
        absl::StatusOr<std::vector<ChatMessage>> msgs = ParseChatLine(line, where);
        if (!msgs.ok()) return msgs.status();
        absl::StatusOr<RenderedChat> r = RenderChat(format, *msgs, tokenizer, false);
        if (!r.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", r.status().message()));
        if (static_cast<int64_t>(r->ids.size()) > max_tokens) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, ": the conversation is ", r->ids.size(), " tokens, more than data.seq_len + 1 = ",
              max_tokens, " (it would be cut; raise data.seq_len or split it)"));
        }
        docs.push_back(std::move(r->ids));
        masks.push_back(std::move(r->trained));
      }
    }
  }
  if (docs.empty()) return absl::InvalidArgumentError(absl::StrCat(key, ": no conversation found"));
  absl::StatusOr<std::unique_ptr<InMemoryCorpus>> c = InMemoryCorpus::CreateMasked(
      docs, masks, tokenizer.vocab_size(), tokenizer.bos_id(), tokenizer.eos_id());
  if (!c.ok()) return absl::InvalidArgumentError(absl::StrCat(key, ": ", c.status().message()));
  return c;
}

}  // namespace sheaf
