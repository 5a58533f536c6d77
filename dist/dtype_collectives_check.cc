#include "dist/dtype_collectives_check.h"

#include <cstdint>
#include <cstring>
#include <functional>

#include "absl/strings/str_cat.h"
#include "core/safetensors.h"

namespace sheaf::dist {
namespace {

class Checks {
 public:
  Checks(Communicator& comm, std::chrono::milliseconds wait) : comm_(comm), wait_(wait) {}

  void Expect(bool ok, const std::string& what) {
    ++result_.checks;
    if (!ok) result_.failures.push_back(absl::StrCat("rank ", comm_.world_rank(), ": ", what));
  }
  void ExpectOk(std::unique_ptr<Work> work, const std::string& what) {
    const absl::Status s = work->Wait(wait_);
    Expect(s.ok(), absl::StrCat(what, ": ", s.ToString()));
  }
  // One collective of `purpose` happened since the last reset, sending `bytes`.
  void ExpectCounted(Purpose purpose, int64_t bytes, const std::string& what) {
    for (int p = 0; p < kNumPurposes; ++p) {
      const bool mine = p == static_cast<int>(purpose);
      const int64_t got_bytes = comm_.stats().bytes_sent[p].load();
      const int64_t got_calls = comm_.stats().calls[p].load();
      Expect(got_bytes == (mine ? bytes : 0) && got_calls == (mine ? 1 : 0),
             absl::StrCat(what, ": ", PurposeName(static_cast<Purpose>(p)), " bytes ", got_bytes,
                          " calls ", got_calls, ", want ", mine ? bytes : 0, " and ",
                          mine ? 1 : 0));
    }
    comm_.ResetStats();
  }
  // Compares n values; reports the first mismatch only.
  template <typename T>
  void ExpectValues(const std::vector<T>& got, int64_t n, const std::function<T(int64_t)>& want,
                    const std::string& what, const std::function<double(T)>& show) {
    for (int64_t i = 0; i < n; ++i) {
      if (!(got[static_cast<size_t>(i)] == want(i))) {
        Expect(false, absl::StrCat(what, ": [", i, "] = ", show(got[static_cast<size_t>(i)]),
                                   ", want ", show(want(i))));
        return;
      }
    }
    Expect(true, what);
  }
  DTypeCheckResult& result() { return result_; }

 private:
  Communicator& comm_;
  const std::chrono::milliseconds wait_;
  DTypeCheckResult result_;
};

double ShowBf16(uint16_t b) { return Bf16ToF32(b); }
double ShowF32(float f) { return f; }
double ShowI32(int32_t v) { return v; }
double ShowByte(uint8_t v) { return v; }

void CheckCount(Checks& check, Communicator& comm, int64_t count) {
  const int64_t n = comm.world_size();
  const int64_t r = comm.world_rank();
  const std::string at = absl::StrCat(" (count ", count, ", N=", n, ")");
  const uint16_t guard = F32ToBf16(-7.0f);

  // f32 through the typed entry point: r + i%7 summed is N(N-1)/2 + N(i%7).
  {
    std::vector<float> data(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) data[i] = static_cast<float>(r + i % 7);
    check.ExpectOk(comm.AllReduce(data.data(), count, DType::kDTypeF32, ReduceOp::kReduceSum,
                                  Purpose::kPurposeAdapterGrad),
                   "f32 all_reduce sum" + at);
    check.ExpectValues<float>(
        data, count, [&](int64_t i) { return static_cast<float>(n * (n - 1) / 2 + n * (i % 7)); },
        "f32 all_reduce sum" + at, ShowF32);
    check.ExpectCounted(Purpose::kPurposeAdapterGrad, 2 * (n - 1) * count * 4 / n,
                        "f32 all_reduce bytes" + at);
  }
  // bf16 all-reduce, sum and average: r + (i%5)/4.
  for (ReduceOp op : {ReduceOp::kReduceSum, ReduceOp::kReduceAvg}) {
    const bool avg = op == ReduceOp::kReduceAvg;
    const std::string what = absl::StrCat("bf16 all_reduce ", ReduceOpName(op), at);
    std::vector<uint16_t> data(static_cast<size_t>(count) + 1, guard);
    for (int64_t i = 0; i < count; ++i) {
      data[i] = F32ToBf16(static_cast<float>(r) + 0.25f * static_cast<float>(i % 5));
    }
    check.ExpectOk(comm.AllReduce(data.data(), count, DType::kDTypeBF16, op,
                                  Purpose::kPurposeAdapterGrad),
                   what);
    check.ExpectValues<uint16_t>(
        data, count,
        [&](int64_t i) {
          const double sum = static_cast<double>(n * (n - 1)) / 2 + 0.25 * n * (i % 5);
          return F32ToBf16(static_cast<float>(avg ? sum / n : sum));
        },
        what, ShowBf16);
    check.Expect(data[count] == guard, what + ": the element after the buffer is untouched");
    check.ExpectCounted(Purpose::kPurposeAdapterGrad, 2 * (n - 1) * count * 2 / n,
                        what + " bytes");
  }
  // bf16 reduce-scatter: in[j] = r + j%3; this rank gets block r.
  {
    const std::string what = "bf16 reduce_scatter sum" + at;
    std::vector<uint16_t> in(static_cast<size_t>(n * count));
    for (int64_t j = 0; j < n * count; ++j) in[j] = F32ToBf16(static_cast<float>(r + j % 3));
    std::vector<uint16_t> out(static_cast<size_t>(count) + 1, guard);
    check.ExpectOk(comm.ReduceScatter(out.data(), in.data(), count, DType::kDTypeBF16,
                                      ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad),
                   what);
    check.ExpectValues<uint16_t>(
        out, count,
        [&](int64_t i) {
          return F32ToBf16(static_cast<float>(n * (n - 1) / 2 + n * ((r * count + i) % 3)));
        },
        what, ShowBf16);
    check.Expect(out[count] == guard, what + ": guard");
    check.ExpectCounted(Purpose::kPurposeAdapterGrad, (n - 1) * count * 2, what + " bytes");
  }
  // bf16 all-gather, separate and in place: rank s contributes 16s + i%16.
  for (bool in_place : {false, true}) {
    const std::string what =
        absl::StrCat("bf16 all_gather", in_place ? " in place" : "", at);
    std::vector<uint16_t> out(static_cast<size_t>(n * count) + 1, guard);
    std::vector<uint16_t> mine(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) mine[i] = F32ToBf16(static_cast<float>(16 * r + i % 16));
    const void* src = mine.data();
    if (in_place) {
      std::memcpy(out.data() + r * count, mine.data(), mine.size() * 2);
      src = out.data() + r * count;
    }
    check.ExpectOk(
        comm.AllGather(out.data(), src, count, DType::kDTypeBF16, Purpose::kPurposeFrozenGather),
        what);
    check.ExpectValues<uint16_t>(
        out, n * count,
        [&](int64_t j) {
          return F32ToBf16(static_cast<float>(16 * (j / count) + (j % count) % 16));
        },
        what, ShowBf16);
    check.Expect(out[n * count] == guard, what + ": guard");
    check.ExpectCounted(Purpose::kPurposeFrozenGather, (n - 1) * count * 2, what + " bytes");
  }
  // i32 sum: r·10^6 + i.
  {
    const std::string what = "i32 all_reduce sum" + at;
    std::vector<int32_t> data(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) data[i] = static_cast<int32_t>(r * 1'000'000 + i);
    check.ExpectOk(comm.AllReduce(data.data(), count, DType::kDTypeI32, ReduceOp::kReduceSum,
                                  Purpose::kPurposeControl),
                   what);
    check.ExpectValues<int32_t>(
        data, count,
        [&](int64_t i) { return static_cast<int32_t>(n * (n - 1) / 2 * 1'000'000 + n * i); },
        what, ShowI32);
    check.ExpectCounted(Purpose::kPurposeControl, 2 * (n - 1) * count * 4 / n, what + " bytes");
  }
}

void CheckNf4Gather(Checks& check, Communicator& comm) {
  const int64_t n = comm.world_size();
  const int64_t r = comm.world_rank();
  const int64_t count = 2 * kNf4BlockSize;  // two blocks: 72 bytes a rank
  const int64_t bytes = DTypeBytes(DType::kDTypeNF4, count);
  std::vector<uint8_t> mine(static_cast<size_t>(bytes));
  for (int64_t b = 0; b < bytes; ++b) mine[b] = static_cast<uint8_t>(31 * r + b);
  std::vector<uint8_t> out(static_cast<size_t>(n * bytes) + 1, 0xEE);
  check.ExpectOk(comm.AllGather(out.data(), mine.data(), count, DType::kDTypeNF4,
                                Purpose::kPurposeFrozenGather),
                 "nf4 all_gather of two blocks");
  check.ExpectValues<uint8_t>(
      out, n * bytes,
      [&](int64_t j) { return static_cast<uint8_t>(31 * (j / bytes) + j % bytes); },
      "nf4 all_gather bytes", ShowByte);
  check.Expect(out[n * bytes] == 0xEE, "nf4 all_gather guard");
  check.ExpectCounted(Purpose::kPurposeFrozenGather, (n - 1) * bytes, "nf4 all_gather counted");
}

void CheckErrors(Checks& check, Communicator& comm, bool host_memory) {
  auto code = [](std::unique_ptr<Work> w) {
    return w->Wait(std::chrono::milliseconds(0)).code();
  };
  uint16_t h[kNf4BlockSize] = {};
  int32_t i = 0;
  const auto invalid = absl::StatusCode::kInvalidArgument;
  check.Expect(code(comm.AllReduce(h, 1, DType::kDTypeF16, ReduceOp::kReduceSum,
                                   Purpose::kPurposeAdapterGrad)) == invalid,
               "f16 all_reduce is InvalidArgument");
  check.Expect(code(comm.AllReduce(&i, 1, DType::kDTypeI32, ReduceOp::kReduceAvg,
                                   Purpose::kPurposeControl)) == invalid,
               "i32 average is InvalidArgument");
  check.Expect(code(comm.ReduceScatter(h, h, 1, DType::kDTypeNF4, ReduceOp::kReduceSum,
                                       Purpose::kPurposeAdapterGrad)) == invalid,
               "nf4 reduce_scatter is InvalidArgument");
  check.Expect(code(comm.AllGather(h, h, 10, DType::kDTypeNF4, Purpose::kPurposeFrozenGather)) ==
                   invalid,
               "nf4 all_gather of a partial block is InvalidArgument");
  for (int p = 0; p < kNumPurposes; ++p) {
    check.Expect(comm.stats().calls[p].load() == 0, "rejected dtype calls are not counted");
  }
  comm.ResetStats();
  if (host_memory) {
    float x = 1.0f;
    std::unique_ptr<Work> w =
        comm.AllReduce(&x, 1, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad);
    check.Expect(w->WaitOnStream(nullptr).code() == absl::StatusCode::kUnimplemented,
                 "WaitOnStream is Unimplemented on a host-memory backend");
    check.ExpectOk(std::move(w), "the collective behind WaitOnStream");
    check.Expect(x == static_cast<float>(comm.world_size()), "sum of ones is N");
    comm.ResetStats();
  }
}

}  // namespace

DTypeCheckResult CheckDTypeCollectives(Communicator& comm, std::chrono::milliseconds wait,
                                       bool host_memory) {
  Checks check(comm, wait);
  comm.ResetStats();
  const int64_t n = comm.world_size();
  for (int64_t count : {int64_t{0}, int64_t{1}, n + 1, int64_t{1000}, int64_t{4099}}) {
    CheckCount(check, comm, count);
  }
  CheckNf4Gather(check, comm);
  CheckErrors(check, comm, host_memory);
  return std::move(check.result());
}

}  // namespace sheaf::dist
