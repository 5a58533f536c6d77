#include "jobs/world_sync.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace sheaf::jobs {

WorldSync::WorldSync(dist::Communicator* comm, std::chrono::milliseconds timeout)
    : comm_(comm), timeout_(timeout) {
  if (comm_ != nullptr) {
    world_rank_ = comm_->world_rank();
    world_size_ = comm_->world_size();
  }
}

absl::Status WorldSync::Sum(absl::Span<double> values) {
  if (world_size_ == 1 || values.empty()) return absl::OkStatus();
  const size_t n = values.size();
  std::vector<float> buf(2 * n);
  for (size_t i = 0; i < n; ++i) {
    buf[2 * i] = static_cast<float>(values[i]);
    buf[2 * i + 1] = static_cast<float>(values[i] - static_cast<double>(buf[2 * i]));
  }
  auto work = comm_->AllReduce(buf.data(), static_cast<int64_t>(2 * n), dist::ReduceOp::kReduceSum,
                               dist::Purpose::kPurposeControl);
  RETURN_IF_ERROR(work->Wait(timeout_));
  for (size_t i = 0; i < n; ++i) {
    values[i] = static_cast<double>(buf[2 * i]) + static_cast<double>(buf[2 * i + 1]);
  }
  return absl::OkStatus();
}

absl::Status WorldSync::Tally(std::initializer_list<Vote*> votes) {
  std::vector<double> counts;
  counts.reserve(votes.size());
  for (const Vote* v : votes) counts.push_back(v->mine_ ? 1.0 : 0.0);
  RETURN_IF_ERROR(Sum(absl::MakeSpan(counts)));
  size_t i = 0;
  for (Vote* v : votes) v->count_ = static_cast<int>(counts[i++] + 0.5);
  return absl::OkStatus();
}

absl::Status WorldSync::AgreeOnStatus(const absl::Status& local, std::string_view what) {
  if (world_size_ == 1) return local;
  Vote failed(!local.ok());
  RETURN_IF_ERROR(Tally({&failed}));
  if (!local.ok()) return local;
  if (failed.any()) {
    return absl::AbortedError(absl::StrCat(std::string(what), " failed on ", failed.count(),
                                           " other rank(s); see their error"));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> WorldSync::AllEqual(int64_t value) {
  if (world_size_ == 1) return true;
  double sum = static_cast<double>(value);
  RETURN_IF_ERROR(Sum(absl::MakeSpan(&sum, 1)));
  return sum == static_cast<double>(value) * world_size_;
}

absl::Status WorldSync::Barrier() {
  if (world_size_ == 1) return absl::OkStatus();
  return comm_->Barrier()->Wait(timeout_);
}

}  // namespace sheaf::jobs
