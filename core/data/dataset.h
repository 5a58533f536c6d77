// Dataset: turns a tokenised corpus into the fixed-length next-token training
// sequences the trainer consumes, with a document-level train/validation
// split, a deterministic per-epoch shuffle, a resumable cursor and a batch
// layout that makes data parallelism exact.
//
// Streams. Each split (train, validation) is the concatenation, in corpus
// order, of its documents, each written as BOS + tokens + EOS. A split is cut
// into sequences with stride T = seq_len over its own stream: sequence s
// reads stream[s*T, s*T + T + 1); inputs are the first T tokens, targets the
// last T (targets[t] = inputs[t + 1]). So every stream token after the first
// is a target exactly once per epoch and no transition between sequences is
// lost. Train and validation streams are separate, so no sequence ever mixes
// a train document with a validation document.
//   train:      floor((L - 1) / T) sequences; the < T tokens left at the end
//               of the stream are not used (train_tokens_dropped()). Full
//               sequences only: then every rank's batch has exactly b*T
//               targets, so averaging per-rank mean losses equals the
//               single-process mean (see GetBatch).
//   validation: ceil((L - 1) / T) sequences; the last may be partial, its
//               missing targets are kIgnoreIndex (and inputs EOS) so that a
//               small held-out set is still evaluated in full.
//
// Split. With no validation corpus, document d of the corpus goes to
// validation when Hash(seed, d) / 2^64 < val_fraction, a stable hash (not
// absl::Hash, which changes between processes), so the split depends only on
// (seed, document order), not on the number of documents, thread count or
// world size.
//
// Order. Epoch e visits the train sequences in a permutation drawn from
// (seed, e) by a Fisher-Yates shuffle with our own SplitMix64 generator
// (std:: distributions differ between standard libraries).
//
// Thread-safety: all methods are const and safe to call concurrently; the
// cached epoch permutations are guarded by a mutex.
#ifndef SHEAF_CORE_DATA_DATASET_H_
#define SHEAF_CORE_DATA_DATASET_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "core/data/token_corpus.h"

namespace sheaf {

struct DatasetOptions {
  int64_t seq_len = 0;  // T; must be positive
  uint64_t seed = 0;    // drives both the split and the shuffle
  // Share of the corpus' documents held out for validation, in [0, 1). Must
  // be 0 when a separate validation corpus is given.
  double val_fraction = 0.0;
  // One document per row instead of the packed stream: sequence s of a
  // split is its document s, as is (no BOS/EOS added: the document carries
  // its own, e.g. a rendered chat), clipped to T + 1 tokens, the rest of the
  // row padded (inputs EOS, targets kIgnoreIndex), so that no sample attends
  // to another. targets[t] = doc[t + 1] where the corpus' loss mask is 1 at
  // t + 1, else kIgnoreIndex. Required for a corpus with a loss mask.
  bool one_per_row = false;
};

// Where the train stream is: the next sequence is EpochOrder(epoch)[position].
// Equivalent to the global sample counter epoch * num_train_sequences() +
// position, so a run may resume with a different batch size or world size.
struct DataCursor {
  int64_t epoch = 0;
  int64_t position = 0;  // in [0, num_train_sequences())

  friend bool operator==(const DataCursor&, const DataCursor&) = default;
};

// Which rows of a global batch this process fills.
struct RankSlice {
  int world_rank = 0;
  int world_size = 1;
};

class Dataset {
 public:
  // Target value the loss must skip (PyTorch's ignore_index convention).
  static constexpr int32_t kIgnoreIndex = -100;
  // Size of EncodeCursor()'s output.
  static constexpr size_t kEncodedCursorBytes = 48;

  // `validation` may be null: then val_fraction of `corpus` is held out.
  // Errors: InvalidArgument for bad options, for a validation corpus whose
  // vocab_size / BOS / EOS differ from the train corpus', for a train split
  // too short for one sequence, or for val_fraction > 0 that selected no
  // document (each message names the split and its document/token counts).
  static absl::StatusOr<std::unique_ptr<Dataset>> Create(
      const DatasetOptions& options, std::shared_ptr<const TokenCorpus> corpus,
      std::shared_ptr<const TokenCorpus> validation = nullptr);

  int64_t seq_len() const { return options_.seq_len; }
  uint64_t seed() const { return options_.seed; }
  int32_t vocab_size() const { return corpus_->vocab_size(); }

  // Document indices of each split, into the train corpus (train, and
  // validation when split from it) or into the validation corpus.
  const std::vector<int64_t>& train_docs() const { return train_.docs; }
  const std::vector<int64_t>& validation_docs() const {
    return validation_.docs;
  }
  // Stream lengths, BOS/EOS included (one_per_row: the documents' tokens).
  int64_t train_tokens() const { return train_.tokens(); }
  int64_t validation_tokens() const { return validation_.tokens(); }
  int64_t num_train_sequences() const { return num_train_sequences_; }
  int64_t num_validation_sequences() const { return num_validation_sequences_; }
  // Train stream tokens never used as a target: the tail shorter than T.
  int64_t train_tokens_dropped() const {
    if (options_.one_per_row) return 0;  // rows are never cut (see options)
    return train_.tokens() - 1 - num_train_sequences_ * options_.seq_len;
  }

  // Train sequence indices in the order epoch `epoch` visits them.
  std::vector<int64_t> EpochOrder(int64_t epoch) const;

  DataCursor CursorAtSample(int64_t global_sample) const;
  int64_t SampleIndex(const DataCursor& cursor) const;

  // Fills this rank's rows of the global batch that starts at `cursor` and
  // returns the cursor after the whole global batch.
  //
  // The global batch holds G = world_size * batch_size sequences, the next G
  // of the epoch order (continuing into the next epoch's order at the end);
  // rank k fills rows [k*b, (k+1)*b) of it. Hence N ranks with batch b see,
  // step for step, exactly the samples one rank sees with batch N*b, and
  // every rank returns the same next cursor.
  //
  // inputs and targets are (batch_size, T) row-major and must have exactly
  // batch_size * T elements. Errors: InvalidArgument for a bad batch_size,
  // slice or buffer size; OutOfRange for a cursor outside this dataset.
  absl::StatusOr<DataCursor> GetBatch(const DataCursor& cursor,
                                      int64_t batch_size, RankSlice slice,
                                      absl::Span<int32_t> inputs,
                                      absl::Span<int32_t> targets) const;

  // Validation sequences [first, first + batch_size) in order, (batch_size,
  // T) each. Rows past the last sequence are padding: inputs EOS, targets
  // kIgnoreIndex. Returns the number of real rows. Errors: InvalidArgument
  // for bad sizes; OutOfRange when first is outside
  // [0, num_validation_sequences()].
  absl::StatusOr<int64_t> GetValidationBatch(int64_t first, int64_t batch_size,
                                             absl::Span<int32_t> inputs,
                                             absl::Span<int32_t> targets) const;

  // A cursor as kEncodedCursorBytes bytes for a checkpoint. It records the
  // seed, seq_len and number of train sequences, so that DecodeCursor can
  // refuse a cursor saved for a different dataset (which would resume on
  // different data without any error). Returns FailedPrecondition for such a
  // cursor, DataLoss for bytes that are not an encoded cursor.
  std::string EncodeCursor(const DataCursor& cursor) const;
  absl::StatusOr<DataCursor> DecodeCursor(std::string_view bytes) const;

 private:
  // One split's stream: doc i of `docs` occupies [starts[i], starts[i+1]).
  struct Split {
    const TokenCorpus* corpus = nullptr;
    std::vector<int64_t> docs;
    std::vector<int64_t> starts;  // (docs.size() + 1)
    int64_t tokens() const { return starts.empty() ? 0 : starts.back(); }
  };
  struct CachedOrder {
    int64_t epoch = -1;
    std::vector<int64_t> order;
  };

  Dataset() = default;
  // `extra`: the BOS and EOS the packed stream adds (2), 0 for rows.
  static void AddDoc(Split& split, int64_t doc, int64_t extra);
  // Sequence `s` of `split` in one_per_row mode.
  void ReadRow(const Split& split, int64_t s, int32_t* inputs,
               int32_t* targets) const;
  // Copies stream[begin, begin + count) of `split`, clipped to its end;
  // returns the number of tokens copied.
  static int64_t ReadStream(const Split& split, int64_t begin, int64_t count,
                            int32_t* out);
  // Writes sequence `s` of `split` (T inputs, T targets), padding past the
  // stream end.
  void ReadSequence(const Split& split, int64_t s, int32_t* inputs,
                    int32_t* targets) const;
  int64_t TrainSequenceAt(int64_t epoch, int64_t position) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  DatasetOptions options_;
  std::shared_ptr<const TokenCorpus> corpus_;
  std::shared_ptr<const TokenCorpus> validation_corpus_;
  Split train_;
  Split validation_;
  int64_t num_train_sequences_ = 0;
  int64_t num_validation_sequences_ = 0;

  mutable absl::Mutex mu_;
  // Two slots, so that a batch straddling an epoch boundary does not
  // reshuffle on every call.
  mutable CachedOrder cached_orders_[2] ABSL_GUARDED_BY(mu_);
};

}  // namespace sheaf

#endif  // SHEAF_CORE_DATA_DATASET_H_
