#include "core/data/token_corpus.h"

#include <vector>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

TEST(InMemoryCorpusTest, FromDocumentsTokenises) {
  ByteTokenizer tokenizer;
  const std::vector<Document> documents = {{"ab", "x"}, {"\xC3\xA9", "y"}};
  auto corpus = InMemoryCorpus::FromDocuments(documents, tokenizer);
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  ASSERT_EQ((*corpus)->num_docs(), 2);
  EXPECT_EQ((*corpus)->num_tokens(), 4);
  EXPECT_EQ((*corpus)->vocab_size(), 258);
  EXPECT_EQ((*corpus)->bos_id(), 256);
  int32_t tokens[2];
  (*corpus)->CopyTokens(1, 0, 2, tokens);
  EXPECT_EQ(tokens[0], 0xC3);
  EXPECT_EQ(tokens[1], 0xA9);
}

TEST(InMemoryCorpusTest, RejectsBadIdsAndEmptyDocuments) {
  EXPECT_FALSE(InMemoryCorpus::Create({{1, 10}}, 10, 8, 9).ok());
  EXPECT_FALSE(InMemoryCorpus::Create({{-1}}, 10, 8, 9).ok());
  EXPECT_FALSE(InMemoryCorpus::Create({{1}, {}}, 10, 8, 9).ok());
  EXPECT_FALSE(InMemoryCorpus::Create({{1}}, 10, 8, 10).ok());
  EXPECT_TRUE(InMemoryCorpus::Create({{1}}, 10, 8, 9).ok());
}

}  // namespace
}  // namespace sheaf
