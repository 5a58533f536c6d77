#include "dist/thread_communicator.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sheaf::dist {

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadWorld* world, int r) : w_(world), r_(r) {}
  int world_rank() const override { return r_; }
  int world_size() const override { return w_->n_; }
  Device device() const override { return Device::kDeviceCpu; }
  std::string backend_name() const override { return "threads"; }

  std::unique_ptr<Work> AllGather(float* out, const float* in, int64_t count,
                                  Purpose purpose) override {
    const int n = w_->n_;
    w_->inputs_[static_cast<size_t>(r_)] = in;
    w_->ArriveChecked(r_, absl::StrCat("all_gather(", count, ")"));
    std::vector<float> tmp(static_cast<size_t>(count * n));
    for (int s = 0; s < n; ++s) {
      if (count) std::memcpy(tmp.data() + s * count, w_->inputs_[static_cast<size_t>(s)], static_cast<size_t>(count) * 4);
    }
    w_->Arrive();
    if (count) std::memcpy(out, tmp.data(), tmp.size() * 4);
    Count(purpose, (n - 1) * count * 4);
    return CompletedWork();
  }

  std::unique_ptr<Work> ReduceScatter(float* out, const float* in, int64_t count, ReduceOp op,
                                      Purpose purpose) override {
    const int n = w_->n_;
    w_->inputs_[static_cast<size_t>(r_)] = in;
    w_->ArriveChecked(r_, absl::StrCat("reduce_scatter(", count, ")"));
    std::vector<double> acc(static_cast<size_t>(count), 0.0);
    for (int s = 0; s < n; ++s) {
      const float* src = static_cast<const float*>(w_->inputs_[static_cast<size_t>(s)]) + r_ * count;
      for (int64_t i = 0; i < count; ++i) acc[static_cast<size_t>(i)] += src[i];
    }
    w_->Arrive();
    for (int64_t i = 0; i < count; ++i) {
      out[i] = static_cast<float>(op == ReduceOp::kReduceAvg ? acc[static_cast<size_t>(i)] / n : acc[static_cast<size_t>(i)]);
    }
    Count(purpose, (n - 1) * count * 4);
    return CompletedWork();
  }

  std::unique_ptr<Work> AllReduce(float* data, int64_t count, ReduceOp op, Purpose purpose) override {
    const int n = w_->n_;
    w_->inputs_[static_cast<size_t>(r_)] = data;
    w_->ArriveChecked(r_, absl::StrCat("all_reduce(", count, ")"));
    // Sum in rank order (the same on every rank, so results are identical).
    std::vector<float> acc(static_cast<size_t>(count), 0.0f);
    for (int s = 0; s < n; ++s) {
      const float* src = static_cast<const float*>(w_->inputs_[static_cast<size_t>(s)]);
      for (int64_t i = 0; i < count; ++i) acc[static_cast<size_t>(i)] += src[i];
    }
    w_->Arrive();
    for (int64_t i = 0; i < count; ++i) {
      data[i] = op == ReduceOp::kReduceAvg ? acc[static_cast<size_t>(i)] / static_cast<float>(n) : acc[static_cast<size_t>(i)];
    }
    Count(purpose, 2 * (n - 1) * count * 4 / n);
    return CompletedWork();
  }

  std::unique_ptr<Work> Broadcast(void* data, int64_t bytes, int root, Purpose purpose) override {
    const int n = w_->n_;
    w_->inputs_[static_cast<size_t>(r_)] = data;
    w_->ArriveChecked(r_, absl::StrCat("broadcast(", bytes, ", root ", root, ")"));
    std::vector<char> tmp(static_cast<size_t>(bytes));
    if (bytes) std::memcpy(tmp.data(), w_->inputs_[static_cast<size_t>(root)], static_cast<size_t>(bytes));
    w_->Arrive();
    if (bytes && r_ != root) std::memcpy(data, tmp.data(), static_cast<size_t>(bytes));
    Count(purpose, r_ == root ? (n - 1) * bytes : 0);
    return CompletedWork();
  }

  std::unique_ptr<Work> Barrier() override {
    w_->ArriveChecked(r_, "barrier");
    Count(Purpose::kPurposeControl, 0);
    return CompletedWork();
  }

 private:
  ThreadWorld* w_;
  int r_;
};

ThreadWorld::ThreadWorld(int world_size)
    : n_(world_size), inputs_(static_cast<size_t>(world_size)), ops_(static_cast<size_t>(world_size)) {
  for (int r = 0; r < n_; ++r) comms_.push_back(std::make_unique<ThreadCommunicator>(this, r));
}

void ThreadWorld::Arrive() { ArriveChecked(-1, ""); }

void ThreadWorld::ArriveChecked(int rank, const std::string& what) {
  std::unique_lock<std::mutex> lock(mu_);
  if (rank >= 0) ops_[static_cast<size_t>(rank)] = what;
  const int64_t gen = generation_;
  if (++arrived_ == n_) {
    // The last rank to arrive sees every rank's op before anyone can move on.
    if (rank >= 0) {
      for (int r = 0; r < n_; ++r) {
        if (ops_[static_cast<size_t>(r)] != what) {
          std::fprintf(stderr, "ThreadWorld: collective mismatch: rank %d issued %s, rank %d issued %s\n",
                       rank, what.c_str(), r, ops_[static_cast<size_t>(r)].c_str());
          std::abort();
        }
      }
    }
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
  } else if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return generation_ != gen; })) {
    std::fprintf(stderr, "ThreadWorld: ranks waited 60 s in a collective: a rank stopped issuing "
                         "collectives (an error on one rank only?)\n");
    std::abort();
  }
}

}  // namespace sheaf::dist
