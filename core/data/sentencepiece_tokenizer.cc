#include "core/data/sentencepiece_tokenizer.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace sheaf {

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Load(
    const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path));
  }
  std::unique_ptr<SentencePieceTokenizer> t(new SentencePieceTokenizer());
  std::string error;
  t->sp_ = spm::Processor::Load(path, &error);
  if (t->sp_ == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot be loaded as a SentencePiece model: ", error));
  }
  t->path_ = path;
  t->vocab_size_ = t->sp_->PieceSize();
  t->bos_id_ = t->sp_->BosId();
  t->eos_id_ = t->sp_->EosId();
  if (t->eos_id_ < 0 || t->eos_id_ >= t->vocab_size_) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the model has no EOS piece (eos_id ", t->eos_id_, ")"));
  }
  return t;
}

std::vector<int32_t> SentencePieceTokenizer::Encode(std::string_view text) const {
  const std::vector<int> ids = sp_->Encode(text);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

absl::StatusOr<std::string> SentencePieceTokenizer::Decode(absl::Span<const int32_t> tokens) const {
  std::vector<int> ids;
  ids.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": Decode: token ", i, " has id ",
                                                     tokens[i], ", outside [0, ", vocab_size_, ")"));
    }
    if (tokens[i] == bos_id_ || tokens[i] == eos_id_) continue;
    ids.push_back(tokens[i]);
  }
  return sp_->Decode(ids);
}

}  // namespace sheaf
