#include "dist/local_communicator.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace sheaf::dist {
namespace {

absl::Status CheckBuffer(const char* op, const char* name, const void* ptr, int64_t count) {
  if (count < 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": negative count ", count));
  }
  if (count > 0 && ptr == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " is null with count ", count));
  }
  return absl::OkStatus();
}

// out = in over `count` elements of `dtype`; memmove because the interface
// lets them overlap (AllGather's in may alias out + world_rank * count).
void CopyIfDistinct(void* out, const void* in, int64_t count, DType dtype) {
  if (out != in && count > 0) {
    std::memmove(out, in, static_cast<size_t>(DTypeBytes(dtype, count)));
  }
}

}  // namespace

std::unique_ptr<Work> LocalCommunicator::DoAllGather(void* out, const void* in, int64_t count,
                                                     DType dtype, Purpose purpose) {
  absl::Status status = CheckBuffer("all_gather", "out", out, count);
  if (status.ok()) status = CheckBuffer("all_gather", "in", in, count);
  if (!status.ok()) return CompletedWork(status);
  CopyIfDistinct(out, in, count, dtype);
  Count(purpose, 0);
  return CompletedWork();
}

std::unique_ptr<Work> LocalCommunicator::DoReduceScatter(void* out, const void* in,
                                                         int64_t count, DType dtype,
                                                         ReduceOp /*op*/, Purpose purpose) {
  // Sum and average over one rank are both the identity.
  absl::Status status = CheckBuffer("reduce_scatter", "out", out, count);
  if (status.ok()) status = CheckBuffer("reduce_scatter", "in", in, count);
  if (!status.ok()) return CompletedWork(status);
  CopyIfDistinct(out, in, count, dtype);
  Count(purpose, 0);
  return CompletedWork();
}

std::unique_ptr<Work> LocalCommunicator::DoAllReduce(void* data, int64_t count, DType /*dtype*/,
                                                     ReduceOp /*op*/, Purpose purpose) {
  absl::Status status = CheckBuffer("all_reduce", "data", data, count);
  if (!status.ok()) return CompletedWork(status);
  Count(purpose, 0);
  return CompletedWork();
}

std::unique_ptr<Work> LocalCommunicator::Broadcast(void* data, int64_t bytes, int root,
                                                   Purpose purpose) {
  absl::Status status = CheckBuffer("broadcast", "data", data, bytes);
  if (!status.ok()) return CompletedWork(status);
  if (root != 0) {
    return CompletedWork(absl::InvalidArgumentError(
        absl::StrCat("broadcast: root ", root, " is not a rank of a world of one")));
  }
  Count(purpose, 0);
  return CompletedWork();
}

std::unique_ptr<Work> LocalCommunicator::Barrier() {
  Count(Purpose::kPurposeControl, 0);
  return CompletedWork();
}

}  // namespace sheaf::dist
