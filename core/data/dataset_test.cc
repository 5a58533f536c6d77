#include "core/data/dataset.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/data/token_corpus.h"
#include "core/data/token_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

using ::testing::HasSubstr;

constexpr int32_t kVocab = 1 << 20;
constexpr int32_t kBos = 0;
constexpr int32_t kEos = 1;

// Documents whose tokens are all distinct across the corpus (ids from
// `first_id` up), so any token identifies its document; lengths vary 1..13.
std::vector<std::vector<int32_t>> DistinctDocs(int num_docs,
                                               int32_t first_id = 2) {
  std::vector<std::vector<int32_t>> docs(num_docs);
  int32_t next = first_id;
  for (int d = 0; d < num_docs; ++d) {
    const int len = 1 + (d * 7) % 13;
    for (int i = 0; i < len; ++i) docs[d].push_back(next++);
  }
  return docs;
}

std::shared_ptr<const TokenCorpus> Corpus(
    const std::vector<std::vector<int32_t>>& docs) {
  absl::StatusOr<std::unique_ptr<InMemoryCorpus>> corpus =
      InMemoryCorpus::Create(docs, kVocab, kBos, kEos);
  EXPECT_TRUE(corpus.ok()) << corpus.status();
  return std::move(*corpus);
}

std::unique_ptr<Dataset> MakeDataset(
    const std::vector<std::vector<int32_t>>& docs, DatasetOptions options) {
  absl::StatusOr<std::unique_ptr<Dataset>> ds =
      Dataset::Create(options, Corpus(docs));
  EXPECT_TRUE(ds.ok()) << ds.status();
  return std::move(*ds);
}

// The reference split stream: BOS + doc + EOS for each listed document.
std::vector<int32_t> Stream(const std::vector<std::vector<int32_t>>& docs,
                            const std::vector<int64_t>& which) {
  std::vector<int32_t> stream;
  for (int64_t d : which) {
    stream.push_back(kBos);
    stream.insert(stream.end(), docs[d].begin(), docs[d].end());
    stream.push_back(kEos);
  }
  return stream;
}

struct Batch {
  std::vector<int32_t> inputs;
  std::vector<int32_t> targets;
  bool operator==(const Batch&) const = default;
};

Batch GetBatch(const Dataset& ds, DataCursor* cursor, int64_t b,
               RankSlice slice = {}) {
  Batch batch{std::vector<int32_t>(b * ds.seq_len()),
              std::vector<int32_t>(b * ds.seq_len())};
  absl::StatusOr<DataCursor> next =
      ds.GetBatch(*cursor, b, slice, absl::MakeSpan(batch.inputs),
                  absl::MakeSpan(batch.targets));
  EXPECT_TRUE(next.ok()) << next.status();
  if (next.ok()) *cursor = *next;
  return batch;
}

TEST(DatasetTest, SplitNeverLeaksADocument) {
  const auto docs = DistinctDocs(300);
  auto ds = MakeDataset(docs, {.seq_len = 16, .seed = 7, .val_fraction = 0.25});
  // Every document is in exactly one split.
  std::vector<int64_t> all = ds->train_docs();
  all.insert(all.end(), ds->validation_docs().begin(),
             ds->validation_docs().end());
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), docs.size());
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i], int64_t(i));
  EXPECT_GT(ds->validation_docs().size(), 40u);
  EXPECT_LT(ds->validation_docs().size(), 110u);

  std::set<int32_t> validation_tokens;
  for (int64_t d : ds->validation_docs()) {
    validation_tokens.insert(docs[d].begin(), docs[d].end());
  }
  // One whole epoch of train batches.
  DataCursor cursor;
  const int64_t b = 4;
  std::set<int32_t> train_seen;
  for (int64_t i = 0; i < ds->num_train_sequences(); i += b) {
    Batch batch = GetBatch(*ds, &cursor, b);
    train_seen.insert(batch.inputs.begin(), batch.inputs.end());
    train_seen.insert(batch.targets.begin(), batch.targets.end());
  }
  for (int32_t id : train_seen) {
    EXPECT_EQ(validation_tokens.count(id), 0u) << "token " << id;
  }
  // And validation batches hold validation tokens only.
  std::vector<int32_t> in(3 * 16), tg(3 * 16);
  for (int64_t first = 0; first < ds->num_validation_sequences(); first += 3) {
    ASSERT_TRUE(
        ds->GetValidationBatch(first, 3, absl::MakeSpan(in), absl::MakeSpan(tg))
            .ok());
    for (int32_t id : in) {
      if (id > kEos) {
        EXPECT_EQ(validation_tokens.count(id), 1u) << id;
      }
    }
  }
}

TEST(DatasetTest, SeparateValidationCorpus) {
  const auto train_docs = DistinctDocs(20);
  const auto val_docs = DistinctDocs(3, /*first_id=*/100000);
  absl::StatusOr<std::unique_ptr<Dataset>> ds = Dataset::Create(
      {.seq_len = 8, .seed = 1}, Corpus(train_docs), Corpus(val_docs));
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->train_docs().size(), 20u);
  EXPECT_EQ((*ds)->validation_docs().size(), 3u);
  const std::vector<int32_t> stream = Stream(val_docs, {0, 1, 2});
  std::vector<int32_t> in(100 * 8), tg(100 * 8);
  absl::StatusOr<int64_t> rows =
      (*ds)->GetValidationBatch(0, 100, absl::MakeSpan(in), absl::MakeSpan(tg));
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(*rows, (*ds)->num_validation_sequences());
  for (size_t i = 0; i + 1 < stream.size(); ++i) {
    EXPECT_EQ(in[i], stream[i]);
    EXPECT_EQ(tg[i], stream[i + 1]);
  }
  // Padding after the stream: ignored targets.
  for (size_t i = stream.size() - 1; i < tg.size(); ++i) {
    EXPECT_EQ(tg[i], Dataset::kIgnoreIndex);
  }

  // val_fraction with a validation corpus is ambiguous.
  EXPECT_EQ(Dataset::Create({.seq_len = 8, .val_fraction = 0.1},
                            Corpus(train_docs), Corpus(val_docs))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // As is a validation corpus from another tokenizer.
  auto other = InMemoryCorpus::Create(val_docs, kVocab + 1, kBos, kEos);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(
      Dataset::Create({.seq_len = 8}, Corpus(train_docs), std::move(*other))
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(DatasetTest, PackingCoversEveryTrainTokenOncePerEpoch) {
  const auto docs = DistinctDocs(50);
  auto ds = MakeDataset(docs, {.seq_len = 8, .seed = 3});
  const int64_t n = ds->num_train_sequences();
  const std::vector<int32_t> stream = Stream(docs, ds->train_docs());
  ASSERT_EQ(ds->train_tokens(), static_cast<int64_t>(stream.size()));
  EXPECT_EQ(n, (static_cast<int64_t>(stream.size()) - 1) / 8);
  EXPECT_LT(ds->train_tokens_dropped(), 8);

  DataCursor cursor;
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    std::vector<int32_t> inputs, targets;
    for (int64_t i = 0; i < n; ++i) {
      Batch batch = GetBatch(*ds, &cursor, 1);
      for (int t = 0; t + 1 < 8; ++t) {
        EXPECT_EQ(batch.targets[t], batch.inputs[t + 1]);
      }
      inputs.insert(inputs.end(), batch.inputs.begin(), batch.inputs.end());
      targets.insert(targets.end(), batch.targets.begin(), batch.targets.end());
    }
    EXPECT_EQ(cursor, (DataCursor{epoch + 1, 0}));
    std::vector<int32_t> want_inputs(stream.begin(), stream.begin() + n * 8);
    std::vector<int32_t> want_targets(stream.begin() + 1,
                                      stream.begin() + n * 8 + 1);
    for (auto* v : {&inputs, &targets, &want_inputs, &want_targets}) {
      std::sort(v->begin(), v->end());
    }
    EXPECT_EQ(inputs, want_inputs);
    EXPECT_EQ(targets, want_targets);
  }
}

TEST(DatasetTest, ShuffleIsDeterministicPerSeedAndEpoch) {
  const auto docs = DistinctDocs(100);
  auto a = MakeDataset(docs, {.seq_len = 4, .seed = 11});
  auto b = MakeDataset(docs, {.seq_len = 4, .seed = 11});
  auto c = MakeDataset(docs, {.seq_len = 4, .seed = 12});
  ASSERT_GT(a->num_train_sequences(), 50);
  EXPECT_EQ(a->EpochOrder(0), b->EpochOrder(0));
  EXPECT_EQ(a->EpochOrder(5), b->EpochOrder(5));
  EXPECT_NE(a->EpochOrder(0), c->EpochOrder(0));
  EXPECT_NE(a->EpochOrder(0), a->EpochOrder(1));
  std::vector<int64_t> sorted = a->EpochOrder(3);
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < a->num_train_sequences(); ++i) {
    EXPECT_EQ(sorted[i], i);
  }
  // Batches follow the order.
  DataCursor ca, cb;
  for (int step = 0; step < 5; ++step) {
    EXPECT_EQ(GetBatch(*a, &ca, 3), GetBatch(*b, &cb, 3));
  }
}

TEST(DatasetTest, CursorSaveRestoreContinuesIdentically) {
  const auto docs = DistinctDocs(30);
  auto first =
      MakeDataset(docs, {.seq_len = 8, .seed = 5, .val_fraction = 0.2});
  const int64_t n = first->num_train_sequences();
  ASSERT_LT(n, 40);  // so that the steps below cross epochs
  DataCursor cursor;
  for (int step = 0; step < 7; ++step) GetBatch(*first, &cursor, 3);
  const std::string saved = first->EncodeCursor(cursor);
  EXPECT_EQ(saved.size(), Dataset::kEncodedCursorBytes);
  std::vector<Batch> expected;
  for (int step = 0; step < 20; ++step) {
    expected.push_back(GetBatch(*first, &cursor, 3));
  }
  EXPECT_GE(cursor.epoch, 2);

  auto second =
      MakeDataset(docs, {.seq_len = 8, .seed = 5, .val_fraction = 0.2});
  absl::StatusOr<DataCursor> restored = second->DecodeCursor(saved);
  ASSERT_TRUE(restored.ok()) << restored.status();
  DataCursor resumed = *restored;
  for (int step = 0; step < 20; ++step) {
    EXPECT_EQ(GetBatch(*second, &resumed, 3), expected[step]) << step;
  }
  EXPECT_EQ(resumed, cursor);

  // The cursor is the global sample counter.
  EXPECT_EQ(second->CursorAtSample(second->SampleIndex(cursor)), cursor);

  auto other =
      MakeDataset(docs, {.seq_len = 8, .seed = 6, .val_fraction = 0.2});
  EXPECT_EQ(other->DecodeCursor(saved).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(second->DecodeCursor("garbage").status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(DatasetTest, RanksTimesBatchEqualsOneRankWithGlobalBatch) {
  const auto docs = DistinctDocs(40);
  auto ds = MakeDataset(docs, {.seq_len = 8, .seed = 9});
  ASSERT_LT(ds->num_train_sequences(), 80);  // 10 steps of 8 cross epochs
  constexpr int64_t kGlobalBatch = 8;
  for (int world_size : {1, 2, 4}) {
    const int64_t b = kGlobalBatch / world_size;
    DataCursor single;
    DataCursor ranks(single);
    for (int step = 0; step < 10; ++step) {
      Batch want = GetBatch(*ds, &single, kGlobalBatch);
      Batch got;
      DataCursor next;
      for (int k = 0; k < world_size; ++k) {
        DataCursor c = ranks;
        Batch part = GetBatch(*ds, &c, b, {k, world_size});
        got.inputs.insert(got.inputs.end(), part.inputs.begin(),
                          part.inputs.end());
        got.targets.insert(got.targets.end(), part.targets.begin(),
                           part.targets.end());
        if (k > 0) {
          EXPECT_EQ(c, next);  // every rank agrees on the next cursor
        }
        next = c;
      }
      ranks = next;
      EXPECT_EQ(got, want) << "world_size " << world_size << " step " << step;
      EXPECT_EQ(ranks, single);
    }
  }
}

TEST(DatasetTest, ValidationPadsThePartialLastSequence) {
  // One validation doc of 5 tokens: stream of 7, T = 4 -> 2 sequences, the
  // second with 2 real targets.
  absl::StatusOr<std::unique_ptr<Dataset>> ds = Dataset::Create(
      {.seq_len = 4}, Corpus(DistinctDocs(10)), Corpus({{10, 11, 12, 13, 14}}));
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->num_validation_sequences(), 2);
  std::vector<int32_t> in(3 * 4), tg(3 * 4);
  absl::StatusOr<int64_t> rows =
      (*ds)->GetValidationBatch(0, 3, absl::MakeSpan(in), absl::MakeSpan(tg));
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(*rows, 2);
  const int32_t I = Dataset::kIgnoreIndex;
  EXPECT_EQ(in, (std::vector<int32_t>{kBos, 10, 11, 12, 13, 14, kEos, kEos,
                                      kEos, kEos, kEos, kEos}));
  EXPECT_EQ(tg,
            (std::vector<int32_t>{10, 11, 12, 13, 14, kEos, I, I, I, I, I, I}));
  rows =
      (*ds)->GetValidationBatch(2, 3, absl::MakeSpan(in), absl::MakeSpan(tg));
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(*rows, 0);
  EXPECT_EQ(
      (*ds)
          ->GetValidationBatch(3, 3, absl::MakeSpan(in), absl::MakeSpan(tg))
          .status()
          .code(),
      absl::StatusCode::kOutOfRange);
}

TEST(DatasetTest, TooSmallOrEmptySplitsAreErrors) {
  // Two docs of 1 token: a stream of 6 cannot fill seq_len 8.
  absl::Status status =
      Dataset::Create({.seq_len = 8}, Corpus({{5}, {6}})).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("train split has 6 tokens"));
  EXPECT_THAT(status.message(), HasSubstr("2 of 2 documents"));

  // Too few documents for val_fraction to pick one.
  status = Dataset::Create({.seq_len = 2, .seed = 1, .val_fraction = 1e-9},
                           Corpus({{5, 6, 7}}))
               .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("validation split is empty"));

  EXPECT_FALSE(Dataset::Create({.seq_len = 0}, Corpus({{5}})).ok());
  EXPECT_FALSE(
      Dataset::Create({.seq_len = 2, .val_fraction = 1.0}, Corpus({{5}})).ok());
  EXPECT_FALSE(Dataset::Create({.seq_len = 2}, Corpus({})).ok());
}

TEST(DatasetTest, GetBatchRejectsBadArguments) {
  auto ds = MakeDataset(DistinctDocs(20), {.seq_len = 4});
  std::vector<int32_t> in(2 * 4), tg(2 * 4);
  auto call = [&](DataCursor c, int64_t b, RankSlice s, size_t size) {
    return ds
        ->GetBatch(c, b, s, absl::MakeSpan(in.data(), size),
                   absl::MakeSpan(tg.data(), size))
        .status()
        .code();
  };
  EXPECT_EQ(call({}, 2, {}, 8), absl::StatusCode::kOk);
  EXPECT_EQ(call({}, 2, {}, 7), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({}, 0, {}, 0), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({}, 2, {2, 2}, 8), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({}, 2, {0, 0}, 8), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({0, ds->num_train_sequences()}, 2, {}, 8),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(call({-1, 0}, 2, {}, 8), absl::StatusCode::kOutOfRange);
}

// A TokenFile and an InMemoryCorpus of the same documents give the same data.
TEST(DatasetTest, TokenFileCorpusMatchesInMemory) {
  const auto docs = DistinctDocs(25, /*first_id=*/60000);  // u32 ids
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path =
      std::string(tmp != nullptr ? tmp : "/tmp") + "/dataset_test.tok";
  {
    auto writer = TokenFileWriter::Create(path, kVocab, kBos, kEos);
    ASSERT_TRUE(writer.ok()) << writer.status();
    for (const auto& doc : docs) ASSERT_TRUE((*writer)->AddDocument(doc).ok());
    ASSERT_TRUE((*writer)->Finish().ok());
  }
  absl::StatusOr<std::unique_ptr<TokenFile>> file = TokenFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const DatasetOptions options{.seq_len = 6, .seed = 2, .val_fraction = 0.2};
  auto from_file = Dataset::Create(options, std::move(*file));
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  auto in_memory = MakeDataset(docs, options);
  DataCursor a, b;
  for (int step = 0; step < 12; ++step) {
    EXPECT_EQ(GetBatch(**from_file, &a, 5), GetBatch(*in_memory, &b, 5));
  }
}

}  // namespace
}  // namespace sheaf
