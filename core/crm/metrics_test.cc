#include "core/crm/metrics.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace sheaf::crm {
namespace {

// Independent reference: count every (positive, negative) pair, 1 for a
// correctly ordered pair, 1/2 for a tie (O(n^2), no ranks, no sorting).
double NaiveAuc(const std::vector<float>& s, const std::vector<float>& y) {
  double wins = 0, pairs = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    for (size_t j = 0; j < s.size(); ++j) {
      if (y[i] != 1.0f || y[j] != 0.0f) continue;
      pairs += 1;
      wins += s[i] > s[j] ? 1.0 : (s[i] == s[j] ? 0.5 : 0.0);
    }
  }
  return wins / pairs;
}

TEST(Metrics, AucMatchesPairCountWithTies) {
  // Fixtures chosen to have ties inside a class, across classes, and at the
  // extremes; scores are drawn from a tiny set so ties are frequent.
  uint64_t state = 7;
  auto next = [&]() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(state >> 33);
  };
  for (int trial = 0; trial < 50; ++trial) {
    const int n = 2 + static_cast<int>(next() % 60);
    std::vector<float> s(n), y(n);
    for (int i = 0; i < n; ++i) {
      s[i] = static_cast<float>(next() % 7) * 0.125f;
      y[i] = static_cast<float>(next() % 2);
    }
    y[0] = 1.0f;
    y[1] = 0.0f;
    auto auc = Auc(s, y);
    ASSERT_TRUE(auc.ok()) << auc.status();
    // Both sides are exact sums of halves divided by P*N (<= 3600): doubles
    // agree to rounding of one division.
    EXPECT_NEAR(*auc, NaiveAuc(s, y), 1e-12) << "trial " << trial;
  }
}

TEST(Metrics, AucKnownValues) {
  EXPECT_DOUBLE_EQ(*Auc(std::vector<float>{0.1f, 0.9f}, std::vector<float>{0, 1}), 1.0);
  EXPECT_DOUBLE_EQ(*Auc(std::vector<float>{0.9f, 0.1f}, std::vector<float>{0, 1}), 0.0);
  // All scores tied: every pair counts 1/2.
  EXPECT_DOUBLE_EQ(*Auc(std::vector<float>{3, 3, 3, 3}, std::vector<float>{0, 1, 1, 0}), 0.5);
  // 1 positive above 1 of 2 negatives, tied with the other: (1 + 0.5) / 2.
  EXPECT_DOUBLE_EQ(*Auc(std::vector<float>{0.2f, 0.5f, 0.5f}, std::vector<float>{0, 0, 1}),
                   0.75);
}

TEST(Metrics, LogLossAndAccuracyMatchDirectSums) {
  std::vector<float> p = {0.9f, 0.2f, 0.5f, 1.0f, 0.0f};
  std::vector<float> y = {1, 0, 0, 0, 0};
  double ref = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    double q = std::min(std::max(static_cast<double>(p[i]), 1e-7), 1 - 1e-7);
    ref += y[i] == 1 ? -std::log(q) : -std::log(1 - q);
  }
  ref /= p.size();
  EXPECT_NEAR(*LogLoss(p, y), ref, 1e-12);
  // The wrong certain answer (p=1, y=0) costs -log(1e-7) = 16.118, not inf.
  EXPECT_GT(*LogLoss(p, y), 16.1 / 5);
  // Right: 0.9->1, 0.2->0, 0.0->0; wrong: 0.5 (>= 0.5 is "yes"), 1.0.
  EXPECT_DOUBLE_EQ(*Accuracy(p, y), 3.0 / 5.0);
}

TEST(Metrics, Errors) {
  EXPECT_FALSE(Auc(std::vector<float>{1, 2}, std::vector<float>{1, 1}).ok());  // one class
  EXPECT_FALSE(Auc(std::vector<float>{1}, std::vector<float>{1, 0}).ok());     // sizes
  EXPECT_FALSE(Auc(std::vector<float>{NAN, 1}, std::vector<float>{1, 0}).ok());
  EXPECT_FALSE(LogLoss(std::vector<float>{1.5f}, std::vector<float>{1}).ok());
  EXPECT_FALSE(LogLoss(std::vector<float>{0.5f}, std::vector<float>{2}).ok());
  EXPECT_FALSE(Accuracy(std::vector<float>{}, std::vector<float>{}).ok());
}

}  // namespace
}  // namespace sheaf::crm
