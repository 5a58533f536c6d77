// SentencePiece tokenizer.model (Llama-2 / Mistral) through Debian's
// libsentencepiece: Encode is the library's EncodeAsIds (the model's own
// normaliser and dummy prefix, no BOS/EOS), Decode its DecodeIds with BOS
// and EOS left out. Special ids are the model's (bos_id may be -1: then
// adds_bos() is false and bos_id() returns EOS, as BpeTokenizer does).
// Thread-safe: the library's processor is const after Load.
#ifndef SHEAF_CORE_DATA_SENTENCEPIECE_TOKENIZER_H_
#define SHEAF_CORE_DATA_SENTENCEPIECE_TOKENIZER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/data/sentencepiece_impl.h"
#include "core/data/tokenizer.h"

namespace sheaf {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // InvalidArgument naming the file when the library cannot load it (or it
  // has no EOS); NotFound when it does not exist.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Load(const std::string& path);

  std::vector<int32_t> Encode(std::string_view text) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> tokens) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  int32_t bos_id() const override { return bos_id_ >= 0 ? bos_id_ : eos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool adds_bos() const { return bos_id_ >= 0; }

 private:
  SentencePieceTokenizer() = default;
  std::string path_;
  std::unique_ptr<spm::Processor> sp_;
  int32_t vocab_size_ = 0, bos_id_ = -1, eos_id_ = -1;
};

}  // namespace sheaf

#endif  // SHEAF_CORE_DATA_SENTENCEPIECE_TOKENIZER_H_
