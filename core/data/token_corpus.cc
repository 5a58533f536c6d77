#include "core/data/token_corpus.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace sheaf {

absl::StatusOr<std::unique_ptr<InMemoryCorpus>> InMemoryCorpus::Create(
    const std::vector<std::vector<int32_t>>& docs, int32_t vocab_size,
    int32_t bos_id, int32_t eos_id) {
  if (vocab_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab_size must be positive, got ", vocab_size));
  }
  for (int32_t id : {bos_id, eos_id}) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "special token id ", id, " outside [0, ", vocab_size, ")"));
    }
  }
  auto corpus = std::unique_ptr<InMemoryCorpus>(new InMemoryCorpus());
  corpus->vocab_size_ = vocab_size;
  corpus->bos_id_ = bos_id;
  corpus->eos_id_ = eos_id;
  corpus->doc_offsets_.reserve(docs.size() + 1);
  corpus->doc_offsets_.push_back(0);
  for (size_t d = 0; d < docs.size(); ++d) {
    if (docs[d].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("document ", d, " has no tokens"));
    }
    for (int32_t id : docs[d]) {
      if (id < 0 || id >= vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("document ", d, " has token id ", id, " outside [0, ",
                         vocab_size, ")"));
      }
    }
    corpus->tokens_.insert(corpus->tokens_.end(), docs[d].begin(),
                           docs[d].end());
    corpus->doc_offsets_.push_back(
        static_cast<int64_t>(corpus->tokens_.size()));
  }
  return corpus;
}

absl::StatusOr<std::unique_ptr<InMemoryCorpus>> InMemoryCorpus::CreateMasked(
    const std::vector<std::vector<int32_t>>& docs,
    const std::vector<std::vector<uint8_t>>& masks, int32_t vocab_size,
    int32_t bos_id, int32_t eos_id) {
  if (masks.size() != docs.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        masks.size(), " loss masks for ", docs.size(), " documents"));
  }
  absl::StatusOr<std::unique_ptr<InMemoryCorpus>> corpus =
      Create(docs, vocab_size, bos_id, eos_id);
  if (!corpus.ok()) return corpus.status();
  for (size_t d = 0; d < docs.size(); ++d) {
    if (masks[d].size() != docs[d].size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("document ", d, " has ", docs[d].size(),
                       " tokens and a loss mask of ", masks[d].size()));
    }
    for (uint8_t m : masks[d]) (*corpus)->mask_.push_back(m != 0 ? 1 : 0);
  }
  return corpus;
}

void InMemoryCorpus::CopyLossMask(int64_t doc, int64_t begin, int64_t count,
                                  uint8_t* out) const {
  if (mask_.empty()) {
    std::fill(out, out + count, uint8_t{1});
    return;
  }
  const uint8_t* first = mask_.data() + doc_offsets_[doc] + begin;
  std::copy(first, first + count, out);
}

absl::StatusOr<std::unique_ptr<InMemoryCorpus>> InMemoryCorpus::FromDocuments(
    absl::Span<const Document> documents, const Tokenizer& tokenizer) {
  std::vector<std::vector<int32_t>> docs;
  docs.reserve(documents.size());
  for (const Document& document : documents) {
    docs.push_back(tokenizer.Encode(document.text));
  }
  return Create(docs, tokenizer.vocab_size(), tokenizer.bos_id(),
                tokenizer.eos_id());
}

void InMemoryCorpus::CopyTokens(int64_t doc, int64_t begin, int64_t count,
                                int32_t* out) const {
  const int32_t* first = tokens_.data() + doc_offsets_[doc] + begin;
  std::copy(first, first + count, out);
}

}  // namespace sheaf
