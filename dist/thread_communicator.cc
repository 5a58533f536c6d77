#include "dist/thread_communicator.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/safetensors.h"

namespace sheaf::dist {

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadWorld* world, int r) : w_(world), r_(r) {}
  int world_rank() const override { return r_; }
  int world_size() const override { return w_->n_; }
  Device device() const override { return Device::kDeviceCpu; }
  std::string backend_name() const override { return "threads"; }

  // Broadcast and Barrier: below.

 protected:
  std::unique_ptr<Work> DoAllGather(void* out, const void* in, int64_t count, DType dtype,
                                    Purpose purpose) override {
    const int n = w_->n_;
    const int64_t bytes = DTypeBytes(dtype, count);
    w_->inputs_[static_cast<size_t>(r_)] = in;
    w_->ArriveChecked(r_, absl::StrCat("all_gather(", count, " ", DTypeName(dtype), ")"));
    std::vector<char> tmp(static_cast<size_t>(bytes * n));
    for (int s = 0; s < n; ++s) {
      if (bytes) std::memcpy(tmp.data() + s * bytes, w_->inputs_[static_cast<size_t>(s)], static_cast<size_t>(bytes));
    }
    w_->Arrive();
    if (bytes) std::memcpy(out, tmp.data(), tmp.size());
    Count(purpose, (n - 1) * bytes);
    return CompletedWork();
  }

  std::unique_ptr<Work> DoReduceScatter(void* out, const void* in, int64_t count, DType dtype,
                                        ReduceOp op, Purpose purpose) override {
    const int n = w_->n_;
    w_->inputs_[static_cast<size_t>(r_)] = in;
    w_->ArriveChecked(r_, absl::StrCat("reduce_scatter(", count, " ", DTypeName(dtype), ")"));
    switch (dtype) {
      case DType::kDTypeF32: {
        std::vector<double> acc(static_cast<size_t>(count), 0.0);
        for (int s = 0; s < n; ++s) {
          const float* src = static_cast<const float*>(w_->inputs_[static_cast<size_t>(s)]) + r_ * count;
          for (int64_t i = 0; i < count; ++i) acc[static_cast<size_t>(i)] += src[i];
        }
        w_->Arrive();
        float* dst = static_cast<float*>(out);
        for (int64_t i = 0; i < count; ++i) {
          dst[i] = static_cast<float>(op == ReduceOp::kReduceAvg ? acc[static_cast<size_t>(i)] / n : acc[static_cast<size_t>(i)]);
        }
        break;
      }
      default: {
        std::vector<char> result(static_cast<size_t>(DTypeBytes(dtype, count)));
        ReduceNarrow(result.data(), r_ * count, count, dtype, op);
        w_->Arrive();
        if (count) std::memcpy(out, result.data(), result.size());
        break;
      }
    }
    Count(purpose, (n - 1) * DTypeBytes(dtype, count));
    return CompletedWork();
  }

  std::unique_ptr<Work> DoAllReduce(void* data, int64_t count, DType dtype, ReduceOp op,
                                    Purpose purpose) override {
    const int n = w_->n_;
    w_->inputs_[static_cast<size_t>(r_)] = data;
    w_->ArriveChecked(r_, absl::StrCat("all_reduce(", count, " ", DTypeName(dtype), ")"));
    switch (dtype) {
      case DType::kDTypeF32: {
        // Sum in rank order (the same on every rank, so results are identical).
        std::vector<float> acc(static_cast<size_t>(count), 0.0f);
        for (int s = 0; s < n; ++s) {
          const float* src = static_cast<const float*>(w_->inputs_[static_cast<size_t>(s)]);
          for (int64_t i = 0; i < count; ++i) acc[static_cast<size_t>(i)] += src[i];
        }
        w_->Arrive();
        float* dst = static_cast<float*>(data);
        for (int64_t i = 0; i < count; ++i) {
          dst[i] = op == ReduceOp::kReduceAvg ? acc[static_cast<size_t>(i)] / static_cast<float>(n) : acc[static_cast<size_t>(i)];
        }
        break;
      }
      default: {
        std::vector<char> result(static_cast<size_t>(DTypeBytes(dtype, count)));
        ReduceNarrow(result.data(), 0, count, dtype, op);
        w_->Arrive();
        if (count) std::memcpy(data, result.data(), result.size());
        break;
      }
    }
    Count(purpose, 2 * (n - 1) * DTypeBytes(dtype, count) / n);
    return CompletedWork();
  }

 private:
  // result[i] = op over ranks of input_r[first + i], for the 16- and 32-bit
  // integer-stored dtypes: bf16 summed in f32 in rank order and rounded once
  // (nearest even), the average divided in f32 before that rounding; i32
  // summed in int64 and wrapped to 32 bits. Reads the inputs, so it runs
  // between the two rendezvous.
  void ReduceNarrow(char* result, int64_t first, int64_t count, DType dtype, ReduceOp op) {
    const int n = w_->n_;
    if (dtype == DType::kDTypeBF16) {
      uint16_t* dst = reinterpret_cast<uint16_t*>(result);
      for (int64_t i = 0; i < count; ++i) {
        float acc = 0.0f;
        for (int s = 0; s < n; ++s) {
          acc += Bf16ToF32(static_cast<const uint16_t*>(w_->inputs_[static_cast<size_t>(s)])[first + i]);
        }
        if (op == ReduceOp::kReduceAvg) acc /= static_cast<float>(n);
        dst[i] = F32ToBf16(acc);
      }
      return;
    }
    // i32, sum only (CheckCollectiveDType).
    int32_t* dst = reinterpret_cast<int32_t*>(result);
    for (int64_t i = 0; i < count; ++i) {
      int64_t acc = 0;
      for (int s = 0; s < n; ++s) {
        acc += static_cast<const int32_t*>(w_->inputs_[static_cast<size_t>(s)])[first + i];
      }
      dst[i] = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(acc)));
    }
  }

 public:
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
