// Tokenizers turn text into the integer ids a model is trained on. Everything
// downstream (token files, datasets, sampling) talks to the `Tokenizer`
// interface so that the byte-level tokenizer used today can be swapped for a
// BPE tokenizer without touching the data pipeline.
#ifndef SHEAF_CORE_DATA_TOKENIZER_H_
#define SHEAF_CORE_DATA_TOKENIZER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace sheaf {

// Maps text to token ids and back. Implementations are immutable after
// construction, so one instance may be shared by any number of threads.
//
// Every id lies in [0, vocab_size()). bos_id() and eos_id() are reserved ids
// that Encode() never produces; the data pipeline places them around each
// document.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Never fails: every byte string has an encoding.
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;

  // Concatenates the text of `tokens`; BOS and EOS decode to nothing.
  // Returns InvalidArgument for an id outside [0, vocab_size()).
  virtual absl::StatusOr<std::string> Decode(
      absl::Span<const int32_t> tokens) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
};

// Byte-level tokenizer: byte b is token b (0..255), BOS = 256, EOS = 257.
// Lossless for any input, including invalid UTF-8, at the price of long
// sequences (one token per byte, so a non-ASCII character costs 2-4 tokens).
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kBosId = 256;
  static constexpr int32_t kEosId = 257;
  static constexpr int32_t kVocabSize = 258;

  std::vector<int32_t> Encode(std::string_view text) const override;
  absl::StatusOr<std::string> Decode(
      absl::Span<const int32_t> tokens) const override;

  int32_t vocab_size() const override { return kVocabSize; }
  int32_t bos_id() const override { return kBosId; }
  int32_t eos_id() const override { return kEosId; }
};

}  // namespace sheaf

#endif  // SHEAF_CORE_DATA_TOKENIZER_H_
