#include "core/data/tokenizer.h"

#include "absl/strings/str_cat.h"

namespace sheaf {

std::vector<int32_t> ByteTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> tokens;
  tokens.reserve(text.size());
  for (char c : text) {
    // Through unsigned char: plain char is signed on x86, and bytes >= 0x80
    // (every byte of a non-ASCII UTF-8 character) must map to 128..255.
    tokens.push_back(static_cast<unsigned char>(c));
  }
  return tokens;
}

absl::StatusOr<std::string> ByteTokenizer::Decode(
    absl::Span<const int32_t> tokens) const {
  std::string text;
  text.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t id = tokens[i];
    if (id == kBosId || id == kEosId) continue;
    if (id < 0 || id > 255) {
      return absl::InvalidArgumentError(
          absl::StrCat("ByteTokenizer::Decode: token ", i, " has id ", id,
                       ", outside [0, ", kVocabSize, ")"));
    }
    text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
  }
  return text;
}

}  // namespace sheaf
