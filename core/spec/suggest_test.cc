#include "core/spec/suggest.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

TEST(EditDistanceTest, ClassicCases) {
  EXPECT_EQ(EditDistance("", ""), 0);
  EXPECT_EQ(EditDistance("abc", ""), 3);
  EXPECT_EQ(EditDistance("", "abc"), 3);
  EXPECT_EQ(EditDistance("kitten", "sitting"), 3);
  EXPECT_EQ(EditDistance("lrr", "lr"), 1);
  EXPECT_EQ(EditDistance("flaw", "lawn"), 2);
}

TEST(ClosestMatchTest, FindsMisspellings) {
  const std::vector<std::string> keys = {"lr", "beta1", "beta2", "eps",
                                         "weight_decay"};
  EXPECT_EQ(ClosestMatch("lrr", keys), "lr");
  EXPECT_EQ(ClosestMatch("weight_decy", keys), "weight_decay");
  EXPECT_EQ(ClosestMatch("weightDecay", keys), "weight_decay");
  EXPECT_EQ(ClosestMatch("weight-decay", keys), "weight_decay");
  EXPECT_EQ(ClosestMatch("beta3", keys), "beta1");  // A tie: the first wins.
}

TEST(ClosestMatchTest, PrefixesCount) {
  const std::vector<std::string> keys = {"warmup_steps", "min_lr_ratio"};
  EXPECT_EQ(ClosestMatch("warmup", keys), "warmup_steps");
}

TEST(ClosestMatchTest, NothingCloseGivesEmpty) {
  const std::vector<std::string> keys = {"lr", "beta1", "eps"};
  EXPECT_EQ(ClosestMatch("learning_rate", keys), "");
  EXPECT_EQ(ClosestMatch("", keys), "");
  EXPECT_EQ(ClosestMatch("lr", {}), "");
}

}  // namespace
}  // namespace sheaf
