#include "base/status.h"

#include "gtest/gtest.h"

namespace sheaf {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::Status Quarter(int x, int* out) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(*out, Half(h));
  return absl::OkStatus();
}

absl::Status Check(bool fail) {
  RETURN_IF_ERROR(fail ? absl::NotFoundError("x") : absl::OkStatus());
  return absl::InternalError("reached end");
}

TEST(StatusMacros, PropagateErrorsAndValues) {
  int q = 0;
  EXPECT_TRUE(Quarter(8, &q).ok());
  EXPECT_EQ(q, 2);
  EXPECT_EQ(Quarter(6, &q).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Check(true).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Check(false).code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace sheaf
