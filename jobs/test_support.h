// Small fixtures for the jobs/ tests: a byte-vocab model shape and a corpus
// of repeated words (learnable structure) as a Dataset.
#ifndef SHEAF_JOBS_TEST_SUPPORT_H_
#define SHEAF_JOBS_TEST_SUPPORT_H_

#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/data/document_source.h"
#include "core/data/token_corpus.h"
#include "core/data/tokenizer.h"
#include "core/model.h"
#include "gtest/gtest.h"

namespace sheaf::jobs::testing {

// Seeded pseudo-text files: 80 documents of a few hundred bytes in
// TempDir()/`name`; returns the directory.
inline std::string WriteCorpus(const std::string& name, uint64_t seed) {
  const std::string dir = (std::filesystem::path(::testing::TempDir()) / name).string();
  std::filesystem::create_directories(dir);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  const char* words[] = {"the ", "file ", "is ", "read ", "when ", "a ", "process ", "opens ",
                         "it. ", "options:\n", "-v ", "print ", "more.\n"};
  for (int f = 0; f < 80; ++f) {
    std::string text;
    for (int w = 0; w < 80; ++w) text += words[rng() % 13];
    std::ofstream(dir + "/doc" + std::to_string(f) + ".txt") << text;
  }
  return dir;
}


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
