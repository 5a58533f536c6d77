#include "core/crm/metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sheaf::crm {
namespace {

absl::Status CheckLabels(std::span<const float> a, std::span<const float> labels) {
  if (a.size() != labels.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(a.size(), " predictions for ", labels.size(), " labels"));
  }
  if (a.empty()) return absl::InvalidArgumentError("no predictions");
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] != 0.0f && labels[i] != 1.0f) {
      return absl::InvalidArgumentError(absl::StrCat("label ", i, " is ", labels[i],
                                                     ", not 0 or 1"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckProbs(std::span<const float> probs) {
  for (size_t i = 0; i < probs.size(); ++i) {
    if (!(probs[i] >= 0.0f && probs[i] <= 1.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat("probability ", i, " is ", probs[i], ", not in [0, 1]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<double> Auc(std::span<const float> scores, std::span<const float> labels) {
  RETURN_IF_ERROR(CheckLabels(scores, labels));
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i])) {
      return absl::InvalidArgumentError(absl::StrCat("score ", i, " is not finite"));
    }
  }
  const size_t n = scores.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  double pos_rank_sum = 0;
  int64_t pos = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && scores[order[j]] == scores[order[i]]) ++j;
    // Ranks i+1 .. j share their mean.
    const double mean_rank = 0.5 * static_cast<double>(i + 1 + j);
    for (size_t t = i; t < j; ++t) {
      if (labels[order[t]] == 1.0f) {
        pos_rank_sum += mean_rank;
        ++pos;
      }
    }
    i = j;
  }
  const int64_t neg = static_cast<int64_t>(n) - pos;
  if (pos == 0 || neg == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AUC needs both classes (", pos, " positives, ", neg, " negatives)"));
  }
  const double p = static_cast<double>(pos);
  return (pos_rank_sum - p * (p + 1) / 2) / (p * static_cast<double>(neg));
}

absl::StatusOr<double> LogLoss(std::span<const float> probs, std::span<const float> labels) {
  RETURN_IF_ERROR(CheckLabels(probs, labels));
  RETURN_IF_ERROR(CheckProbs(probs));
  constexpr double kEps = 1e-7;
  double sum = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    const double p = std::clamp(static_cast<double>(probs[i]), kEps, 1 - kEps);
    sum -= labels[i] == 1.0f ? std::log(p) : std::log(1 - p);
  }
  return sum / static_cast<double>(probs.size());
}

absl::StatusOr<double> Accuracy(std::span<const float> probs, std::span<const float> labels) {
  RETURN_IF_ERROR(CheckLabels(probs, labels));
  RETURN_IF_ERROR(CheckProbs(probs));
  int64_t right = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    right += (probs[i] >= 0.5f ? 1.0f : 0.0f) == labels[i];
  }
  return static_cast<double>(right) / static_cast<double>(probs.size());
}

absl::StatusOr<BinaryMetrics> ComputeMetrics(std::span<const float> probs,
                                             std::span<const float> labels) {
  BinaryMetrics m;
  ASSIGN_OR_RETURN(m.auc, Auc(probs, labels));
  ASSIGN_OR_RETURN(m.logloss, LogLoss(probs, labels));
  ASSIGN_OR_RETURN(m.accuracy, Accuracy(probs, labels));
  m.count = static_cast<int64_t>(probs.size());
  for (float y : labels) m.positives += y == 1.0f;
  return m;
}

}  // namespace sheaf::crm
