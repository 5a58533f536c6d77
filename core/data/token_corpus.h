// TokenCorpus: a read-only list of tokenised documents, the input of Dataset.
// Two implementations: TokenFile (a memory-mapped .tok file, for real
// corpora) and InMemoryCorpus (for tests and corpora small enough to tokenise
// at start-up). Dataset reads documents through this interface so it never
// needs a second copy of a corpus in memory.
#ifndef SHEAF_CORE_DATA_TOKEN_CORPUS_H_
#define SHEAF_CORE_DATA_TOKEN_CORPUS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/data/document_source.h"
#include "core/data/tokenizer.h"

namespace sheaf {

// Immutable after creation; all methods are safe to call from any thread.
// Documents hold only the tokens of their text: BOS/EOS are added by the
// Dataset, and every id is in [0, vocab_size()).
class TokenCorpus {
 public:
  virtual ~TokenCorpus() = default;

  virtual int64_t num_docs() const = 0;
  virtual int64_t num_tokens() const = 0;
  virtual int64_t doc_size(int64_t doc) const = 0;
  // Copies tokens [begin, begin + count) of document `doc` to `out`. The
  // caller guarantees doc < num_docs() and begin + count <= doc_size(doc).
  virtual void CopyTokens(int64_t doc, int64_t begin, int64_t count,
                          int32_t* out) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;

  // A per-token loss mask (chat data: 1 on assistant tokens). A corpus with
  // one holds complete samples (the chat template's own BOS / end-of-turn
  // tokens included) that a Dataset reads one per row, never packed.
  virtual bool has_loss_mask() const { return false; }
  // Mask of tokens [begin, begin + count) of `doc` (1 = the token is a
  // target); all ones without a mask. Same preconditions as CopyTokens.
  virtual void CopyLossMask(int64_t doc, int64_t begin, int64_t count,
                            uint8_t* out) const {
    (void)doc;
    (void)begin;
    for (int64_t i = 0; i < count; ++i) out[i] = 1;
  }
};

class InMemoryCorpus final : public TokenCorpus {
 public:
  // Returns InvalidArgument when an id is outside [0, vocab_size), when
  // bos_id or eos_id is, or when a document is empty.
  static absl::StatusOr<std::unique_ptr<InMemoryCorpus>> Create(
      const std::vector<std::vector<int32_t>>& docs, int32_t vocab_size,
      int32_t bos_id, int32_t eos_id);

  // As Create, with a loss mask: masks[d] has one 0/1 per token of docs[d]
  // (InvalidArgument when a size differs).
  static absl::StatusOr<std::unique_ptr<InMemoryCorpus>> CreateMasked(
      const std::vector<std::vector<int32_t>>& docs,
      const std::vector<std::vector<uint8_t>>& masks, int32_t vocab_size,
      int32_t bos_id, int32_t eos_id);

  // Tokenises `documents` with `tokenizer`. Errors: as Create.
  static absl::StatusOr<std::unique_ptr<InMemoryCorpus>> FromDocuments(
      absl::Span<const Document> documents, const Tokenizer& tokenizer);

  int64_t num_docs() const override {
    return static_cast<int64_t>(doc_offsets_.size()) - 1;
  }
  int64_t num_tokens() const override {
    return static_cast<int64_t>(tokens_.size());
  }
  int64_t doc_size(int64_t doc) const override {
    return doc_offsets_[doc + 1] - doc_offsets_[doc];
  }
  void CopyTokens(int64_t doc, int64_t begin, int64_t count,
                  int32_t* out) const override;

  int32_t vocab_size() const override { return vocab_size_; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool has_loss_mask() const override { return !mask_.empty(); }
  void CopyLossMask(int64_t doc, int64_t begin, int64_t count,
                    uint8_t* out) const override;

 private:
  InMemoryCorpus() = default;

  std::vector<int32_t> tokens_;       // all documents back to back
  std::vector<uint8_t> mask_;         // empty, or one per token of tokens_
  std::vector<int64_t> doc_offsets_;  // (num_docs + 1), into tokens_
  int32_t vocab_size_ = 0;
  int32_t bos_id_ = 0;
  int32_t eos_id_ = 0;
};

}  // namespace sheaf

#endif  // SHEAF_CORE_DATA_TOKEN_CORPUS_H_
