#include "dist/mpi_communicator.h"

#include <algorithm>
#include <array>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <functional>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/monotonic_sleep.h"
#include "core/safetensors.h"

namespace sheaf::dist {
namespace {

using Clock = std::chrono::steady_clock;

// MPI cannot be initialised twice in a process, and two communicators must
// not both decide to initialise it.
std::mutex g_init_mu;

std::string MpiErrorString(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    return absl::StrCat("MPI error ", code);
  }
  return std::string(text, static_cast<size_t>(length));
}

absl::Status MpiError(const char* call, int code) {
  return absl::UnavailableError(absl::StrCat(call, " failed: ", MpiErrorString(code)));
}

const char* ThreadLevelName(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
  }
  return "unknown";
}

// Polls `request` until it completes or `timeout` passes. Only for set-up
// and shutdown on the progress thread, where nothing else is in flight.
absl::Status PollRequest(MPI_Request* request, std::chrono::milliseconds timeout,
                         const char* what) {
  const Clock::time_point deadline = Clock::now() + timeout;
  for (;;) {
    int flag = 0;
    const int rc = MPI_Test(request, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return MpiError(what, rc);
    if (flag) return absl::OkStatus();
    if (Clock::now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, " did not complete within ",
                       absl::FormatDuration(absl::FromChrono(timeout)),
                       ": a peer rank may have died or never started"));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

constexpr int kHelloTag = 0x5eaf;  // set-up, on MPI_COMM_WORLD
constexpr int kPingTag = 0x5eb0;   // liveness, on the communicator's duplicate
constexpr int kHostBytes = 64;

// Polls every request in `requests` until all complete or `deadline`
// passes; `on_wait` is called about every `log_every` with the indices
// still pending (for the set-up stage line).
absl::Status PollAll(std::vector<MPI_Request>& requests, Clock::time_point deadline,
                     std::chrono::milliseconds log_every, const char* what,
                     const std::function<std::string(const std::vector<int>&)>& describe,
                     const std::function<void(const std::string&)>& on_wait) {
  Clock::time_point next_log = Clock::now();
  for (;;) {
    std::vector<int> pending;
    for (size_t i = 0; i < requests.size(); ++i) {
      if (requests[i] == MPI_REQUEST_NULL) continue;
      int flag = 0;
      const int rc = MPI_Test(&requests[i], &flag, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) return MpiError(what, rc);
      if (!flag) pending.push_back(static_cast<int>(i));
    }
    if (pending.empty()) return absl::OkStatus();
    const Clock::time_point now = Clock::now();
    if (now >= next_log) {
      on_wait(describe(pending));
      next_log = now + log_every;
    }
    if (now > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": ", describe(pending)));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

std::string RankList(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size() && i < 16; ++i) absl::StrAppend(&out, i ? ", " : "", ranks[i]);
  if (ranks.size() > 16) absl::StrAppend(&out, " and ", ranks.size() - 16, " more");
  return out;
}

constexpr const char* kNetworkHint =
    "if the ranks sit on hosts with several networks, name the one they share with "
    "SHEAF_NET_IF (or OMPI_MCA_btl_tcp_if_include)";

bool Overlap(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes) {
  const char* pa = static_cast<const char*>(a);
  const char* pb = static_cast<const char*>(b);
  return a_bytes > 0 && b_bytes > 0 && pa < pb + b_bytes && pb < pa + a_bytes;
}

// The MPI element that carries `dtype` and how many of them `count`
// elements of it are (NF4 travels as its bytes).
struct MpiElements {
  MPI_Datatype type;
  int64_t count;
};
MpiElements ToMpi(DType dtype, int64_t count) {
  switch (dtype) {
    case DType::kDTypeF32:
      return {MPI_FLOAT, count};
    case DType::kDTypeBF16:
    case DType::kDTypeF16:
      return {MPI_UINT16_T, count};
    case DType::kDTypeI32:
      return {MPI_INT32_T, count};
    case DType::kDTypeNF4:
      return {MPI_BYTE, DTypeBytes(dtype, count)};
  }
  return {MPI_BYTE, DTypeBytes(dtype, count)};
}

// The bf16 sum of MpiCommunicator (an MPI_User_function on MPI_UINT16_T):
// inout[i] = bf16(f32(in[i]) + f32(inout[i])), rounded to nearest even.
void Bf16Sum(void* in, void* inout, int* len, MPI_Datatype* /*type*/) {
  const uint16_t* a = static_cast<const uint16_t*>(in);
  uint16_t* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = F32ToBf16(Bf16ToF32(a[i]) + Bf16ToF32(b[i]));
}

absl::Status CheckCount(const char* op, int64_t count, DType dtype = DType::kDTypeF32) {
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat(op, ": negative count ", count));
  if (ToMpi(dtype, count).count > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": count ", count, " exceeds MPI's limit of ", INT_MAX,
                     dtype == DType::kDTypeNF4 ? " bytes" : " elements",
                     " per call; split the buffer"));
  }
  return absl::OkStatus();
}

absl::Status CheckPointer(const char* op, const char* name, const void* ptr, int64_t count) {
  if (count > 0 && ptr == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " is null with count ", count));
  }
  return absl::OkStatus();
}

}  // namespace

// One collective, shared by its Work and the progress thread.
struct MpiCommunicator::Op {
  Kind kind = Kind::kBarrier;
  int64_t seq = 0;
  Purpose purpose = Purpose::kPurposeControl;
  ReduceOp reduce = ReduceOp::kReduceSum;
  DType dtype = DType::kDTypeF32;
  void* out = nullptr;       // all_gather, reduce_scatter, all_reduce (in place)
  const void* in = nullptr;  // all_gather (nullptr = in place), reduce_scatter
  void* data = nullptr;      // broadcast
  // Per rank, in units of mpi_type (bytes for broadcast and NF4).
  int count = 0;
  MPI_Datatype mpi_type = MPI_BYTE;
  MPI_Op mpi_op = MPI_SUM;   // reductions
  int root = 0;
  Clock::time_point issued;

  // Progress thread only.
  MPI_Request request = MPI_REQUEST_NULL;

  // Guarded by Shared::mu.
  bool done = false;
  absl::Status status;

  std::string Describe() const {
    return absl::StrCat("collective ", KindName(kind), " #", seq, " (", PurposeName(purpose),
                        ")");
  }
};

// State that Work handles share with the communicator (they may outlive it).
struct MpiCommunicator::Shared {
  absl::Mutex mu;
  std::vector<std::shared_ptr<Op>> queue ABSL_GUARDED_BY(mu);  // issued, not started
  bool stop ABSL_GUARDED_BY(mu) = false;
  absl::Status broken ABSL_GUARDED_BY(mu);  // the first failure; OK while healthy
  CommStats* stats ABSL_GUARDED_BY(mu) = nullptr;  // null once the communicator is gone
  bool init_done ABSL_GUARDED_BY(mu) = false;
  absl::Status init_status ABSL_GUARDED_BY(mu);
  // What set-up is doing now, for Create's progress lines.
  std::string init_stage ABSL_GUARDED_BY(mu) = "MPI_Init_thread";
  // Woken when an op is queued, stopped with `stop`: the idle progress
  // thread sleeps on it between pings. Abseil's timed waits sleep to an
  // absolute CLOCK_REALTIME deadline (base/monotonic_sleep.h), so a host
  // clock stepped back by more than the peer timeout would have silenced
  // this rank's pings and made its peers break a healthy world.
  MonotonicSleep idle;

  // Held by the progress thread across every MPI call that may touch user
  // buffers. A Wait that gives up takes it once after breaking the
  // communicator: when it returns, no such call is in flight and none will
  // start, so the caller may reuse its buffers.
  absl::Mutex mpi_mu;

  void BreakLocked(const absl::Status& cause) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (broken.ok()) broken = cause;
  }
  absl::Status UnavailableLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return absl::UnavailableError(absl::StrCat(
        "MPI communicator is broken and runs no further collectives; first failure: ",
        broken.ToString()));
  }
  static void CompleteLocked(Op& op, absl::Status status) {
    if (op.done) return;  // a Wait that timed out got there first
    op.done = true;
    op.status = std::move(status);
  }
};

class MpiCommunicator::MpiWork final : public Work {
 public:
  MpiWork(std::shared_ptr<Op> op, std::shared_ptr<Shared> shared)
      : op_(std::move(op)), shared_(std::move(shared)) {}

  absl::Status Wait(std::chrono::milliseconds timeout) override {
    const Clock::time_point start = Clock::now();
    absl::Status status;
    bool timed_out = false;
    {
      absl::MutexLock lock(&shared_->mu);
      Op* op = op_.get();
      // The timeout is measured on the steady clock: Abseil's wait ends at a
      // CLOCK_REALTIME deadline, so a wall-clock step forward would end it
      // early (and break a healthy world); wait again for what is left.
      const absl::Condition op_done(+[](Op* o) { return o->done; }, op);
      const Clock::time_point until = start + std::max(timeout, std::chrono::milliseconds(0));
      bool done = shared_->mu.AwaitWithTimeout(
          op_done, absl::FromChrono(std::max(timeout, std::chrono::milliseconds(0))));
      while (!done && Clock::now() < until) {
        done = shared_->mu.AwaitWithTimeout(op_done, absl::FromChrono(until - Clock::now()));
      }
      if (done) {
        status = op->status;
      } else {
        timed_out = true;
        status = absl::DeadlineExceededError(
            absl::StrCat(op->Describe(), " did not complete within ",
                         absl::FormatDuration(absl::FromChrono(timeout)),
                         ": a peer rank may have died"));
        shared_->BreakLocked(status);
        Shared::CompleteLocked(*op, status);
      }
      if (shared_->stats != nullptr) {
        shared_->stats->wait_ns +=
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
      }
    }
    if (timed_out) {
      // Let an MPI_Test that is running now finish; the progress thread sees
      // the break before its next MPI call (see Shared::mpi_mu).
      absl::MutexLock fence(&shared_->mpi_mu);
    }
    return status;
  }

  bool Done() override {
    absl::MutexLock lock(&shared_->mu);
    return op_->done;
  }

 private:
  const std::shared_ptr<Op> op_;
  const std::shared_ptr<Shared> shared_;
};

const char* MpiCommunicator::KindName(Kind kind) {
  switch (kind) {
    case Kind::kAllGather:
      return "all_gather";
    case Kind::kReduceScatter:
      return "reduce_scatter";
    case Kind::kAllReduce:
      return "all_reduce";
    case Kind::kBroadcast:
      return "broadcast";
    case Kind::kBarrier:
      return "barrier";
  }
  return "unknown";
}

MpiCommunicator::MpiCommunicator(const Options& options)
    : options_(options), shared_(std::make_shared<Shared>()) {
  absl::MutexLock lock(&shared_->mu);
  shared_->stats = &stats_;
}

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create(
    const Options& options) {
  if (options.timeout <= std::chrono::milliseconds(0)) {
    return absl::InvalidArgumentError("MpiCommunicator: timeout must be positive");
  }
  if (options.init_timeout <= std::chrono::milliseconds(0) ||
      options.init_log_interval <= std::chrono::milliseconds(0) ||
      options.peer_timeout < std::chrono::milliseconds(0) ||
      options.ping_interval < std::chrono::milliseconds(0)) {
    return absl::InvalidArgumentError(
        "MpiCommunicator: init_timeout and init_log_interval must be positive, peer_timeout and "
        "ping_interval >= 0");
  }
  std::unique_ptr<MpiCommunicator> comm(new MpiCommunicator(options));
  comm->progress_ = std::thread([c = comm.get()] { c->ProgressMain(); });
  absl::Status init_status;
  bool stuck = false;
  {
    Shared& shared = *comm->shared_;
    const Clock::time_point start = Clock::now();
    // The progress thread bounds each of its own waits by init_timeout;
    // this bound (with a grace for it to report) catches MPI_Init_thread,
    // which cannot be interrupted.
    const Clock::time_point give_up = start + options.init_timeout + std::chrono::seconds(5);
    absl::MutexLock lock(&shared.mu);
    while (!shared.mu.AwaitWithTimeout(absl::Condition(&shared.init_done),
                                       absl::FromChrono(options.init_log_interval))) {
      const double waited = std::chrono::duration<double>(Clock::now() - start).count();
      if (Clock::now() >= give_up) {
        init_status = absl::DeadlineExceededError(absl::StrCat(
            "MPI set-up did not finish within ",
            absl::FormatDuration(absl::FromChrono(options.init_timeout)), " (stuck in ",
            shared.init_stage, "): the launcher did not start every rank, or they cannot reach "
            "each other; ", kNetworkHint));
        stuck = true;
        break;
      }
      std::fprintf(stderr, "sheaf::dist::MpiCommunicator: set-up has waited %.0fs: %s\n", waited,
                   shared.init_stage.c_str());
    }
    if (!stuck) init_status = shared.init_status;
  }
  if (stuck) {
    // The thread is inside MPI and may never return: leave it (and the
    // object it uses) alone; the caller must exit the process.
    comm->progress_.detach();
    comm.release();
    return init_status;
  }
  if (!init_status.ok()) {
    // ProgressMain returns at once after a failed set-up; nothing to shut
    // down. Release the thread before the destructor would try to stop it.
    comm->progress_.join();
    return init_status;
  }
  return comm;
}

MpiCommunicator::~MpiCommunicator() {
  {
    absl::MutexLock lock(&shared_->mu);
    shared_->stop = true;
  }
  shared_->idle.Stop();
  if (progress_.joinable()) progress_.join();
  absl::MutexLock lock(&shared_->mu);
  shared_->stats = nullptr;
  // Anything still pending was failed by the progress thread on its way out.
}

absl::Status MpiCommunicator::health() const {
  absl::MutexLock lock(&shared_->mu);
  return shared_->broken;
}

void MpiCommunicator::SetInitStage(std::string stage) {
  absl::MutexLock lock(&shared_->mu);
  shared_->init_stage = std::move(stage);
}

absl::Status MpiCommunicator::Hello() {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size == 1) return absl::OkStatus();
  const Clock::time_point deadline = Clock::now() + options_.init_timeout;
  auto on_wait = [this](const std::string& stage) { SetInitStage(stage); };
  char host[kHostBytes] = {};
  gethostname(host, sizeof(host) - 1);
  if (rank == 0) {
    std::vector<std::array<char, kHostBytes>> hosts(static_cast<size_t>(size));
    std::vector<MPI_Request> recvs(static_cast<size_t>(size), MPI_REQUEST_NULL);
    for (int r = 1; r < size; ++r) {
      const int rc = MPI_Irecv(hosts[r].data(), kHostBytes, MPI_CHAR, r, kHelloTag,
                               MPI_COMM_WORLD, &recvs[r]);
      if (rc != MPI_SUCCESS) return MpiError("MPI_Irecv (hello)", rc);
    }
    if (absl::Status s = PollAll(
            recvs, deadline, options_.init_log_interval, "the hello exchange",
            [size](const std::vector<int>& pending) {
              return absl::StrCat("rank 0 has not heard from rank(s) ", RankList(pending), " of ",
                                  size, " over MPI_COMM_WORLD; ", kNetworkHint);
            },
            on_wait);
        !s.ok()) {
      return s;
    }
    std::vector<MPI_Request> acks(static_cast<size_t>(size), MPI_REQUEST_NULL);
    for (int r = 1; r < size; ++r) {
      const int rc = MPI_Isend(host, kHostBytes, MPI_CHAR, r, kHelloTag, MPI_COMM_WORLD, &acks[r]);
      if (rc != MPI_SUCCESS) return MpiError("MPI_Isend (hello)", rc);
    }
    return PollAll(
        acks, deadline, options_.init_log_interval, "the hello exchange",
        [&hosts](const std::vector<int>& pending) {
          std::string names;
          for (size_t i = 0; i < pending.size() && i < 8; ++i) {
            absl::StrAppend(&names, i ? ", " : "", pending[i], " (", hosts[pending[i]].data(), ")");
          }
          return absl::StrCat("rank 0 cannot deliver its answer to rank(s) ", names, "; ",
                              kNetworkHint);
        },
        on_wait);
  }
  char root_host[kHostBytes] = {};
  std::vector<MPI_Request> requests(2, MPI_REQUEST_NULL);
  int rc = MPI_Isend(host, kHostBytes, MPI_CHAR, 0, kHelloTag, MPI_COMM_WORLD, &requests[0]);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Isend (hello)", rc);
  rc = MPI_Irecv(root_host, kHostBytes, MPI_CHAR, 0, kHelloTag, MPI_COMM_WORLD, &requests[1]);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Irecv (hello)", rc);
  return PollAll(
      requests, deadline, options_.init_log_interval, "the hello exchange",
      [rank, size, &host](const std::vector<int>&) {
        return absl::StrCat("rank ", rank, " of ", size, " (", host,
                            ") waits for rank 0's answer over MPI_COMM_WORLD; ", kNetworkHint);
      },
      on_wait);
}

void MpiCommunicator::ProgressMain() {
  const absl::Status status = InitMpi();
  {
    absl::MutexLock lock(&shared_->mu);
    shared_->init_status = status;
    shared_->init_done = true;
  }
  if (!status.ok()) return;
  ProgressLoop();
  Shutdown();
}

absl::Status MpiCommunicator::InitMpi() {
  {
    std::lock_guard<std::mutex> lock(g_init_mu);
    int initialized = 0;
    int finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized) {
      return absl::FailedPreconditionError(
          "MPI was already finalised in this process and cannot be initialised again "
          "(create one MpiCommunicator per process and keep it)");
    }
    if (!initialized) {
      int provided = MPI_THREAD_SINGLE;
      const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      if (rc != MPI_SUCCESS) return MpiError("MPI_Init_thread", rc);
      owns_mpi_ = true;
      thread_level_ = provided;
      if (provided < MPI_THREAD_FUNNELED) {
        // This process has more than one thread (the caller and us), which
        // MPI_THREAD_SINGLE does not allow.
        MPI_Finalize();
        return absl::FailedPreconditionError(absl::StrCat(
            "MPI provided only ", ThreadLevelName(provided),
            "; MpiCommunicator needs MPI_THREAD_FUNNELED (all MPI calls on its thread)"));
      }
    } else {
      // Someone else's MPI: our thread is not the one that initialised it.
      int provided = MPI_THREAD_SINGLE;
      MPI_Query_thread(&provided);
      thread_level_ = provided;
      if (provided != MPI_THREAD_MULTIPLE) {
        return absl::FailedPreconditionError(absl::StrCat(
            "MPI was initialised elsewhere with ", ThreadLevelName(provided),
            "; MpiCommunicator calls MPI from its own thread and then needs "
            "MPI_THREAD_MULTIPLE"));
      }
    }
  }
  // Our own communicator: our collectives cannot match anyone else's, and
  // the error handler below does not change MPI_COMM_WORLD for others.
  SetInitStage("the hello exchange");
  if (absl::Status s = Hello(); !s.ok()) {
    absl::MutexLock lock(&shared_->mu);
    shared_->BreakLocked(s);
    return s;
  }
  SetInitStage("MPI_Comm_idup (duplicating MPI_COMM_WORLD)");
  MPI_Request request = MPI_REQUEST_NULL;
  int rc = MPI_Comm_idup(MPI_COMM_WORLD, &comm_, &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Comm_idup", rc);
  if (absl::Status s = PollRequest(&request, options_.init_timeout, "MPI_Comm_idup"); !s.ok()) {
    absl::MutexLock lock(&shared_->mu);
    shared_->BreakLocked(s);
    return s;
  }
  rc = MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Comm_set_errhandler", rc);
  rc = MPI_Op_create(&Bf16Sum, /*commute=*/1, &bf16_sum_);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Op_create (bf16 sum)", rc);
  MPI_Comm_rank(comm_, &world_rank_);
  MPI_Comm_size(comm_, &world_size_);
  // Liveness: rank 0 pings everyone, everyone pings rank 0.
  if (options_.peer_timeout > std::chrono::milliseconds(0) && world_size_ > 1) {
    ping_interval_ = options_.ping_interval > std::chrono::milliseconds(0)
                         ? options_.ping_interval
                         : std::clamp(options_.peer_timeout / 8,
                                      std::chrono::milliseconds(10),
                                      std::chrono::milliseconds(1000));
    const Clock::time_point now = Clock::now();
    for (int r = 0; r < world_size_; ++r) {
      if (r == world_rank_ || (world_rank_ != 0 && r != 0)) continue;
      Peer peer;
      peer.rank = r;
      peer.last_heard = now;
      peers_.push_back(peer);
    }
    for (Peer& peer : peers_) {
      rc = MPI_Irecv(&peer.in, 1, MPI_INT32_T, peer.rank, kPingTag, comm_, &peer.recv);
      if (rc != MPI_SUCCESS) return MpiError("MPI_Irecv (liveness)", rc);
    }
    next_ping_ = now;
    next_liveness_ = now;
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Liveness() {
  if (peers_.empty()) return absl::OkStatus();
  const Clock::time_point now = Clock::now();
  // Cheap when not due: the busy loop calls this on every turn.
  if (now < next_liveness_) return absl::OkStatus();
  next_liveness_ = now + std::max(ping_interval_ / 4, std::chrono::milliseconds(5));
  const bool ping = now >= next_ping_;
  if (ping) {
    next_ping_ = now + ping_interval_;
    ++pings_sent_;
  }
  for (Peer& peer : peers_) {
    for (;;) {  // several pings may have arrived
      int flag = 0;
      int rc = MPI_Test(&peer.recv, &flag, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) return MpiError("MPI_Test (liveness)", rc);
      if (!flag) break;
      peer.last_heard = now;
      rc = MPI_Irecv(&peer.in, 1, MPI_INT32_T, peer.rank, kPingTag, comm_, &peer.recv);
      if (rc != MPI_SUCCESS) return MpiError("MPI_Irecv (liveness)", rc);
    }
    if (ping) {
      int done = 1;
      if (peer.send != MPI_REQUEST_NULL) {
        const int rc = MPI_Test(&peer.send, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return MpiError("MPI_Test (liveness)", rc);
      }
      if (done) {  // else the last ping is still on its way: no pile-up
        peer.out = pings_sent_;
        const int rc =
            MPI_Isend(&peer.out, 1, MPI_INT32_T, peer.rank, kPingTag, comm_, &peer.send);
        if (rc != MPI_SUCCESS) return MpiError("MPI_Isend (liveness)", rc);
      }
    }
    if (now - peer.last_heard > options_.peer_timeout) {
      return absl::UnavailableError(absl::StrCat(
          "rank ", peer.rank, " has not answered liveness pings for ",
          absl::FormatDuration(absl::FromChrono(
              std::chrono::duration_cast<std::chrono::milliseconds>(now - peer.last_heard))),
          " (peer_timeout ", absl::FormatDuration(absl::FromChrono(options_.peer_timeout)),
          "): it died or hangs"));
    }
  }
  return absl::OkStatus();
}

void MpiCommunicator::StopLiveness() {
  // Pings still being sent complete locally (4 bytes go eagerly); bounded
  // all the same.
  for (Peer& peer : peers_) {
    if (peer.send != MPI_REQUEST_NULL) {
      PollRequest(&peer.send, std::chrono::seconds(5), "a liveness ping").IgnoreError();
    }
  }
}

void MpiCommunicator::ProgressLoop() {
  std::vector<std::shared_ptr<Op>> unstarted;  // dequeued, not yet given to MPI
  std::vector<std::shared_ptr<Op>> active;     // started in MPI, not complete
  Clock::time_point last_progress = Clock::now();
  for (;;) {
    bool stop = false;
    {
      absl::MutexLock lock(&shared_->mu);
      // Sleep on the mutex when idle (or broken); poll while MPI has work.
      if (active.empty() || !shared_->broken.ok()) {
        const absl::Condition work(
            +[](Shared* sh) { return !sh->queue.empty() || sh->stop; }, shared_.get());
        if (peers_.empty() || !shared_->broken.ok()) {
          shared_->mu.Await(work);
        } else if (shared_->queue.empty() && !shared_->stop) {
          // Idle, but pings go on: a monotonic sleep (see Shared::idle),
          // cut short by Issue or stop. The generation is read under the
          // lock, so an op queued after this check wakes the sleep at once.
          const uint64_t generation = shared_->idle.generation();
          shared_->mu.Unlock();
          shared_->idle.SleepUntilWoken(
              absl::FromChrono(std::max(ping_interval_ / 4, std::chrono::milliseconds(5))),
              generation);
          shared_->mu.Lock();
        }
      }
      unstarted.insert(unstarted.end(), shared_->queue.begin(), shared_->queue.end());
      shared_->queue.clear();
      stop = shared_->stop;
      if (!shared_->broken.ok()) {
        // No more MPI calls: fail whatever is left.
        const absl::Status unavailable = shared_->UnavailableLocked();
        for (auto& op : active) Shared::CompleteLocked(*op, unavailable);
        for (auto& op : unstarted) Shared::CompleteLocked(*op, unavailable);
        active.clear();
        unstarted.clear();
        if (stop) return;
        continue;
      }
    }
    if (stop && active.empty() && unstarted.empty()) return;

    bool progressed = !unstarted.empty();
    {
      absl::MutexLock mpi_lock(&shared_->mpi_mu);
      {
        // A Wait may have broken us since we looked; it then holds or waits
        // for mpi_mu, and we must not start another MPI call. The top of
        // the loop fails what is pending.
        absl::MutexLock lock(&shared_->mu);
        if (!shared_->broken.ok()) continue;
      }
      absl::Status failure = Liveness();
      if (!failure.ok()) {
        absl::MutexLock lock(&shared_->mu);
        shared_->BreakLocked(failure);
        for (auto& op : active) {
          Shared::CompleteLocked(*op, absl::UnavailableError(absl::StrCat(
                                          op->Describe(), " failed: ", failure.message())));
        }
        active.clear();
        continue;  // the top of the loop fails the rest
      }
      size_t started = 0;
      for (; started < unstarted.size(); ++started) {
        Op& op = *unstarted[started];
        int rc = MPI_SUCCESS;
        const char* call = "";
        switch (op.kind) {
          case Kind::kAllGather:
            call = "MPI_Iallgather";
            rc = MPI_Iallgather(op.in == nullptr ? MPI_IN_PLACE : op.in, op.count, op.mpi_type,
                                op.out, op.count, op.mpi_type, comm_, &op.request);
            break;
          case Kind::kReduceScatter:
            call = "MPI_Ireduce_scatter_block";
            rc = MPI_Ireduce_scatter_block(op.in, op.out, op.count, op.mpi_type, op.mpi_op,
                                           comm_, &op.request);
            break;
          case Kind::kAllReduce:
            call = "MPI_Iallreduce";
            rc = MPI_Iallreduce(MPI_IN_PLACE, op.out, op.count, op.mpi_type, op.mpi_op, comm_,
                                &op.request);
            break;
          case Kind::kBroadcast:
            call = "MPI_Ibcast";
            rc = MPI_Ibcast(op.data, op.count, MPI_BYTE, op.root, comm_, &op.request);
            break;
          case Kind::kBarrier:
            call = "MPI_Ibarrier";
            rc = MPI_Ibarrier(comm_, &op.request);
            break;
        }
        if (rc != MPI_SUCCESS) {
          failure = absl::UnavailableError(
              absl::StrCat(op.Describe(), ": ", call, " failed: ", MpiErrorString(rc)));
          absl::MutexLock lock(&shared_->mu);
          shared_->BreakLocked(failure);  // before the Work can see it (see below)
          Shared::CompleteLocked(op, failure);
          break;
        }
        active.push_back(unstarted[started]);
      }
      unstarted.erase(unstarted.begin(),
                      unstarted.begin() + static_cast<std::ptrdiff_t>(started));
      // Test in issue order; every MPI_Test also advances the others.
      for (size_t i = 0; failure.ok() && i < active.size();) {
        Op& op = *active[i];
        int flag = 0;
        const int rc = MPI_Test(&op.request, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
          failure = absl::UnavailableError(
              absl::StrCat(op.Describe(), ": MPI_Test failed: ", MpiErrorString(rc)));
          absl::MutexLock lock(&shared_->mu);
          shared_->BreakLocked(failure);  // before the Work can see it (see below)
          Shared::CompleteLocked(op, failure);
          break;
        }
        if (!flag) {
          ++i;
          continue;
        }
        progressed = true;
        absl::MutexLock lock(&shared_->mu);
        // MPI has no average: sum, then divide by N (here, still under
        // mpi_mu, so never after a timed-out Wait has returned).
        if (!op.done && op.reduce == ReduceOp::kReduceAvg) {
          const float n = static_cast<float>(world_size_);
          if (op.dtype == DType::kDTypeBF16) {
            uint16_t* out = static_cast<uint16_t*>(op.out);
            for (int j = 0; j < op.count; ++j) out[j] = F32ToBf16(Bf16ToF32(out[j]) / n);
          } else {  // f32 (CheckCollectiveDType allows no other average)
            float* out = static_cast<float*>(op.out);
            for (int j = 0; j < op.count; ++j) out[j] /= n;
          }
        }
        Shared::CompleteLocked(op, absl::OkStatus());
        active.erase(active.begin() + static_cast<std::ptrdiff_t>(i));
      }
      // The watchdog, on the oldest collective.
      if (failure.ok() && !active.empty() &&
          Clock::now() - active.front()->issued > options_.timeout) {
        failure = absl::DeadlineExceededError(
            absl::StrCat(active.front()->Describe(), " did not complete within ",
                         absl::FormatDuration(absl::FromChrono(options_.timeout)),
                         ": a peer rank may have died"));
        absl::MutexLock lock(&shared_->mu);
        // Broken first, in the same critical section: a caller whose Wait
        // returns this error must find every later call failing at once.
        shared_->BreakLocked(failure);
        Shared::CompleteLocked(*active.front(), failure);
      }
      if (!failure.ok()) {
        absl::MutexLock lock(&shared_->mu);
        shared_->BreakLocked(failure);
        continue;  // the top of the loop fails the rest
      }
    }
    // OpenMPI moves data only inside MPI calls, so the polling rate gates a
    // large collective's pipeline: poll flat out (yielding the core to
    // oversubscribed peers) while collectives are starting and completing.
    // A collective that has made no visible progress for 50 ms is most
    // likely waiting for a slow peer to arrive; then poll ~10k times a
    // second and leave the core to this rank's compute threads.
    if (progressed) last_progress = Clock::now();
    if (Clock::now() - last_progress < std::chrono::milliseconds(50)) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
}

void MpiCommunicator::Shutdown() {
  absl::Status health;
  {
    absl::MutexLock lock(&shared_->mu);
    health = shared_->broken;
  }
  if (health.ok()) StopLiveness();
  if (health.ok()) {
    // Finalising synchronises with every peer; prove they are all here
    // first, within a bound, rather than hang in MPI_Finalize.
    MPI_Request request = MPI_REQUEST_NULL;
    const int rc = MPI_Ibarrier(comm_, &request);
    health = rc == MPI_SUCCESS
                 ? PollRequest(&request, options_.timeout, "the shutdown barrier")
                 : MpiError("MPI_Ibarrier (shutdown)", rc);
  }
  if (!health.ok()) {
    std::fprintf(stderr,
                 "sheaf::dist::MpiCommunicator rank %d: not finalising MPI (it would "
                 "wait for every peer): %s\n",
                 world_rank_, std::string(health.message()).c_str());
    return;
  }
  // Every peer has stopped pinging (they passed the barrier): take in the
  // pings still on their way, then cancel the receives left posted.
  for (Peer& peer : peers_) {
    for (;;) {
      int flag = 0;
      MPI_Iprobe(peer.rank, kPingTag, comm_, &flag, MPI_STATUS_IGNORE);
      if (!flag) break;
      int32_t sink = 0;
      MPI_Recv(&sink, 1, MPI_INT32_T, peer.rank, kPingTag, comm_, MPI_STATUS_IGNORE);
    }
    if (peer.recv != MPI_REQUEST_NULL) {
      int flag = 0;
      MPI_Test(&peer.recv, &flag, MPI_STATUS_IGNORE);
      if (!flag) {
        MPI_Cancel(&peer.recv);
        MPI_Wait(&peer.recv, MPI_STATUS_IGNORE);
      }
    }
  }
  if (bf16_sum_ != MPI_OP_NULL) MPI_Op_free(&bf16_sum_);
  MPI_Comm_free(&comm_);
  if (owns_mpi_ && options_.finalize) MPI_Finalize();
}

std::unique_ptr<Work> MpiCommunicator::Issue(std::shared_ptr<Op> op, int64_t bytes_sent) {
  absl::MutexLock lock(&shared_->mu);
  if (!shared_->broken.ok()) return CompletedWork(shared_->UnavailableLocked());
  op->seq = next_seq_++;
  Count(op->purpose, bytes_sent);
  if (op->count == 0 && op->kind != Kind::kBarrier) return CompletedWork();
  op->issued = Clock::now();
  shared_->queue.push_back(op);
  shared_->idle.Wake();
  return std::make_unique<MpiWork>(std::move(op), shared_);
}

std::unique_ptr<Work> MpiCommunicator::DoAllGather(void* out, const void* in, int64_t count,
                                                   DType dtype, Purpose purpose) {
  const int64_t n = world_size_;
  const int64_t bytes = DTypeBytes(dtype, count);
  absl::Status status = CheckCount("all_gather", count, dtype);
  if (status.ok()) status = CheckPointer("all_gather", "out", out, count);
  if (status.ok()) status = CheckPointer("all_gather", "in", in, count);
  const bool in_place = count > 0 && in == static_cast<char*>(out) + world_rank_ * bytes;
  if (status.ok() && !in_place && Overlap(out, n * bytes, in, bytes)) {
    status = absl::InvalidArgumentError(
        "all_gather: in overlaps out other than at out + world_rank * count");
  }
  if (!status.ok()) return CompletedWork(status);
  auto op = std::make_shared<Op>();
  op->kind = Kind::kAllGather;
  op->purpose = purpose;
  op->dtype = dtype;
  op->out = out;
  op->in = in_place ? nullptr : in;
  const MpiElements elements = ToMpi(dtype, count);
  op->mpi_type = elements.type;
  op->count = static_cast<int>(elements.count);
  return Issue(std::move(op), (n - 1) * bytes);
}

std::unique_ptr<Work> MpiCommunicator::DoReduceScatter(void* out, const void* in, int64_t count,
                                                       DType dtype, ReduceOp reduce,
                                                       Purpose purpose) {
  const int64_t n = world_size_;
  const int64_t bytes = DTypeBytes(dtype, count);
  absl::Status status = CheckCount("reduce_scatter", count, dtype);
  if (status.ok()) status = CheckPointer("reduce_scatter", "out", out, count);
  if (status.ok()) status = CheckPointer("reduce_scatter", "in", in, count);
  if (status.ok() && Overlap(out, bytes, in, n * bytes)) {
    status = absl::InvalidArgumentError("reduce_scatter: out overlaps in");
  }
  if (!status.ok()) return CompletedWork(status);
  auto op = std::make_shared<Op>();
  op->kind = Kind::kReduceScatter;
  op->purpose = purpose;
  op->reduce = reduce;
  op->dtype = dtype;
  op->out = out;
  op->in = in;
  const MpiElements elements = ToMpi(dtype, count);
  op->mpi_type = elements.type;
  op->mpi_op = dtype == DType::kDTypeBF16 ? bf16_sum_ : MPI_SUM;
  op->count = static_cast<int>(elements.count);
  // A ring reduce-scatter of n·count elements sends (N-1)/N of them.
  return Issue(std::move(op), (n - 1) * bytes);
}

std::unique_ptr<Work> MpiCommunicator::DoAllReduce(void* data, int64_t count, DType dtype,
                                                   ReduceOp reduce, Purpose purpose) {
  const int64_t n = world_size_;
  absl::Status status = CheckCount("all_reduce", count, dtype);
  if (status.ok()) status = CheckPointer("all_reduce", "data", data, count);
  if (!status.ok()) return CompletedWork(status);
  auto op = std::make_shared<Op>();
  op->kind = Kind::kAllReduce;
  op->purpose = purpose;
  op->reduce = reduce;
  op->dtype = dtype;
  op->out = data;
  const MpiElements elements = ToMpi(dtype, count);
  op->mpi_type = elements.type;
  op->mpi_op = dtype == DType::kDTypeBF16 ? bf16_sum_ : MPI_SUM;
  op->count = static_cast<int>(elements.count);
  // Ring: a reduce-scatter then an all-gather, each (N-1)/N of the bytes.
  return Issue(std::move(op), 2 * (n - 1) * DTypeBytes(dtype, count) / n);
}

std::unique_ptr<Work> MpiCommunicator::Broadcast(void* data, int64_t bytes, int root,
                                                 Purpose purpose) {
  absl::Status status = CheckCount("broadcast", bytes);
  if (status.ok()) status = CheckPointer("broadcast", "data", data, bytes);
  if (status.ok() && (root < 0 || root >= world_size_)) {
    status = absl::InvalidArgumentError(
        absl::StrCat("broadcast: root ", root, " is not in [0, ", world_size_, ")"));
  }
  if (!status.ok()) return CompletedWork(status);
  auto op = std::make_shared<Op>();
  op->kind = Kind::kBroadcast;
  op->purpose = purpose;
  op->data = data;
  op->count = static_cast<int>(bytes);
  op->root = root;
  return Issue(std::move(op), world_rank_ == root ? (world_size_ - 1) * bytes : 0);
}

std::unique_ptr<Work> MpiCommunicator::Barrier() {
  auto op = std::make_shared<Op>();
  op->kind = Kind::kBarrier;
  op->purpose = Purpose::kPurposeControl;
  return Issue(std::move(op), 0);
}

}  // namespace sheaf::dist
