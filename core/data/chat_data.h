// Chat / instruction data: JSONL files with one conversation per line,
//   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
// rendered to token ids by a built-in chat template (core/data/chat_template.h)
// with a loss mask that is 1 exactly on the assistant turns' tokens (content
// and end-of-turn token). The corpus holds complete samples for a Dataset
// with one_per_row (padded, never packed).
//
// Errors name the file and the 1-based line: a line that is not a JSON
// object, a key other than "messages" (or, in a message, other than "role"
// and "content"), a role other than system/user/assistant, a conversation
// without an assistant turn (nothing to train on), or one longer than
// max_tokens (seq_len + 1: it would be cut). Blank lines are skipped.
#ifndef SHEAF_CORE_DATA_CHAT_DATA_H_
#define SHEAF_CORE_DATA_CHAT_DATA_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/data/bpe_tokenizer.h"
#include "core/data/chat_template.h"
#include "core/data/token_corpus.h"

namespace sheaf {

// The chat template to render with. `name` (data.chat_template): "llama3"
// or "chatml" select a built-in one; "" or "auto" read the chat_template
// of `tokenizer_config` (a tokenizer_config.json path) and accept it only
// when it is, byte for byte up to surrounding whitespace, the Llama-3
// Instruct or the Qwen2 Instruct (ChatML) template; any other template, or
// none, is refused naming data.chat_template and the file.
absl::StatusOr<ChatFormat> ResolveChatTemplate(const std::string& name,
                                               const std::string& tokenizer_config);

// The Jinja sources of the built-in templates as transformers ships them.
const std::string& Llama3ChatTemplateSource();
const std::string& ChatMlChatTemplateSource();

// Parses one JSONL line ("where" = "path:line" for messages).
absl::StatusOr<std::vector<ChatMessage>> ParseChatLine(const std::string& line,
                                                       const std::string& where);

// Reads every conversation of `paths` (files, or directories: their regular
// files below, recursively, in sorted path order, dot-names skipped).
// `key` (data.train / data.val) prefixes the messages.
absl::StatusOr<std::unique_ptr<InMemoryCorpus>> LoadChatCorpus(
    absl::Span<const std::string> paths, ChatFormat format, const BpeTokenizer& tokenizer,
    int64_t max_tokens, const std::string& key);

}  // namespace sheaf

#endif  // SHEAF_CORE_DATA_CHAT_DATA_H_
