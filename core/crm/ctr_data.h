// Click-through samples from an atomic ratings dataset (core/crm/atomic.h):
// labels, k-core filtering, a split by global time, and each sample's long
// and short history, never reaching into the sample's own time or later.
//
//   label      = rating >= label_threshold (4: "liked")
//   filtering  = repeat { drop users and items with < min_core interactions }
//                until nothing changes (5-core)
//   split      = all interactions sorted by (timestamp, file line); the first
//                80% train, the next 10% validation, the rest test
//   history    = the user's interactions with a timestamp STRICTLY earlier
//                than the sample's (equal timestamps are not "before": the
//                file order of same-second ratings says nothing about time),
//                from any split (the past is known at prediction time); the
//                long history is the last ctr_k of them, the short the last k.
//   samples    = every interaction with at least one earlier interaction of
//                its user; a user's first interaction(s) only serve as
//                history (counted in dropped_no_history).
#ifndef SHEAF_CORE_CRM_CTR_DATA_H_
#define SHEAF_CORE_CRM_CTR_DATA_H_

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/crm/atomic.h"

namespace sheaf::crm {

struct CtrOptions {
  float label_threshold = 4.0f;
  int min_core = 5;  // <= 1: no filtering
  int ctr_k = 60;    // long history (the recommender's)
  int k = 10;        // short history (the prompt's)
  std::array<double, 3> split = {0.8, 0.1, 0.1};  // train, validation, test
  absl::Status Validate() const;
};

// One past interaction of a user.
struct HistEvent {
  int32_t item = 0;
  int32_t rating_id = 0;  // index into CtrData::rating_values
  float rating = 0;
  double timestamp = 0;
};

struct CtrSample {
  int32_t user = 0, item = 0;
  float label = 0;   // 0 or 1
  float rating = 0;  // the sample's own rating (never an input)
  double timestamp = 0;
  // The sample's interaction is sequences[user][seq_pos]; its history is
  // sequences[user][0, hist_len) (hist_len <= seq_pos: same-second ones are
  // excluded).
  int32_t seq_pos = 0;
  int32_t hist_len = 0;
};

enum class Split { kSplitTrain = 0, kSplitVal = 1, kSplitTest = 2 };
const char* SplitName(Split s);  // "train", "val", "test"

struct CtrData {
  AtomicDataset dataset;  // after filtering: interactions hold only kept ones
  CtrOptions options;
  // Distinct ratings, ascending (rating embeddings are indexed by these).
  std::vector<float> rating_values;
  // Per user (dense index of dataset.user_ids), the kept interactions in
  // (timestamp, file line) order.
  std::vector<std::vector<HistEvent>> sequences;
  std::array<std::vector<CtrSample>, 3> splits;
  // Counts for reports.
  int64_t raw_interactions = 0, kept_interactions = 0;
  int64_t kept_users = 0, kept_items = 0;
  int64_t dropped_no_history = 0;

  const std::vector<CtrSample>& split(Split s) const {
    return splits[static_cast<size_t>(s)];
  }
  // The last min(n, hist_len) events before `s`, oldest first.
  std::span<const HistEvent> History(const CtrSample& s, int n) const;
};

// InvalidArgument for bad options, or when filtering leaves nothing.
absl::StatusOr<CtrData> BuildCtrData(AtomicDataset dataset, const CtrOptions& options);

}  // namespace sheaf::crm

#endif  // SHEAF_CORE_CRM_CTR_DATA_H_
