// All-reduce benchmark of dist::MpiCommunicator, nccl-tests style. Run
// under `mpirun -np N` (bench/allreduce.sh does it for N = 2 and 4).
//
// Sweeps sizes from --min_bytes to --max_bytes (x --step each), and for each
// size: --warmup untimed all-reduces, then timed ones (each issued and
// waited on, as a training step would), then one checked all-reduce of
// rank-dependent data against its closed form. Prints, on rank 0, one line
// per size:
//
//   size_bytes time_us algbw_GBps busbw_GBps check
//
// with nccl-tests' definitions: time_us is the mean time of one all-reduce
// (the slowest rank's), algbw = size_bytes / time, busbw = algbw·2(N−1)/N
// (what each rank's link carries in a ring), GB = 1e9 bytes. check is "ok"
// when every element on every rank matched and the adapter_grad byte
// counter grew by exactly 2(N−1)/N·size, else "FAIL(<k>)" with k the wrong
// elements (+1 for a wrong counter) on the worst rank.
// Lines starting with '#' are comments. Exit status 1 if any check failed.
//
// Flags: --min_bytes=4 --max_bytes=67108864 --step=4 --warmup=5 --iters=20
//        --max_seconds=2 (per size: fewer timed iterations for large sizes
//        when one would take longer; rank 0 decides, all ranks follow)
//        --dtype=f32 (or bf16: the same sizes in bytes, twice the elements;
//        the check's values are integers up to 13·N(N+1)/2, exact in bf16
//        for N <= 4, and so are all their partial sums).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "core/safetensors.h"
#include "dist/communicator.h"
#include "dist/mpi_communicator.h"

namespace sheaf::dist {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::chrono::milliseconds kWait{10 * 60 * 1000};

struct Flags {
  int64_t min_bytes = 4;
  int64_t max_bytes = int64_t{64} << 20;
  int64_t step = 4;
  int64_t warmup = 5;
  int64_t iters = 20;
  double max_seconds = 2.0;
  DType dtype = DType::kDTypeF32;
};

bool ParseFlags(int argc, char** argv, Flags& flags) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    const size_t eq = arg.find('=');
    if (eq == absl::string_view::npos) return false;
    const absl::string_view name = arg.substr(0, eq);
    const absl::string_view value = arg.substr(eq + 1);
    bool ok = false;
    if (name == "--min_bytes") ok = absl::SimpleAtoi(value, &flags.min_bytes);
    if (name == "--max_bytes") ok = absl::SimpleAtoi(value, &flags.max_bytes);
    if (name == "--step") ok = absl::SimpleAtoi(value, &flags.step);
    if (name == "--warmup") ok = absl::SimpleAtoi(value, &flags.warmup);
    if (name == "--iters") ok = absl::SimpleAtoi(value, &flags.iters);
    if (name == "--max_seconds") ok = absl::SimpleAtod(value, &flags.max_seconds);
    if (name == "--dtype") {
      ok = value == "f32" || value == "bf16";
      flags.dtype = value == "bf16" ? DType::kDTypeBF16 : DType::kDTypeF32;
    }
    if (!ok) return false;
  }
  return flags.min_bytes >= 4 && flags.max_bytes >= flags.min_bytes && flags.step >= 2 &&
         flags.warmup >= 0 && flags.iters >= 1 && flags.max_seconds > 0;
}

// Issues and waits; a failure ends the benchmark (peers are out of step).
bool AllReduce(Communicator& comm, void* data, int64_t count, DType dtype, Purpose purpose) {
  const absl::Status status =
      comm.AllReduce(data, count, dtype, ReduceOp::kReduceSum, purpose)->Wait(kWait);
  if (!status.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", comm.world_rank(), status.ToString().c_str());
  }
  return status.ok();
}

// The largest of each rank's `value` (an all-gather; control traffic).
bool MaxOverRanks(Communicator& comm, float value, float& max) {
  std::vector<float> all(comm.world_size());
  const absl::Status status =
      comm.AllGather(all.data(), &value, 1, Purpose::kPurposeControl)->Wait(kWait);
  if (!status.ok()) return false;
  max = *std::max_element(all.begin(), all.end());
  return true;
}

// Element i of a buffer of `dtype` (f32 or bf16), read and written as float.
void Set(std::vector<char>& buffer, DType dtype, int64_t i, float value) {
  if (dtype == DType::kDTypeBF16) {
    reinterpret_cast<uint16_t*>(buffer.data())[i] = F32ToBf16(value);
  } else {
    reinterpret_cast<float*>(buffer.data())[i] = value;
  }
}
float Get(const std::vector<char>& buffer, DType dtype, int64_t i) {
  return dtype == DType::kDTypeBF16
             ? Bf16ToF32(reinterpret_cast<const uint16_t*>(buffer.data())[i])
             : reinterpret_cast<const float*>(buffer.data())[i];
}

int Run(const Flags& flags) {
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> created = MpiCommunicator::Create();
  if (!created.ok()) {
    std::fprintf(stderr, "MpiCommunicator::Create: %s\n", created.status().ToString().c_str());
    return 1;
  }
  MpiCommunicator& comm = **created;
  const int64_t world = comm.world_size();
  const int64_t me = comm.world_rank();
  const bool print = me == 0;
  const double bus_factor = 2.0 * static_cast<double>(world - 1) / static_cast<double>(world);
  if (print) {
    std::printf("# all_reduce sum, %s, backend=%s N=%lld warmup=%lld iters<=%lld\n",
                flags.dtype == DType::kDTypeBF16 ? "bfloat16" : "float32",
                comm.backend_name().c_str(), static_cast<long long>(world),
                static_cast<long long>(flags.warmup), static_cast<long long>(flags.iters));
    std::printf("# size_bytes time_us algbw_GBps busbw_GBps check\n");
    std::fflush(stdout);
  }

  bool all_ok = true;
  const DType dtype = flags.dtype;
  const int64_t element_bytes = DTypeBytes(dtype, 1);
  std::vector<char> data(static_cast<size_t>(flags.max_bytes));
  for (int64_t bytes = flags.min_bytes; bytes <= flags.max_bytes; bytes *= flags.step) {
    const int64_t count = bytes / element_bytes;
    const Purpose grad = Purpose::kPurposeAdapterGrad;
    // Timed runs reduce whatever is in the buffer; values may grow, which
    // does not change the time. Small values keep them finite.
    for (int64_t i = 0; i < count; ++i) Set(data, dtype, i, 1e-3f);

    const Clock::time_point warm_start = Clock::now();
    for (int64_t i = 0; i < flags.warmup; ++i) {
      if (!AllReduce(comm, data.data(), count, dtype, grad)) return 1;
    }
    const double warm_s =
        std::chrono::duration<double>(Clock::now() - warm_start).count() /
        static_cast<double>(std::max<int64_t>(flags.warmup, 1));
    int32_t iters = static_cast<int32_t>(std::clamp<double>(
        flags.max_seconds / std::max(warm_s, 1e-9), 1.0, static_cast<double>(flags.iters)));
    if (flags.warmup == 0) iters = static_cast<int32_t>(flags.iters);
    // Every rank must run the same number: rank 0's estimate wins.
    if (!comm.Broadcast(&iters, sizeof(iters), 0, Purpose::kPurposeControl)->Wait(kWait).ok()) {
      return 1;
    }

    if (!comm.Barrier()->Wait(kWait).ok()) return 1;
    const Clock::time_point start = Clock::now();
    for (int32_t i = 0; i < iters; ++i) {
      if (!AllReduce(comm, data.data(), count, dtype, grad)) return 1;
    }
    const float time_us = static_cast<float>(
        std::chrono::duration<double, std::micro>(Clock::now() - start).count() / iters);
    float slowest_us = 0;
    if (!MaxOverRanks(comm, time_us, slowest_us)) return 1;

    // The check: data_r[i] = (r+1)·(i mod 13 + 1) sums to
    // (i mod 13 + 1)·N(N+1)/2, exactly in float (and in bf16 for N <= 4).
    for (int64_t i = 0; i < count; ++i) {
      Set(data, dtype, i, static_cast<float>((me + 1) * (i % 13 + 1)));
    }
    const int64_t counted_before = comm.bytes_sent(grad);
    if (!AllReduce(comm, data.data(), count, dtype, grad)) return 1;
    const int64_t counted = comm.bytes_sent(grad) - counted_before;
    float wrong = 0;
    for (int64_t i = 0; i < count; ++i) {
      const float want = static_cast<float>((i % 13 + 1) * world * (world + 1) / 2);
      if (Get(data, dtype, i) != want) wrong += 1;
    }
    if (counted != 2 * (world - 1) * count * element_bytes / world) wrong += 1;
    float wrong_anywhere = 0;
    if (!MaxOverRanks(comm, wrong, wrong_anywhere)) return 1;
    all_ok = all_ok && wrong_anywhere == 0;

    if (print) {
      const double algbw = static_cast<double>(bytes) / (slowest_us * 1e-6) / 1e9;
      std::printf("%lld %.2f %.4f %.4f %s\n", static_cast<long long>(bytes), slowest_us, algbw,
                  algbw * bus_factor,
                  wrong_anywhere == 0
                      ? "ok"
                      : ("FAIL(" + std::to_string(static_cast<int64_t>(wrong_anywhere)) + ")")
                            .c_str());
      std::fflush(stdout);
    }
  }
  return all_ok ? 0 : 1;
}

}  // namespace
}  // namespace sheaf::dist

int main(int argc, char** argv) {
  sheaf::dist::Flags flags;
  if (!sheaf::dist::ParseFlags(argc, argv, flags)) {
    std::fprintf(stderr,
                 "usage: %s [--min_bytes=4] [--max_bytes=67108864] [--step=4] [--warmup=5] "
                 "[--iters=20] [--max_seconds=2] [--dtype=f32|bf16]\n",
                 argv[0]);
    return 2;
  }
  return sheaf::dist::Run(flags);
}
