// Byte-level BPE from a Hugging Face tokenizer.json (GPT-2, Llama-3 and
// Qwen2 families), computing what the `tokenizers` library computes for
// encode(text, add_special_tokens=False):
//
//   1. added tokens (tokenizer.json's added_tokens, special or not) are cut
//      out of the raw text first, leftmost-longest;
//   2. the rest is normalised (null, or NFC through ICU);
//   3. pre-tokenised: Split pre-tokenizers (a regex, PCRE2 with Unicode
//      properties, "Isolated" behaviour) and the ByteLevel pre-tokenizer
//      (its GPT-2 regex when use_regex, add_prefix_space), then every byte
//      mapped to GPT-2's printable stand-in (bytes_to_unicode);
//   4. each piece: one token when ignore_merges and it is in the vocab,
//      else split into characters and merged pair by pair, lowest merge
//      rank first (leftmost on ties).
// Decode reverses the byte mapping per token (a token with a character
// outside the mapping, such as an added token with a space, is copied as
// it is, as the ByteLevel decoder does) and returns the raw bytes (the
// library then replaces invalid UTF-8 by U+FFFD; sheaf keeps the bytes).
// Anything else in the file (WordPiece / Unigram models, Metaspace or
// BERT pre-tokenizers, Replace / Lowercase normalisers, BPE dropout,
// byte_fallback, lstrip/rstrip added tokens ...) is refused naming the
// component and the file.
//
// Special ids: bos/eos/pad from tokenizer_config.json (bos_token,
// eos_token, pad_token, add_bos_token) beside the file, else
// generation_config.json / config.json's ids. A tokenizer without BOS
// (Qwen2) reports adds_bos() false; bos_id() then returns the EOS id, which
// the dataset places before each document as the separator Qwen2 was
// pre-trained with.
//
// Invalid UTF-8 input never fails: maximal valid runs go through the
// pipeline, every invalid byte becomes a piece of its own.
//
// Immutable after Load except for a bounded cache of encoded pieces
// (mutex-guarded); Encode and Decode are safe to call concurrently.
#ifndef SHEAF_CORE_DATA_BPE_TOKENIZER_H_
#define SHEAF_CORE_DATA_BPE_TOKENIZER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/data/tokenizer.h"

namespace sheaf {

class BpeTokenizer final : public Tokenizer {
 public:
  // Reads `path` (a tokenizer.json) and the special-token files beside it.
  // InvalidArgument naming the file and the component for what is not
  // supported; NotFound for a missing file.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Load(const std::string& path);
  ~BpeTokenizer() override;

  std::vector<int32_t> Encode(std::string_view text) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> tokens) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  int32_t bos_id() const override { return bos_id_ >= 0 ? bos_id_ : eos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  // Whether the model's template starts sequences with a BOS token.
  bool adds_bos() const { return bos_id_ >= 0 && add_bos_; }
  int32_t pad_id() const { return pad_id_; }
  // Id of a token string (vocab or added token), -1 when absent.
  int32_t TokenId(std::string_view token) const;

 private:
  struct Regex;  // a compiled PCRE2 pattern
  BpeTokenizer() = default;
  // Appends the ids of one pre-tokenized, byte-mapped piece.
  void EncodePiece(std::string_view mapped, std::vector<int32_t>* out) const;
  // Steps 2-4 on a segment with no added token inside.
  void EncodeSegment(std::string_view text, std::vector<int32_t>* out) const;
  void EncodeValidUtf8(std::string_view text, std::vector<int32_t>* out) const;

  std::string path_;
  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;  // vocab and added tokens
  std::vector<bool> is_added_;
  // (left id, right id) -> (rank, merged id), keyed as left << 32 | right.
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  struct Added {
    std::string content;
    int32_t id;
  };
  std::vector<Added> added_;  // longest first
  bool nfc_ = false;
  std::vector<std::unique_ptr<Regex>> splits_;  // Split pre-tokenizers, in order
  std::unique_ptr<Regex> byte_level_regex_;     // ByteLevel use_regex
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  int32_t vocab_size_ = 0;
  int32_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
  bool add_bos_ = false;
  std::string byte_to_unicode_[256];
  absl::flat_hash_map<uint32_t, uint8_t> unicode_to_byte_;
  // Mapped piece -> ids; cleared when it reaches kCacheEntries.
  static constexpr size_t kCacheEntries = 1 << 16;
  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace sheaf

#endif  // SHEAF_CORE_DATA_BPE_TOKENIZER_H_
