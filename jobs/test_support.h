// Small fixtures for the jobs/ tests: a byte-vocab model shape and a corpus
// of repeated words (learnable structure) as a Dataset.
#ifndef SHEAF_JOBS_TEST_SUPPORT_H_
#define SHEAF_JOBS_TEST_SUPPORT_H_

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/data/document_source.h"
#include "core/data/token_corpus.h"
#include "core/data/tokenizer.h"
#include "core/model.h"

namespace sheaf::jobs::testing {

inline ModelConfig TinyConfig() {
  ModelConfig c;
  c.hidden_size = 32;
  c.num_layers = 2;
  c.head_dim = 8;
  c.vocab_size = 258;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = true;
  c.layers = {{4, 2, 64}, {4, 2, 64}};
  return c;
}

inline std::unique_ptr<Dataset> TinyDataset(int64_t seq_len, uint64_t seed, int docs = 30) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  const char* words[] = {"alpha ", "beta ", "gamma ", "delta ", "the cat sat. ", "on the mat\n"};
  std::vector<Document> d;
  for (int f = 0; f < docs; ++f) {
    Document doc;
    for (int w = 0; w < 40; ++w) doc.text += words[rng() % 6];
    doc.origin = "doc" + std::to_string(f);
    d.push_back(std::move(doc));
  }
  ByteTokenizer tok;
  std::shared_ptr<const TokenCorpus> corpus(InMemoryCorpus::FromDocuments(d, tok).value());
  DatasetOptions o;
  o.seq_len = seq_len;
  o.seed = seed;
  o.val_fraction = 0.2;
  return Dataset::Create(o, corpus, nullptr).value();
}

}  // namespace sheaf::jobs::testing

#endif  // SHEAF_JOBS_TEST_SUPPORT_H_
