// Built-in chat templates (no general Jinja engine): a conversation
// rendered to token ids exactly as transformers' apply_chat_template does
// with these templates, plus which tokens carry the loss (the assistant
// turns' content and their end-of-turn token: label masking).
//
//   llama3  <|begin_of_text|> then per message
//           <|start_header_id|>ROLE<|end_header_id|>\n\n TRIM(CONTENT) <|eot_id|>
//           (Meta-Llama-3-Instruct's template)
//   chatml  per message <|im_start|>ROLE\nCONTENT<|im_end|>\n, with Qwen2's
//           default system turn "You are a helpful assistant." when the
//           first message is not a system one (Qwen2-Instruct's template)
// add_generation_prompt appends the assistant header.
//
// The whole text is tokenised at once (as apply_chat_template does); a
// token is trained when its bytes overlap a trained span.
#ifndef SHEAF_CORE_DATA_CHAT_TEMPLATE_H_
#define SHEAF_CORE_DATA_CHAT_TEMPLATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/data/bpe_tokenizer.h"

namespace sheaf {

enum class ChatFormat { kChatFormatLlama3, kChatFormatChatMl };

// "llama3" or "chatml"; InvalidArgument naming the others.
absl::StatusOr<ChatFormat> ParseChatFormat(const std::string& name);

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
};

struct RenderedChat {
  std::string text;
  std::vector<int32_t> ids;
  std::vector<uint8_t> trained;  // per id: 1 = loss on this token
};

// InvalidArgument when the tokenizer lacks the template's special tokens,
// or a role is not system / user / assistant.
absl::StatusOr<RenderedChat> RenderChat(ChatFormat format, absl::Span<const ChatMessage> messages,
                                        const BpeTokenizer& tokenizer, bool add_generation_prompt);

}  // namespace sheaf

#endif  // SHEAF_CORE_DATA_CHAT_TEMPLATE_H_
