#include "dist/cuda/nccl_communicator.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/status.h"

namespace sheaf::dist {
namespace {

using Clock = std::chrono::steady_clock;

// Polling schedule for everything this backend waits on: yield for the
// first few rounds (a collective of a few KiB is done in microseconds), then
// sleep, doubling up to 200 µs so a long wait does not burn a core.
class Backoff {
 public:
  void Pause() {
    if (spins_ < 64) {
      ++spins_;
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(sleep_);
    sleep_ = std::min(sleep_ * 2, std::chrono::microseconds(200));
  }

 private:
  int spins_ = 0;
  std::chrono::microseconds sleep_{1};
};

// Makes `device` current for a scope and restores the caller's device, so
// a collective issued from a thread that works on another GPU leaves that
// thread as it was.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    status_ = CudaStatus(cudaGetDevice(&previous_), "cudaGetDevice");
    if (status_.ok() && previous_ != device) {
      status_ = CudaStatus(cudaSetDevice(device), "cudaSetDevice");
      switched_ = status_.ok();
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = 0;
  bool switched_ = false;
  absl::Status status_;
};

int64_t Millis(std::chrono::milliseconds d) { return static_cast<int64_t>(d.count()); }

ncclRedOp_t ToNccl(ReduceOp op) { return op == ReduceOp::kReduceAvg ? ncclAvg : ncclSum; }

// NCCL's element type for `dtype` and how many of them `count` elements are
// (NF4 blocks travel as bytes; CheckCollectiveDType keeps them out of
// reductions).
struct NcclElements {
  ncclDataType_t type;
  size_t count;
};
NcclElements ToNccl(DType dtype, int64_t count) {
  switch (dtype) {
    case DType::kDTypeF32:
      return {ncclFloat32, static_cast<size_t>(count)};
    case DType::kDTypeBF16:
      return {ncclBfloat16, static_cast<size_t>(count)};
    case DType::kDTypeF16:
      return {ncclFloat16, static_cast<size_t>(count)};
    case DType::kDTypeI32:
      return {ncclInt32, static_cast<size_t>(count)};
    case DType::kDTypeNF4:
      break;
  }
  return {ncclUint8, static_cast<size_t>(DTypeBytes(dtype, count))};
}

// What Create() sends from rank 0: the id, and whether rank 0 got that far
// (so that the other ranks fail with it instead of timing out in init).
struct IdMessage {
  int32_t ok;
  ncclUniqueId id;
};

}  // namespace

// ---- error mapping ---------------------------------------------------------

absl::Status CudaStatus(cudaError_t error, const char* call) {
  if (error == cudaSuccess) return absl::OkStatus();
  std::string message =
      absl::StrCat(call, ": ", cudaGetErrorName(error), ": ", cudaGetErrorString(error));
  switch (error) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorDevicesUnavailable:
      return absl::FailedPreconditionError(message);
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status NcclStatus(ncclResult_t result, const char* call, ncclComm_t comm) {
  if (result == ncclSuccess) return absl::OkStatus();
  std::string message = absl::StrCat(call, ": ", ncclGetErrorString(result));
  // NCCL keeps the detail (which peer, which syscall) in its last error.
  if (const char* last = ncclGetLastError(comm); last != nullptr && last[0] != '\0') {
    absl::StrAppend(&message, ": ", last);
  }
  switch (result) {
    case ncclRemoteError:
    case ncclSystemError:
      return absl::UnavailableError(message);
    case ncclInvalidArgument:
      return absl::InvalidArgumentError(message);
    case ncclInvalidUsage:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

// ---- byte accounting -------------------------------------------------------

int64_t AllReduceBytesSent(int64_t bytes, int world_size) {
  return 2 * (world_size - 1) * bytes / world_size;
}
int64_t AllGatherBytesSent(int64_t shard_bytes, int world_size) {
  return (world_size - 1) * shard_bytes;
}
int64_t ReduceScatterBytesSent(int64_t shard_bytes, int world_size) {
  return (world_size - 1) * shard_bytes;
}
int64_t BroadcastBytesSent(int64_t bytes, int world_size, bool is_root) {
  return is_root ? (world_size - 1) * bytes : 0;
}

// ---- bootstrap -------------------------------------------------------------

BootstrapBroadcast MpiBootstrap(MPI_Comm comm) {
  return [comm](void* data, int64_t bytes) -> absl::Status {
    int initialized = 0;
    int finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized) {
      return absl::FailedPreconditionError(
          "MpiBootstrap: MPI is not initialised (call MPI_Init first) or already finalised");
    }
    if (bytes < 0 || bytes > INT_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("MpiBootstrap: bad size ", bytes));
    }
    const int rc = MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, 0, comm);
    if (rc != MPI_SUCCESS) {
      char text[MPI_MAX_ERROR_STRING];
      int length = 0;
      MPI_Error_string(rc, text, &length);
      return absl::UnavailableError(
          absl::StrCat("MPI_Bcast of the NCCL id: ", std::string(text, length)));
    }
    return absl::OkStatus();
  };
}

BootstrapBroadcast CommunicatorBootstrap(Communicator* control, std::chrono::milliseconds timeout) {
  return [control, timeout](void* data, int64_t bytes) -> absl::Status {
    if (control->device() != Device::kDeviceCpu) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CommunicatorBootstrap needs a host-memory communicator, got ", control->backend_name()));
    }
    return control->Broadcast(data, bytes, /*root=*/0, Purpose::kPurposeControl)->Wait(timeout);
  };
}

// ---- shared state ----------------------------------------------------------

// The NCCL handle and whether it is still usable, shared by the communicator
// and its Works so that a Wait on any thread can abort, and every other
// Wait and call then sees the communicator broken.
struct NcclCommunicator::Shared {
  Shared(ncclComm_t comm_in, std::atomic<int64_t>* wait_ns_in)
      : comm(comm_in), wait_ns(wait_ns_in) {}

  // Turns ncclInProgress (non-blocking communicator) into the final result
  // of `call` by polling ncclCommGetAsyncError, for at most until `deadline`.
  absl::Status SettleLocked(ncclResult_t result, const char* call, Clock::time_point deadline,
                            std::chrono::milliseconds limit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Backoff backoff;
    while (result == ncclInProgress) {
      if (Clock::now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat(call, ": NCCL still in progress after ", Millis(limit),
                         " ms (a peer missing or not calling the same collective?)"));
      }
      backoff.Pause();
      ncclResult_t async = ncclSuccess;
      RETURN_IF_ERROR(
          NcclStatus(ncclCommGetAsyncError(comm, &async), "ncclCommGetAsyncError", comm));
      result = async;
    }
    return NcclStatus(result, call, comm);
  }

  // Idempotent. Marks the communicator broken *before* ncclCommAbort: a
  // kernel that the abort stops completes its event, and a Wait that sees
  // that event must already see `broken` and not report success.
  void AbortLocked(const absl::Status& cause) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (broken.load()) return;
    broken_status =
        absl::UnavailableError(absl::StrCat("NCCL communicator aborted: ", cause.message()));
    broken.store(true);
    if (comm != nullptr) {
      // Returns only once NCCL's kernels and threads are gone; its own
      // result says nothing we could act on.
      (void)ncclCommAbort(comm);
      comm = nullptr;
    }
  }

  void Abort(const absl::Status& cause) ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    AbortLocked(cause);
  }

  absl::Status BrokenStatus() ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    return broken_status;
  }

  absl::Mutex mu;
  ncclComm_t comm ABSL_GUARDED_BY(mu);
  absl::Status broken_status ABSL_GUARDED_BY(mu);  // OK while usable
  std::atomic<bool> broken{false};
  // The owner's CommStats::wait_ns; null once the communicator is gone.
  std::atomic<std::atomic<int64_t>*> wait_ns;
};

// ---- work ------------------------------------------------------------------

class NcclCommunicator::NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<Shared> shared, cudaEvent_t done, const char* what)
      : shared_(std::move(shared)), done_(done), what_(what) {}
  ~NcclWork() override { cudaEventDestroy(done_); }

  absl::Status Wait(std::chrono::milliseconds timeout) override {
    const Clock::time_point start = Clock::now();
    const Clock::time_point deadline = start + timeout;
    absl::Status status = WaitUntil(deadline, timeout);
    if (std::atomic<int64_t>* sink = shared_->wait_ns.load(); sink != nullptr) {
      *sink += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
    }
    return status;
  }

  // Queues a wait for `done_` on `stream`: kernels queued there later run
  // after the collective. FailedPrecondition on a broken communicator (its
  // kernels were aborted and the event may never mean "written").
  absl::Status WaitOnStream(void* stream) override {
    if (shared_->broken.load()) return shared_->BrokenStatus();
    return CudaStatus(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), done_, 0),
                      "cudaStreamWaitEvent");
  }

  bool Done() override {
    if (completed_.load() || shared_->broken.load()) return true;
    const cudaError_t e = cudaEventQuery(done_);
    return e != cudaErrorNotReady;  // success, or an error Wait will report
  }

 private:
  absl::Status WaitUntil(Clock::time_point deadline, std::chrono::milliseconds timeout) {
    Backoff backoff;
    for (;;) {
      if (completed_.load()) return absl::OkStatus();
      if (shared_->broken.load()) return shared_->BrokenStatus();
      const cudaError_t e = cudaEventQuery(done_);
      if (e == cudaSuccess) {
        // Re-check: an abort elsewhere may have been what ended the kernel.
        if (shared_->broken.load()) return shared_->BrokenStatus();
        completed_.store(true);
        return absl::OkStatus();
      }
      if (e != cudaErrorNotReady) {
        absl::Status status =
            CudaStatus(e, absl::StrCat("cudaEventQuery after NCCL ", what_).c_str());
        shared_->Abort(status);
        return status;
      }
      // NCCL's asynchronous errors (a peer died, a socket closed) arrive
      // before any timeout would. TryLock: a collective being queued holds
      // the lock, and we must not wait behind it.
      if (shared_->mu.TryLock()) {
        absl::Status async_status;
        if (shared_->comm != nullptr) {
          ncclResult_t async = ncclSuccess;
          async_status = NcclStatus(ncclCommGetAsyncError(shared_->comm, &async),
                                    "ncclCommGetAsyncError", shared_->comm);
          if (async_status.ok() && async != ncclSuccess && async != ncclInProgress) {
            async_status = NcclStatus(async, absl::StrCat("NCCL ", what_).c_str(), shared_->comm);
          }
          if (!async_status.ok()) shared_->AbortLocked(async_status);
        }
        shared_->mu.Unlock();
        if (!async_status.ok()) return async_status;
      }
      if (Clock::now() >= deadline) {
        absl::Status status = absl::DeadlineExceededError(
            absl::StrCat("NCCL ", what_, " did not complete within ", Millis(timeout),
                         " ms; the communicator was aborted"));
        shared_->Abort(status);
        return status;
      }
      backoff.Pause();
    }
  }

  const std::shared_ptr<Shared> shared_;
  const cudaEvent_t done_;
  const char* const what_;
  std::atomic<bool> completed_{false};
};

// ---- communicator ----------------------------------------------------------

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    const RankInfo& rank_info, const BootstrapBroadcast& bootstrap,
    const NcclCommunicatorOptions& options) {
  const int world_rank = rank_info.world_rank;
  const int world_size = rank_info.world_size;
  if (world_size < 1 || world_rank < 0 || world_rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat("NcclCommunicator: world_rank ", world_rank,
                                                   " not in a world of ", world_size));
  }
  if (world_size > 1 && !bootstrap) {
    return absl::InvalidArgumentError(
        "NcclCommunicator: a world of more than one needs a bootstrap broadcast");
  }

  // Everything local first. Rank 0 must reach the bootstrap broadcast even
  // when this fails, or the other ranks would wait in it forever.
  int cuda_device = -1;
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr;
  float* scratch = nullptr;
  auto release_local = [&] {
    if (scratch != nullptr) cudaFree(scratch);
    if (ready != nullptr) cudaEventDestroy(ready);
    if (stream != nullptr) cudaStreamDestroy(stream);
  };
  IdMessage message;
  std::memset(&message, 0, sizeof(message));
  absl::Status local = [&]() -> absl::Status {
    int device_count = 0;
    RETURN_IF_ERROR(CudaStatus(cudaGetDeviceCount(&device_count), "cudaGetDeviceCount"));
    if (device_count < 1) {
      return absl::FailedPreconditionError("NcclCommunicator: no CUDA device is visible");
    }
    cuda_device =
        options.cuda_device >= 0 ? options.cuda_device : rank_info.local_rank % device_count;
    if (cuda_device >= device_count) {
      return absl::InvalidArgumentError(absl::StrCat("NcclCommunicator: cuda_device ", cuda_device,
                                                     " but only ", device_count, " visible"));
    }
    // The caller's thread keeps this device: one process drives one GPU.
    RETURN_IF_ERROR(CudaStatus(cudaSetDevice(cuda_device), "cudaSetDevice"));
    RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                               "cudaStreamCreateWithFlags"));
    RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming),
                               "cudaEventCreateWithFlags"));
    RETURN_IF_ERROR(CudaStatus(cudaMalloc(&scratch, sizeof(float)), "cudaMalloc(barrier)"));
    RETURN_IF_ERROR(CudaStatus(cudaMemset(scratch, 0, sizeof(float)), "cudaMemset(barrier)"));
    if (world_rank == 0) {
      RETURN_IF_ERROR(NcclStatus(ncclGetUniqueId(&message.id), "ncclGetUniqueId"));
    }
    return absl::OkStatus();
  }();
  message.ok = local.ok() ? 1 : 0;

  absl::Status sent = absl::OkStatus();
  if (world_size > 1) sent = bootstrap(&message, sizeof(message));
  if (!local.ok() || !sent.ok() || !message.ok) {
    release_local();
    if (!local.ok()) return local;
    if (!sent.ok()) return sent;
    return absl::UnavailableError(
        "NcclCommunicator: world rank 0 failed to set up NCCL (its error says why)");
  }

  // Non-blocking, so that a rank that never arrives costs init_timeout, not
  // a hang; the same mode then lets collectives be polled with a deadline.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  const ncclResult_t init =
      ncclCommInitRankConfig(&comm, world_size, message.id, world_rank, &config);
  auto shared = std::make_shared<Shared>(comm, nullptr);
  absl::Status status;
  {
    absl::MutexLock lock(&shared->mu);
    if (comm == nullptr) {
      status = NcclStatus(init == ncclSuccess ? ncclInternalError : init, "ncclCommInitRankConfig");
    } else {
      status = shared->SettleLocked(init, "ncclCommInitRankConfig",
                                    Clock::now() + options.init_timeout, options.init_timeout);
    }
    if (!status.ok()) shared->AbortLocked(status);
  }
  if (!status.ok()) {
    release_local();
    if (absl::IsDeadlineExceeded(status)) {
      return absl::DeadlineExceededError(
          absl::StrCat("NcclCommunicator: not all ", world_size, " ranks joined within ",
                       Millis(options.init_timeout), " ms (", status.message(), ")"));
    }
    return status;
  }
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(
      world_rank, world_size, cuda_device, options, std::move(shared), stream, ready, scratch));
}

NcclCommunicator::NcclCommunicator(int world_rank, int world_size, int cuda_device,
                                   const NcclCommunicatorOptions& options,
                                   std::shared_ptr<Shared> shared, cudaStream_t stream,
                                   cudaEvent_t ready, float* scratch)
    : world_rank_(world_rank),
      world_size_(world_size),
      cuda_device_(cuda_device),
      options_(options),
      shared_(std::move(shared)),
      stream_(stream),
      ready_(ready),
      scratch_(scratch) {
  shared_->wait_ns.store(&stats_.wait_ns);
}

NcclCommunicator::~NcclCommunicator() {
  shared_->wait_ns.store(nullptr);
  DeviceGuard device(cuda_device_);
  {
    absl::MutexLock lock(&shared_->mu);
    if (shared_->comm != nullptr) {
      // A clean shutdown needs every queued collective finished (they need
      // the peers), then ncclCommFinalize; past destroy_timeout we abort.
      const Clock::time_point deadline = Clock::now() + options_.destroy_timeout;
      Backoff backoff;
      cudaError_t idle;
      while ((idle = cudaStreamQuery(stream_)) == cudaErrorNotReady && Clock::now() < deadline) {
        backoff.Pause();
      }
      absl::Status status = CudaStatus(idle, "cudaStreamQuery at destruction");
      if (status.ok()) {
        status = shared_->SettleLocked(ncclCommFinalize(shared_->comm), "ncclCommFinalize",
                                       deadline, options_.destroy_timeout);
      }
      if (status.ok()) {
        (void)ncclCommDestroy(shared_->comm);
        shared_->comm = nullptr;
      }
      shared_->AbortLocked(status.ok() ? absl::CancelledError("communicator destroyed") : status);
    }
  }
  cudaFree(scratch_);  // synchronises the device: our kernels are done
  cudaEventDestroy(ready_);
  cudaStreamDestroy(stream_);
}

void NcclCommunicator::Abort(const std::string& reason) {
  shared_->Abort(absl::AbortedError(reason));
}

bool NcclCommunicator::broken() const { return shared_->broken.load(); }

absl::StatusOr<std::unique_ptr<Work>> NcclCommunicator::Launch(
    const char* what, const std::function<ncclResult_t(ncclComm_t)>& enqueue) {
  DeviceGuard device(cuda_device_);
  RETURN_IF_ERROR(device.status());
  absl::MutexLock lock(&shared_->mu);
  if (shared_->broken.load()) return shared_->broken_status;
  // From here on a failure leaves this rank out of a collective its peers
  // run, so every later collective would pair up wrongly: abort instead.
  cudaEvent_t done = nullptr;
  absl::Status status = [&]() -> absl::Status {
    RETURN_IF_ERROR(CudaStatus(cudaEventRecord(ready_, compute_stream_),
                               "cudaEventRecord on the compute stream"));
    RETURN_IF_ERROR(CudaStatus(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent"));
    RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&done, cudaEventDisableTiming),
                               "cudaEventCreateWithFlags"));
    // The event may only be recorded once NCCL has really queued its
    // kernel, i.e. once the non-blocking call has settled.
    RETURN_IF_ERROR(shared_->SettleLocked(enqueue(shared_->comm), what,
                                          Clock::now() + options_.enqueue_timeout,
                                          options_.enqueue_timeout));
    return CudaStatus(cudaEventRecord(done, stream_), "cudaEventRecord after the collective");
  }();
  if (!status.ok()) {
    if (done != nullptr) cudaEventDestroy(done);
    shared_->AbortLocked(status);
    return status;
  }
  return std::unique_ptr<Work>(std::make_unique<NcclWork>(shared_, done, what));
}

namespace {

// Precondition of every collective: a buffer NCCL can use from our device.
absl::Status CheckDeviceBuffer(const void* p, const char* name, int cuda_device) {
  if (p == nullptr) return absl::InvalidArgumentError(absl::StrCat(name, " is null"));
  cudaPointerAttributes attributes;
  const cudaError_t e = cudaPointerGetAttributes(&attributes, p);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky; do not leave it for the next call
    return CudaStatus(e, absl::StrCat("cudaPointerGetAttributes(", name, ")").c_str());
  }
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " is host memory; the NCCL backend needs device buffers (cudaMalloc)"));
  }
  if (attributes.type == cudaMemoryTypeDevice && attributes.device != cuda_device) {
    return absl::InvalidArgumentError(absl::StrCat(name, " is on CUDA device ", attributes.device,
                                                   ", the communicator on ", cuda_device));
  }
  return absl::OkStatus();
}

absl::Status CheckCount(int64_t count, int world_size, const char* name) {
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat(name, " ", count, " < 0"));
  if (count > INT64_MAX / 8 / world_size) {
    return absl::InvalidArgumentError(absl::StrCat(name, " ", count, " is too large"));
  }
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<Work> NcclCommunicator::Counted(absl::StatusOr<std::unique_ptr<Work>> work,
                                                Purpose purpose, int64_t bytes) {
  if (!work.ok()) return CompletedWork(work.status());
  Count(purpose, bytes);
  return std::move(work).value();
}

std::unique_ptr<Work> NcclCommunicator::DoAllGather(void* out, const void* in, int64_t count,
                                                    DType dtype, Purpose purpose) {
  if (absl::Status s = CheckCount(count, world_size_, "AllGather count"); !s.ok()) {
    return CompletedWork(s);
  }
  if (count == 0) {
    Count(purpose, 0);
    return CompletedWork();
  }
  for (auto [p, name] : {std::pair<const void*, const char*>{out, "AllGather out"},
                         std::pair<const void*, const char*>{in, "AllGather in"}}) {
    if (absl::Status s = CheckDeviceBuffer(p, name, cuda_device_); !s.ok()) {
      return CompletedWork(s);
    }
  }
  auto work = Launch("AllGather", [&](ncclComm_t comm) {
    const NcclElements e = ToNccl(dtype, count);
    return ncclAllGather(in, out, e.count, e.type, comm, stream_);
  });
  return Counted(std::move(work), purpose,
                 AllGatherBytesSent(DTypeBytes(dtype, count), world_size_));
}

std::unique_ptr<Work> NcclCommunicator::DoReduceScatter(void* out, const void* in, int64_t count,
                                                        DType dtype, ReduceOp op,
                                                        Purpose purpose) {
  if (absl::Status s = CheckCount(count, world_size_, "ReduceScatter count"); !s.ok()) {
    return CompletedWork(s);
  }
  if (count == 0) {
    Count(purpose, 0);
    return CompletedWork();
  }
  for (auto [p, name] : {std::pair<const void*, const char*>{out, "ReduceScatter out"},
                         std::pair<const void*, const char*>{in, "ReduceScatter in"}}) {
    if (absl::Status s = CheckDeviceBuffer(p, name, cuda_device_); !s.ok()) {
      return CompletedWork(s);
    }
  }
  auto work = Launch("ReduceScatter", [&](ncclComm_t comm) {
    const NcclElements e = ToNccl(dtype, count);
    return ncclReduceScatter(in, out, e.count, e.type, ToNccl(op), comm, stream_);
  });
  return Counted(std::move(work), purpose,
                 ReduceScatterBytesSent(DTypeBytes(dtype, count), world_size_));
}

std::unique_ptr<Work> NcclCommunicator::DoAllReduce(void* data, int64_t count, DType dtype,
                                                    ReduceOp op, Purpose purpose) {
  if (absl::Status s = CheckCount(count, world_size_, "AllReduce count"); !s.ok()) {
    return CompletedWork(s);
  }
  if (count == 0) {
    Count(purpose, 0);
    return CompletedWork();
  }
  if (absl::Status s = CheckDeviceBuffer(data, "AllReduce data", cuda_device_); !s.ok()) {
    return CompletedWork(s);
  }
  auto work = Launch("AllReduce", [&](ncclComm_t comm) {
    const NcclElements e = ToNccl(dtype, count);
    return ncclAllReduce(data, data, e.count, e.type, ToNccl(op), comm, stream_);
  });
  return Counted(std::move(work), purpose,
                 AllReduceBytesSent(DTypeBytes(dtype, count), world_size_));
}

std::unique_ptr<Work> NcclCommunicator::Broadcast(void* data, int64_t bytes, int root,
                                                  Purpose purpose) {
  if (absl::Status s = CheckCount(bytes, world_size_, "Broadcast bytes"); !s.ok()) {
    return CompletedWork(s);
  }
  if (root < 0 || root >= world_size_) {
    return CompletedWork(absl::InvalidArgumentError(
        absl::StrCat("Broadcast root ", root, " not in a world of ", world_size_)));
  }
  if (bytes == 0) {
    Count(purpose, 0);
    return CompletedWork();
  }
  if (absl::Status s = CheckDeviceBuffer(data, "Broadcast data", cuda_device_); !s.ok()) {
    return CompletedWork(s);
  }
  auto work = Launch("Broadcast", [&](ncclComm_t comm) {
    return ncclBroadcast(data, data, static_cast<size_t>(bytes), ncclUint8, root, comm, stream_);
  });
  return Counted(std::move(work), purpose,
                 BroadcastBytesSent(bytes, world_size_, world_rank_ == root));
}

std::unique_ptr<Work> NcclCommunicator::Barrier() {
  auto work = Launch("Barrier", [&](ncclComm_t comm) {
    return ncclAllReduce(scratch_, scratch_, 1, ncclFloat, ncclSum, comm, stream_);
  });
  return Counted(std::move(work), Purpose::kPurposeControl, 0);
}

}  // namespace sheaf::dist
