#include "core/data/dataset.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/rng.h"
#include "base/status.h"

namespace sheaf {
namespace {

// Salts keep the split hash and the shuffle stream independent even though
// both derive from the same user seed.
constexpr uint64_t kSplitSalt = 0x73706c6974ULL;  // "split"
constexpr uint64_t kShuffleSalt = 0x73687566ULL;  // "shuf"
constexpr char kCursorMagic[4] = {'S', 'H', 'D', 'C'};
constexpr uint32_t kCursorVersion = 1;

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t state = a;
  state = SplitMix64Next(state) ^ b;
  return SplitMix64Next(state);
}

// Uniform in [0, bound) without modulo bias.
uint64_t Bounded(uint64_t& state, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
  while (true) {
    const uint64_t r = SplitMix64Next(state);
    if (r >= threshold) return r % bound;
  }
}

template <typename T>
void Put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(value));
}

template <typename T>
T Get(std::string_view bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(value));
  return value;
}

absl::Status CheckBuffers(int64_t rows, int64_t seq_len,
                          absl::Span<int32_t> inputs,
                          absl::Span<int32_t> targets) {
  const int64_t want = rows * seq_len;
  if (static_cast<int64_t>(inputs.size()) != want ||
      static_cast<int64_t>(targets.size()) != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch buffers must hold batch_size * seq_len = ", rows,
                     " * ", seq_len, " = ", want, " ints; got inputs ",
                     inputs.size(), ", targets ", targets.size()));
  }
  return absl::OkStatus();
}

}  // namespace

void Dataset::AddDoc(Split& split, int64_t doc, int64_t extra) {
  if (split.starts.empty()) split.starts.push_back(0);
  split.docs.push_back(doc);
  split.starts.push_back(split.starts.back() + split.corpus->doc_size(doc) + extra);
}

absl::StatusOr<std::unique_ptr<Dataset>> Dataset::Create(
    const DatasetOptions& options, std::shared_ptr<const TokenCorpus> corpus,
    std::shared_ptr<const TokenCorpus> validation) {
  if (corpus == nullptr) {
    return absl::InvalidArgumentError("Dataset::Create: corpus is null");
  }
  if (options.seq_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("seq_len must be positive, got ", options.seq_len));
  }
  if (!(options.val_fraction >= 0.0 && options.val_fraction < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "val_fraction must be in [0, 1), got ", options.val_fraction));
  }
  if (validation != nullptr && options.val_fraction != 0.0) {
    return absl::InvalidArgumentError(
        "val_fraction must be 0 when a separate validation source is given");
  }
  if (corpus->num_docs() == 0) {
    return absl::InvalidArgumentError("train corpus has no documents");
  }
  if (validation != nullptr) {
    if (validation->num_docs() == 0) {
      return absl::InvalidArgumentError("validation corpus has no documents");
    }
    if (validation->vocab_size() != corpus->vocab_size() ||
        validation->bos_id() != corpus->bos_id() ||
        validation->eos_id() != corpus->eos_id()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "validation corpus was tokenised differently: vocab_size/bos/eos ",
          validation->vocab_size(), "/", validation->bos_id(), "/",
          validation->eos_id(), " vs train ", corpus->vocab_size(), "/",
          corpus->bos_id(), "/", corpus->eos_id()));
    }
    if (validation->has_loss_mask() != corpus->has_loss_mask()) {
      return absl::InvalidArgumentError(
          "validation corpus and train corpus differ in having a loss mask "
          "(chat data for one, plain text for the other)");
    }
  }
  if (corpus->has_loss_mask() && !options.one_per_row) {
    return absl::InvalidArgumentError(
        "a corpus with a loss mask (chat data) is read one sample per row: "
        "set DatasetOptions::one_per_row");
  }

  auto ds = std::unique_ptr<Dataset>(new Dataset());
  ds->options_ = options;
  ds->corpus_ = std::move(corpus);
  ds->validation_corpus_ = std::move(validation);
  ds->train_.corpus = ds->corpus_.get();
  ds->validation_.corpus = ds->validation_corpus_ != nullptr
                               ? ds->validation_corpus_.get()
                               : ds->corpus_.get();

  const int64_t num_docs = ds->corpus_->num_docs();
  const int64_t extra = options.one_per_row ? 0 : 2;
  const uint64_t split_key = Mix(options.seed, kSplitSalt);
  for (int64_t d = 0; d < num_docs; ++d) {
    // Top 53 bits as a double in [0, 1): exact, so the threshold test does
    // not depend on rounding.
    const double u =
        static_cast<double>(Mix(split_key, static_cast<uint64_t>(d)) >> 11) *
        0x1.0p-53;
    const bool held_out =
        ds->validation_corpus_ == nullptr && u < options.val_fraction;
    AddDoc(held_out ? ds->validation_ : ds->train_, d, extra);
  }
  if (ds->validation_corpus_ != nullptr) {
    for (int64_t d = 0; d < ds->validation_corpus_->num_docs(); ++d) {
      AddDoc(ds->validation_, d, extra);
    }
  }

  const int64_t t = options.seq_len;
  if (options.one_per_row) {
    if (ds->train_.docs.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "train split has none of the ", num_docs, " samples (all held out)"));
    }
    if (options.val_fraction > 0.0 && ds->validation_.docs.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "validation split is empty: val_fraction ", options.val_fraction,
          " selected none of the ", num_docs, " samples (seed ", options.seed,
          "); raise val_fraction, add samples or give a validation source"));
    }
    ds->num_train_sequences_ = static_cast<int64_t>(ds->train_.docs.size());
    ds->num_validation_sequences_ =
        static_cast<int64_t>(ds->validation_.docs.size());
    return ds;
  }
  const int64_t train_tokens = ds->train_.tokens();
  if (train_tokens < t + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train split has ", train_tokens, " tokens (BOS/EOS included) in ",
        ds->train_.docs.size(), " of ", num_docs,
        " documents; one sequence of seq_len ", t, " needs ", t + 1));
  }
  ds->num_train_sequences_ = (train_tokens - 1) / t;
  if (options.val_fraction > 0.0 && ds->validation_.docs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "validation split is empty: val_fraction ", options.val_fraction,
        " selected none of the ", num_docs, " documents (seed ", options.seed,
        "); raise val_fraction, split into more documents or give a "
        "validation source"));
  }
  // Every document adds BOS and EOS, so a non-empty stream has >= 2 tokens.
  ds->num_validation_sequences_ =
      ds->validation_.docs.empty() ? 0
                                   : (ds->validation_.tokens() - 1 + t - 1) / t;
  return ds;
}

std::vector<int64_t> Dataset::EpochOrder(int64_t epoch) const {
  const int64_t n = num_train_sequences_;
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  uint64_t state =
      Mix(Mix(options_.seed, kShuffleSalt), static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j =
        static_cast<int64_t>(Bounded(state, static_cast<uint64_t>(i) + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

DataCursor Dataset::CursorAtSample(int64_t global_sample) const {
  return DataCursor{global_sample / num_train_sequences_,
                    global_sample % num_train_sequences_};
}

int64_t Dataset::SampleIndex(const DataCursor& cursor) const {
  return cursor.epoch * num_train_sequences_ + cursor.position;
}

int64_t Dataset::TrainSequenceAt(int64_t epoch, int64_t position) const {
  CachedOrder& slot = cached_orders_[epoch % 2];
  if (slot.epoch != epoch) {
    slot.order = EpochOrder(epoch);
    slot.epoch = epoch;
  }
  return slot.order[position];
}

int64_t Dataset::ReadStream(const Split& split, int64_t begin, int64_t count,
                            int32_t* out) {
  const int32_t bos = split.corpus->bos_id();
  const int32_t eos = split.corpus->eos_id();
  const int64_t end = std::min(begin + count, split.tokens());
  if (begin >= end) return 0;
  // Last document starting at or before `begin`.
  size_t i = static_cast<size_t>(
      std::upper_bound(split.starts.begin(), split.starts.end(), begin) -
      split.starts.begin() - 1);
  int64_t pos = begin;
  while (pos < end) {
    const int64_t doc = split.docs[i];
    const int64_t doc_begin = split.starts[i];
    const int64_t doc_len = split.corpus->doc_size(doc);
    const int64_t doc_end = std::min(split.starts[i + 1], end);
    int64_t offset = pos - doc_begin;  // 0 = BOS, doc_len + 1 = EOS
    if (offset == 0) {
      *out++ = bos;
      ++pos;
      ++offset;
    }
    const int64_t body = std::min(doc_len + 1, doc_end - doc_begin) - offset;
    if (body > 0) {
      split.corpus->CopyTokens(doc, offset - 1, body, out);
      out += body;
      pos += body;
    }
    if (pos < doc_end) {  // only the EOS is left in this document's range
      *out++ = eos;
      ++pos;
    }
    ++i;
  }
  return end - begin;
}

void Dataset::ReadRow(const Split& split, int64_t s, int32_t* inputs,
                      int32_t* targets) const {
  const int64_t t = options_.seq_len;
  const int64_t doc = split.docs[static_cast<size_t>(s)];
  const int64_t n = std::min(split.corpus->doc_size(doc), t + 1);
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  split.corpus->CopyTokens(doc, 0, n, tokens.data());
  split.corpus->CopyLossMask(doc, 0, n, mask.data());
  const int32_t eos = split.corpus->eos_id();
  for (int64_t i = 0; i < t; ++i) {
    inputs[i] = i < n ? tokens[i] : eos;
    targets[i] = i + 1 < n && mask[i + 1] ? tokens[i + 1] : kIgnoreIndex;
  }
}

void Dataset::ReadSequence(const Split& split, int64_t s, int32_t* inputs,
                           int32_t* targets) const {
  if (options_.one_per_row) {
    ReadRow(split, s, inputs, targets);
    return;
  }
  const int64_t t = options_.seq_len;
  // One read of T + 1 stream tokens serves both rows: targets are the inputs
  // shifted by one.
  std::vector<int32_t> window(t + 1);
  const int64_t got = ReadStream(split, s * t, t + 1, window.data());
  const int32_t eos = split.corpus->eos_id();
  for (int64_t i = 0; i < t; ++i) {
    inputs[i] = i < got ? window[i] : eos;
    targets[i] = i + 1 < got ? window[i + 1] : kIgnoreIndex;
  }
}

absl::StatusOr<DataCursor> Dataset::GetBatch(
    const DataCursor& cursor, int64_t batch_size, RankSlice slice,
    absl::Span<int32_t> inputs, absl::Span<int32_t> targets) const {
  if (batch_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch_size must be positive, got ", batch_size));
  }
  if (slice.world_size <= 0 || slice.world_rank < 0 ||
      slice.world_rank >= slice.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad rank slice: world_rank ", slice.world_rank,
                     ", world_size ", slice.world_size));
  }
  RETURN_IF_ERROR(CheckBuffers(batch_size, options_.seq_len, inputs, targets));
  const int64_t n = num_train_sequences_;
  if (cursor.epoch < 0 || cursor.position < 0 || cursor.position >= n) {
    return absl::OutOfRangeError(absl::StrCat(
        "data cursor {epoch ", cursor.epoch, ", position ", cursor.position,
        "} outside a dataset of ", n, " train sequences"));
  }

  const int64_t first = cursor.position + slice.world_rank * batch_size;
  std::vector<int64_t> sequences(batch_size);
  {
    absl::MutexLock lock(&mu_);
    for (int64_t r = 0; r < batch_size; ++r) {
      const int64_t p = first + r;
      sequences[r] = TrainSequenceAt(cursor.epoch + p / n, p % n);
    }
  }
  const int64_t t = options_.seq_len;
  for (int64_t r = 0; r < batch_size; ++r) {
    ReadSequence(train_, sequences[r], inputs.data() + r * t,
                 targets.data() + r * t);
  }
  const int64_t next = cursor.position + slice.world_size * batch_size;
  return DataCursor{cursor.epoch + next / n, next % n};
}

absl::StatusOr<int64_t> Dataset::GetValidationBatch(
    int64_t first, int64_t batch_size, absl::Span<int32_t> inputs,
    absl::Span<int32_t> targets) const {
  if (batch_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch_size must be positive, got ", batch_size));
  }
  RETURN_IF_ERROR(CheckBuffers(batch_size, options_.seq_len, inputs, targets));
  if (first < 0 || first > num_validation_sequences_) {
    return absl::OutOfRangeError(absl::StrCat("validation sequence ", first,
                                              " outside [0, ",
                                              num_validation_sequences_, "]"));
  }
  const int64_t t = options_.seq_len;
  const int64_t rows = std::min(batch_size, num_validation_sequences_ - first);
  for (int64_t r = 0; r < rows; ++r) {
    ReadSequence(validation_, first + r, inputs.data() + r * t,
                 targets.data() + r * t);
  }
  const int32_t eos = corpus_->eos_id();
  std::fill(inputs.begin() + rows * t, inputs.end(), eos);
  std::fill(targets.begin() + rows * t, targets.end(), kIgnoreIndex);
  return rows;
}

std::string Dataset::EncodeCursor(const DataCursor& cursor) const {
  std::string out(kCursorMagic, sizeof(kCursorMagic));
  Put<uint32_t>(out, kCursorVersion);
  Put<int64_t>(out, cursor.epoch);
  Put<int64_t>(out, cursor.position);
  Put<uint64_t>(out, options_.seed);
  Put<int64_t>(out, options_.seq_len);
  Put<int64_t>(out, num_train_sequences_);
  return out;
}

absl::StatusOr<DataCursor> Dataset::DecodeCursor(std::string_view bytes) const {
  if (bytes.size() != kEncodedCursorBytes ||
      std::memcmp(bytes.data(), kCursorMagic, sizeof(kCursorMagic)) != 0 ||
      Get<uint32_t>(bytes, 4) != kCursorVersion) {
    return absl::DataLossError(
        absl::StrCat("not an encoded data cursor (", bytes.size(),
                     " bytes, expected ", kEncodedCursorBytes,
                     " starting with SHDC version ", kCursorVersion, ")"));
  }
  const DataCursor cursor{Get<int64_t>(bytes, 8), Get<int64_t>(bytes, 16)};
  const uint64_t seed = Get<uint64_t>(bytes, 24);
  const int64_t seq_len = Get<int64_t>(bytes, 32);
  const int64_t sequences = Get<int64_t>(bytes, 40);
  if (seed != options_.seed || seq_len != options_.seq_len ||
      sequences != num_train_sequences_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "data cursor was saved for another dataset (seed ", seed, ", seq_len ",
        seq_len, ", ", sequences, " train sequences); this one has seed ",
        options_.seed, ", seq_len ", options_.seq_len, ", ",
        num_train_sequences_, " train sequences"));
  }
  if (cursor.epoch < 0 || cursor.position < 0 ||
      cursor.position >= num_train_sequences_) {
    return absl::DataLossError(absl::StrCat("data cursor {epoch ", cursor.epoch,
                                            ", position ", cursor.position,
                                            "} is out of range"));
  }
  return cursor;
}

}  // namespace sheaf
