#include "core/crm/ctr_data.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sheaf::crm {

const char* SplitName(Split s) {
  switch (s) {
    case Split::kSplitTrain: return "train";
    case Split::kSplitVal: return "val";
    case Split::kSplitTest: return "test";
  }
  return "?";
}

absl::Status CtrOptions::Validate() const {
  if (!std::isfinite(label_threshold)) {
    return absl::InvalidArgumentError("label_threshold: must be finite");
  }
  if (ctr_k < 1) return absl::InvalidArgumentError("ctr_k: must be >= 1");
  if (k < 1) return absl::InvalidArgumentError("k: must be >= 1");
  double sum = 0;
  for (double f : split) {
    if (!(f >= 0)) return absl::InvalidArgumentError("split: fractions must be >= 0");
    sum += f;
  }
  if (std::fabs(sum - 1.0) > 1e-9 || split[0] <= 0) {
    return absl::InvalidArgumentError("split: fractions must sum to 1 with train > 0");
  }
  return absl::OkStatus();
}

std::span<const HistEvent> CtrData::History(const CtrSample& s, int n) const {
  const std::vector<HistEvent>& seq = sequences[static_cast<size_t>(s.user)];
  const int len = std::min(n, s.hist_len);
  return std::span<const HistEvent>(seq.data() + (s.hist_len - len), static_cast<size_t>(len));
}

absl::StatusOr<CtrData> BuildCtrData(AtomicDataset dataset, const CtrOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  CtrData data;
  data.options = options;
  data.raw_interactions = static_cast<int64_t>(dataset.interactions.size());
  std::vector<Interaction> inter = std::move(dataset.interactions);

  // k-core: drop users and items below min_core until stable.
  const size_t nu = dataset.user_ids.size(), ni = dataset.item_ids.size();
  if (options.min_core > 1) {
    while (true) {
      std::vector<int64_t> uc(nu, 0), ic(ni, 0);
      for (const Interaction& x : inter) {
        ++uc[static_cast<size_t>(x.user)];
        ++ic[static_cast<size_t>(x.item)];
      }
      std::vector<Interaction> kept;
      kept.reserve(inter.size());
      for (const Interaction& x : inter) {
        if (uc[static_cast<size_t>(x.user)] >= options.min_core &&
            ic[static_cast<size_t>(x.item)] >= options.min_core) {
          kept.push_back(x);
        }
      }
      const bool stable = kept.size() == inter.size();
      inter = std::move(kept);
      if (stable) break;
    }
  }
  if (inter.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        dataset.inter_path, ": no interaction is left after ", options.min_core,
        "-core filtering"));
  }

  // Global time order (file line breaks ties, so the order is total).
  std::sort(inter.begin(), inter.end(), [](const Interaction& a, const Interaction& b) {
    if (a.timestamp != b.timestamp) return a.timestamp < b.timestamp;
    return a.line < b.line;
  });
  for (const Interaction& x : inter) data.rating_values.push_back(x.rating);
  std::sort(data.rating_values.begin(), data.rating_values.end());
  data.rating_values.erase(std::unique(data.rating_values.begin(), data.rating_values.end()),
                           data.rating_values.end());
  auto rating_id = [&](float r) {
    return static_cast<int32_t>(
        std::lower_bound(data.rating_values.begin(), data.rating_values.end(), r) -
        data.rating_values.begin());
  };

  data.sequences.assign(nu, {});
  std::vector<char> user_seen(nu, 0), item_seen(ni, 0);
  // Position of each sorted interaction in its user's sequence.
  std::vector<int32_t> pos(inter.size());
  for (size_t i = 0; i < inter.size(); ++i) {
    const Interaction& x = inter[i];
    auto& seq = data.sequences[static_cast<size_t>(x.user)];
    pos[i] = static_cast<int32_t>(seq.size());
    seq.push_back({x.item, rating_id(x.rating), x.rating, x.timestamp});
    user_seen[static_cast<size_t>(x.user)] = 1;
    item_seen[static_cast<size_t>(x.item)] = 1;
  }
  data.kept_interactions = static_cast<int64_t>(inter.size());
  data.kept_users = std::accumulate(user_seen.begin(), user_seen.end(), int64_t{0});
  data.kept_items = std::accumulate(item_seen.begin(), item_seen.end(), int64_t{0});

  const int64_t n = static_cast<int64_t>(inter.size());
  const int64_t n_train = static_cast<int64_t>(std::floor(options.split[0] * n));
  const int64_t n_val = static_cast<int64_t>(std::floor(options.split[1] * n));
  for (int64_t i = 0; i < n; ++i) {
    const Interaction& x = inter[static_cast<size_t>(i)];
    const auto& seq = data.sequences[static_cast<size_t>(x.user)];
    int32_t hist = pos[static_cast<size_t>(i)];
    while (hist > 0 && seq[static_cast<size_t>(hist - 1)].timestamp >= x.timestamp) --hist;
    if (hist == 0) {
      ++data.dropped_no_history;
      continue;
    }
    CtrSample s;
    s.user = x.user;
    s.item = x.item;
    s.rating = x.rating;
    s.label = x.rating >= options.label_threshold ? 1.0f : 0.0f;
    s.timestamp = x.timestamp;
    s.seq_pos = pos[static_cast<size_t>(i)];
    s.hist_len = hist;
    const size_t split = i < n_train ? 0 : (i < n_train + n_val ? 1 : 2);
    data.splits[split].push_back(s);
  }
  dataset.interactions = std::move(inter);
  data.dataset = std::move(dataset);
  return data;
}

}  // namespace sheaf::crm
