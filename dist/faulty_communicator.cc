#include "dist/faulty_communicator.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace sheaf::dist {
namespace {

using Clock = std::chrono::steady_clock;

std::string DescribeFault(int64_t index) {
  return absl::StrCat("collective #", index, " (injected fault)");
}

// Completes no earlier than `ready_at`, and no earlier than `inner`.
class DelayedWork final : public Work {
 public:
  DelayedWork(std::unique_ptr<Work> inner, Clock::time_point ready_at, int64_t index)
      : inner_(std::move(inner)), ready_at_(ready_at), index_(index) {}

  absl::Status Wait(std::chrono::milliseconds timeout) override {
    const Clock::time_point deadline = Clock::now() + timeout;
    if (ready_at_ > deadline) {
      std::this_thread::sleep_until(deadline);
      return absl::DeadlineExceededError(
          absl::StrCat(DescribeFault(index_), ": delayed collective did not complete within ",
                       absl::FormatDuration(absl::FromChrono(timeout))));
    }
    std::this_thread::sleep_until(ready_at_);
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - Clock::now());
    return inner_->Wait(std::max(left, std::chrono::milliseconds(0)));
  }

  bool Done() override { return Clock::now() >= ready_at_ && inner_->Done(); }

 private:
  const std::unique_ptr<Work> inner_;
  const Clock::time_point ready_at_;
  const int64_t index_;
};

class HungWork final : public Work {
 public:
  explicit HungWork(int64_t index) : index_(index) {}

  absl::Status Wait(std::chrono::milliseconds timeout) override {
    std::this_thread::sleep_for(timeout);
    return absl::DeadlineExceededError(
        absl::StrCat(DescribeFault(index_), ": hung collective did not complete within ",
                     absl::FormatDuration(absl::FromChrono(timeout))));
  }
  bool Done() override { return false; }

 private:
  const int64_t index_;
};

}  // namespace

FaultyCommunicator::FaultyCommunicator(std::unique_ptr<Communicator> inner,
                                       std::vector<Fault> faults)
    : inner_(std::move(inner)), faults_(std::move(faults)) {}

std::unique_ptr<Work> FaultyCommunicator::Apply(
    Purpose purpose, const std::function<std::unique_ptr<Work>()>& run) {
  const int64_t index = next_index_++;
  const Fault* fault = nullptr;
  for (const Fault& f : faults_) {
    if (f.index == index) {
      fault = &f;
      break;
    }
  }
  if (fault != nullptr) ++fired_;
  if (fault != nullptr && fault->kind == Fault::Kind::kFaultFail) {
    return CompletedWork(fault->status);
  }
  if (fault != nullptr && fault->kind == Fault::Kind::kFaultHang) {
    return std::make_unique<HungWork>(index);
  }
  // Mirror what the inner communicator counts for this call (collectives are
  // issued from one thread, so the delta is this call's).
  const int p = static_cast<int>(purpose);
  const int64_t bytes_before = inner_->stats().bytes_sent[p].load();
  const int64_t calls_before = inner_->stats().calls[p].load();
  std::unique_ptr<Work> work = run();
  if (inner_->stats().calls[p].load() != calls_before) {
    Count(purpose, inner_->stats().bytes_sent[p].load() - bytes_before);
  }
  if (fault != nullptr) {  // kFaultDelay
    return std::make_unique<DelayedWork>(std::move(work), Clock::now() + fault->delay, index);
  }
  return work;
}

std::unique_ptr<Work> FaultyCommunicator::DoAllGather(void* out, const void* in, int64_t count,
                                                      DType dtype, Purpose purpose) {
  return Apply(purpose, [&] { return inner_->AllGather(out, in, count, dtype, purpose); });
}

std::unique_ptr<Work> FaultyCommunicator::DoReduceScatter(void* out, const void* in,
                                                          int64_t count, DType dtype, ReduceOp op,
                                                          Purpose purpose) {
  return Apply(purpose,
               [&] { return inner_->ReduceScatter(out, in, count, dtype, op, purpose); });
}

std::unique_ptr<Work> FaultyCommunicator::DoAllReduce(void* data, int64_t count, DType dtype,
                                                      ReduceOp op, Purpose purpose) {
  return Apply(purpose, [&] { return inner_->AllReduce(data, count, dtype, op, purpose); });
}

std::unique_ptr<Work> FaultyCommunicator::Broadcast(void* data, int64_t bytes, int root,
                                                    Purpose purpose) {
  return Apply(purpose, [&] { return inner_->Broadcast(data, bytes, root, purpose); });
}

std::unique_ptr<Work> FaultyCommunicator::Barrier() {
  return Apply(Purpose::kPurposeControl, [&] { return inner_->Barrier(); });
}

}  // namespace sheaf::dist
