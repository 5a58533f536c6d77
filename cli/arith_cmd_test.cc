#include "cli/arith_cmd.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf::cli {
namespace {

using ::testing::HasSubstr;

TEST(ParseArithTermTest, ModelTermsTakeTheirOwnOrTheDefaultReference) {
  absl::StatusOr<ArithTerm> t = ParseArithTerm("model", "0.5:runs/a", ArithTerm::Kind::kArithTermModel, "m/r");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_DOUBLE_EQ(t->lambda, 0.5);
  EXPECT_EQ(t->path, "runs/a");
  EXPECT_EQ(t->ref, "m/r");
  t = ParseArithTerm("model", "-1e-1:runs/a:models/b", ArithTerm::Kind::kArithTermModel, "");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_DOUBLE_EQ(t->lambda, -0.1);
  EXPECT_EQ(t->ref, "models/b");
}

TEST(ParseArithTermTest, BadValuesNameTheFlag) {
  EXPECT_THAT(ParseArithTerm("model", "runs/a", ArithTerm::Kind::kArithTermModel, "").status().message(),
              HasSubstr("--model runs/a: expected LAMBDA:DIR"));
  EXPECT_THAT(ParseArithTerm("adapter", "x:runs/a", ArithTerm::Kind::kArithTermAdapter, "").status().message(),
              HasSubstr("lambda 'x' is not a finite number"));
  EXPECT_THAT(ParseArithTerm("adapter", "1:a:b", ArithTerm::Kind::kArithTermAdapter, "").status().message(),
              HasSubstr("an adapter term has no reference"));
  EXPECT_THAT(ParseArithTerm("model", "nan:a", ArithTerm::Kind::kArithTermModel, "").status().message(),
              HasSubstr("not a finite number"));
}

}  // namespace
}  // namespace sheaf::cli
