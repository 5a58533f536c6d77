// SentencePiece through the dlopen'ed shim in a process that also uses
// libprotobuf (what crashed when libsentencepiece was linked directly): the
// model loads and encodes as the Python sentencepiece package 0.2.0 does.
// testdata/tiny_spm.model (367 bytes) was trained by that package:
//   SentencePieceTrainer.train(sentence_iterator=iter(["the cat sat on the mat",
//     "a dog and a cat", "hello world, hello sheaf", "Straße und Größe",
//     "the end"] * 30), vocab_size=30, model_type="unigram",
//     character_coverage=1.0, normalization_rule_name="identity")
// and the expected ids below are its sp.encode() output.
#include "core/data/sentencepiece_tokenizer.h"

#include <cstdlib>
#include <fstream>

#include "gtest/gtest.h"
#include "proto/job_spec.pb.h"

namespace sheaf {
namespace {

std::string ModelPath() {
  for (const char* base : {"TEST_SRCDIR", "RUNFILES_DIR"}) {
    if (const char* e = std::getenv(base); e != nullptr) {
      return std::string(e) + "/sheaf/core/data/testdata/tiny_spm.model";
    }
  }
  return "core/data/testdata/tiny_spm.model";
}

TEST(SentencePieceDl, LoadsBesideLibprotobufAndMatchesThePythonPackage) {
  // Really use libprotobuf in this process (not only link it).
  proto::JobSpec spec;
  spec.set_name("protobuf is live");
  ASSERT_FALSE(spec.SerializeAsString().empty());

  absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> t = SentencePieceTokenizer::Load(ModelPath());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 30);
  EXPECT_EQ((*t)->bos_id(), 1);
  EXPECT_EQ((*t)->eos_id(), 2);
  EXPECT_TRUE((*t)->adds_bos());
  EXPECT_EQ((*t)->Encode("the cat sat"), (std::vector<int32_t>{3, 7, 4, 3, 27, 10, 7, 14, 10, 7}));
  EXPECT_EQ((*t)->Encode("hello Größe"), (std::vector<int32_t>{3, 4, 5, 5, 6, 3, 19, 8, 25, 13}));
  EXPECT_EQ((*t)->Encode("zzz"), (std::vector<int32_t>{3, 0}));
  absl::StatusOr<std::string> d = (*t)->Decode({1, 3, 4, 5, 5, 6, 3, 19, 8, 25, 13, 2});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, "hello Größe");  // BOS / EOS decode to nothing

  std::ofstream(::testing::TempDir() + "/bad.model") << "not a model";
  absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> bad =
      SentencePieceTokenizer::Load(::testing::TempDir() + "/bad.model");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("cannot be loaded as a SentencePiece model"), std::string::npos)
      << bad.status();
}

}  // namespace
}  // namespace sheaf
