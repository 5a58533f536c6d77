// Binary-classification metrics of a CTR model: AUC, LogLoss, accuracy.
//
//   AUC      = P(score of a random positive > score of a random negative),
//              ties counted 1/2: the Mann-Whitney statistic with average
//              ranks, (Σ_{positives} rank − P(P+1)/2) / (P·N), ranks 1-based
//              over all scores ascending, tied scores sharing their mean rank
//   LogLoss  = −mean(y log p + (1−y) log(1−p)), p clipped to [1e−7, 1−1e−7]
//              (a confident wrong answer costs 16.1 nats, not infinity)
//   accuracy = mean(1[p >= 0.5] == y)
#ifndef SHEAF_CORE_CRM_METRICS_H_
#define SHEAF_CORE_CRM_METRICS_H_

#include <span>

#include "absl/status/statusor.h"

namespace sheaf::crm {

// scores: any real (probabilities or logits); labels 0 or 1. InvalidArgument
// for a size mismatch, a label other than 0/1, a non-finite score, or a set
// without both classes (AUC is undefined).
absl::StatusOr<double> Auc(std::span<const float> scores, std::span<const float> labels);
// probs in [0, 1]. InvalidArgument for a size mismatch, an empty set, a label
// other than 0/1 or a probability outside [0, 1] (or NaN).
absl::StatusOr<double> LogLoss(std::span<const float> probs, std::span<const float> labels);
absl::StatusOr<double> Accuracy(std::span<const float> probs, std::span<const float> labels);

struct BinaryMetrics {
  double auc = 0, logloss = 0, accuracy = 0;
  int64_t count = 0, positives = 0;
};
absl::StatusOr<BinaryMetrics> ComputeMetrics(std::span<const float> probs,
                                             std::span<const float> labels);

}  // namespace sheaf::crm

#endif  // SHEAF_CORE_CRM_METRICS_H_
