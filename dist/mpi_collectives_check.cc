// Multi-rank checks of MpiCommunicator, run under `mpirun -np N` by
// mpi_collectives_test.sh and mpi_dead_rank_test.sh.
//
//   mpi_collectives_check [--mode=collectives]
//     Every collective against closed-form expectations (c10d style: the
//     sum over ranks of r is N(N-1)/2) for counts 0, 1, sizes around N, sizes
//     not divisible by N and ~1M floats; in-place variants; several
//     collectives in flight at once; argument errors; the byte counters;
//     the typed collectives (bf16, i32, NF4 blocks; dtype_collectives_check).
//     Exit 0 when all pass, 1 otherwise.
//
//   mpi_collectives_check --mode=world
//     World::FromEnvironment under mpirun: one MpiCommunicator shared by
//     control and data, agreeing with the launcher; a data all-reduce and a
//     control broadcast and barrier over it. Exit 0 when all pass.
//
//   mpi_collectives_check --mode=late_rank --dead_rank=R --watchdog_ms=L
//                         --timeout_ms=T [--status_dir=DIR]
//     Rank R starts L ms late; the others' set-up is bounded by T
//     (Options::init_timeout) and logs each second what it waits for.
//
//   mpi_collectives_check --mode=dead_rank --dead_rank=R --timeout_ms=T
//   mpi_collectives_check --mode=idle --timeout_ms=IDLE --peer_timeout_ms=P
//                         [--watchdog_ms=W] [--peer_timeout_ms=P]
//                         [--dead_how=exit|stop] [--status_dir=DIR]
//     Rank R calls _exit(1) (or, with --dead_how=stop, writes its pid to
//     DIR/pid and stops itself with SIGSTOP: a hung rank, which a launcher
//     does not notice) before a collective; every other rank waits on
//     an all-reduce with timeout T and expects DeadlineExceeded (from Wait,
//     or from the watchdog, Options::timeout = W, when W < T; Unavailable
//     had MPI reported an error), then expects the next call to fail with
//     Unavailable at once, writes "42" to DIR/rank<r> and exits with
//     kDeadPeerExitCode (42). The status file is how the test learns the
//     code: mpirun's exit status does not carry it (with
//     orte_abort_on_non_zero_status=0, OpenMPI 4.1.4's mpirun exits 0
//     although its ranks exited 1 and 42). Liveness (Options::peer_timeout
//     = P, default 120 s) may find the dead rank first: Unavailable naming
//     it. With --dead_how=stop, rank 0 SIGCONTs the stopped rank (which
//     then _exits) after its verdict, so that mpirun can end.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "dist/communicator.h"
#include "dist/dtype_collectives_check.h"
#include "dist/mpi_communicator.h"
#include "dist/world.h"

namespace sheaf::dist {
namespace {

constexpr int kDeadPeerExitCode = 42;
constexpr std::chrono::milliseconds kWait{120'000};

using Clock = std::chrono::steady_clock;

class Checker {
 public:
  explicit Checker(int world_rank) : world_rank_(world_rank) {}

  void Expect(bool ok, const std::string& what) {
    ++checks_;
    if (ok) return;
    ++failures_;
    if (failures_ <= 20) std::fprintf(stderr, "rank %d: FAILED %s\n", world_rank_, what.c_str());
  }
  void ExpectOk(const absl::Status& status, const std::string& what) {
    Expect(status.ok(), absl::StrCat(what, ": ", status.ToString()));
  }
  // Compares a whole buffer; reports the first mismatch only.
  template <typename Expected>
  void ExpectFloats(const std::vector<float>& got, int64_t n, Expected expected,
                    const std::string& what) {
    for (int64_t i = 0; i < n; ++i) {
      const float want = expected(i);
      if (got[i] != want) {
        Expect(false, absl::StrCat(what, ": [", i, "] = ", got[i], ", want ", want));
        return;
      }
    }
    Expect(true, what);
  }
  int checks() const { return checks_; }
  int failures() const { return failures_; }

 private:
  const int world_rank_;
  int checks_ = 0;
  int failures_ = 0;
};

// Checks the counters after exactly one collective of `purpose`.
void ExpectCounted(Checker& check, Communicator& comm, Purpose purpose, int64_t bytes,
                   const std::string& what) {
  for (int p = 0; p < kNumPurposes; ++p) {
    const bool mine = p == static_cast<int>(purpose);
    const int64_t got_bytes = comm.stats().bytes_sent[p].load();
    const int64_t got_calls = comm.stats().calls[p].load();
    check.Expect(got_bytes == (mine ? bytes : 0) && got_calls == (mine ? 1 : 0),
                 absl::StrCat(what, ": ", PurposeName(static_cast<Purpose>(p)), " bytes ",
                              got_bytes, " calls ", got_calls, ", want ", mine ? bytes : 0,
                              " and ", mine ? 1 : 0));
  }
  comm.ResetStats();
}

void CheckSize(Checker& check, MpiCommunicator& comm, int64_t n) {
  const int64_t world = comm.world_size();
  const int64_t me = comm.world_rank();
  const std::string at = absl::StrCat(" n=", n, " N=", world);
  // Sum over ranks r of (r+1) = N(N+1)/2 and of r = N(N-1)/2.
  const float tri_plus = static_cast<float>(world * (world + 1) / 2);
  const float tri = static_cast<float>(world * (world - 1) / 2);

  // AllReduce sum / avg of (r+1)·(i mod 97) + r.
  auto mine = [&](int64_t i) { return static_cast<float>((me + 1) * (i % 97) + me); };
  auto summed = [&](int64_t i) { return static_cast<float>(i % 97) * tri_plus + tri; };
  std::vector<float> data(n + 1);
  for (ReduceOp op : {ReduceOp::kReduceSum, ReduceOp::kReduceAvg}) {
    const bool avg = op == ReduceOp::kReduceAvg;
    for (int64_t i = 0; i < n; ++i) data[i] = mine(i);
    data[n] = -7;  // a guard past the end must not change
    std::unique_ptr<Work> work =
        comm.AllReduce(data.data(), n, op, Purpose::kPurposeAdapterGrad);
    check.ExpectOk(work->Wait(kWait), "all_reduce" + at);
    check.Expect(work->Done(), "all_reduce Done after Wait" + at);
    check.ExpectFloats(
        data, n,
        [&](int64_t i) { return avg ? summed(i) / static_cast<float>(world) : summed(i); },
        absl::StrCat(avg ? "all_reduce avg" : "all_reduce sum", at));
    check.Expect(data[n] == -7, "all_reduce guard" + at);
    ExpectCounted(check, comm, Purpose::kPurposeAdapterGrad, 2 * (world - 1) * n * 4 / world,
                  "all_reduce bytes" + at);
  }

  // AllGather of r + N·(i mod 4096) (exact in float), out of place and in
  // place (in == out + world_rank * n).
  auto shard = [&](int64_t r, int64_t i) { return static_cast<float>(r + world * (i % 4096)); };
  auto gathered = [&](int64_t j) { return shard(j / n, j % n); };
  for (bool in_place : {false, true}) {
    std::vector<float> out(world * n + 1, -1.0f);
    std::vector<float> in(n);
    float* src = in_place ? out.data() + me * n : in.data();
    for (int64_t i = 0; i < n; ++i) src[i] = shard(me, i);
    out[world * n] = -7;
    check.ExpectOk(comm.AllGather(out.data(), src, n, Purpose::kPurposeFrozenGather)->Wait(kWait),
                   "all_gather" + at);
    check.ExpectFloats(out, world * n, gathered,
                       absl::StrCat("all_gather", in_place ? " in place" : "", at));
    check.Expect(out[world * n] == -7, "all_gather guard" + at);
    ExpectCounted(check, comm, Purpose::kPurposeFrozenGather, (world - 1) * n * 4,
                  "all_gather bytes" + at);
  }

  // ReduceScatter of in_r[j] = (r+1)·(j mod 89): block `me` of the sum.
  for (ReduceOp op : {ReduceOp::kReduceSum, ReduceOp::kReduceAvg}) {
    const bool avg = op == ReduceOp::kReduceAvg;
    std::vector<float> in(world * n);
    for (int64_t j = 0; j < world * n; ++j) in[j] = static_cast<float>((me + 1) * (j % 89));
    std::vector<float> out(n + 1, -1.0f);
    out[n] = -7;
    check.ExpectOk(
        comm.ReduceScatter(out.data(), in.data(), n, op, Purpose::kPurposeAdapterGrad)
            ->Wait(kWait),
        "reduce_scatter" + at);
    check.ExpectFloats(
        out, n,
        [&](int64_t i) {
          const float sum = static_cast<float>((me * n + i) % 89) * tri_plus;
          return avg ? sum / static_cast<float>(world) : sum;
        },
        absl::StrCat(avg ? "reduce_scatter avg" : "reduce_scatter sum", at));
    check.Expect(out[n] == -7, "reduce_scatter guard" + at);
    ExpectCounted(check, comm, Purpose::kPurposeAdapterGrad, (world - 1) * n * 4,
                  "reduce_scatter bytes" + at);
  }

  // Broadcast of n floats from the last rank (not 0 when N > 1), then of n
  // raw bytes (an odd byte count) from rank 0.
  {
    const int root = static_cast<int>(world - 1);
    std::vector<float> buf(n + 1);
    for (int64_t i = 0; i < n; ++i) buf[i] = me == root ? static_cast<float>(i % 251 + root) : -1;
    buf[n] = -7;
    check.ExpectOk(comm.Broadcast(buf.data(), n * 4, root, Purpose::kPurposeControl)->Wait(kWait),
                   "broadcast" + at);
    check.ExpectFloats(buf, n, [&](int64_t i) { return static_cast<float>(i % 251 + root); },
                       absl::StrCat("broadcast from ", root, at));
    check.Expect(buf[n] == -7, "broadcast guard" + at);
    ExpectCounted(check, comm, Purpose::kPurposeControl, me == root ? (world - 1) * n * 4 : 0,
                  "broadcast bytes" + at);

    std::string bytes(static_cast<size_t>(n), '?');
    for (int64_t i = 0; i < n; ++i) bytes[i] = me == 0 ? static_cast<char>('a' + i % 26) : '?';
    check.ExpectOk(comm.Broadcast(bytes.data(), n, 0, Purpose::kPurposeControl)->Wait(kWait),
                   "broadcast bytes" + at);
    bool same = true;
    for (int64_t i = 0; i < n; ++i) same = same && bytes[i] == static_cast<char>('a' + i % 26);
    check.Expect(same, "broadcast of raw bytes from 0" + at);
    ExpectCounted(check, comm, Purpose::kPurposeControl, me == 0 ? (world - 1) * n : 0,
                  "broadcast raw bytes counted" + at);
  }
}

// Several collectives in flight at once, waited on in reverse order.
void CheckPipelined(Checker& check, MpiCommunicator& comm) {
  const int64_t world = comm.world_size();
  const int64_t me = comm.world_rank();
  constexpr int kInFlight = 6;
  constexpr int64_t kCount = 10'001;
  std::vector<std::vector<float>> bufs(kInFlight, std::vector<float>(kCount));
  std::vector<std::unique_ptr<Work>> works;
  for (int k = 0; k < kInFlight; ++k) {
    for (int64_t i = 0; i < kCount; ++i) bufs[k][i] = static_cast<float>(me + k + i % 7);
    works.push_back(
        comm.AllReduce(bufs[k].data(), kCount, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad));
  }
  std::unique_ptr<Work> barrier = comm.Barrier();
  check.ExpectOk(barrier->Wait(kWait), "barrier after pipelined all_reduce");
  for (int k = kInFlight - 1; k >= 0; --k) {
    check.ExpectOk(works[k]->Wait(kWait), absl::StrCat("pipelined all_reduce ", k));
    check.ExpectFloats(bufs[k], kCount,
                       [&](int64_t i) {
                         return static_cast<float>(world * (world - 1) / 2 +
                                                   world * (k + i % 7));
                       },
                       absl::StrCat("pipelined all_reduce ", k));
  }
  comm.ResetStats();
}

void CheckErrors(Checker& check, MpiCommunicator& comm) {
  float x = 0;
  auto code = [](std::unique_ptr<Work> w) { return w->Wait(std::chrono::milliseconds(0)).code(); };
  check.Expect(code(comm.Broadcast(&x, 4, comm.world_size(), Purpose::kPurposeControl)) ==
                   absl::StatusCode::kInvalidArgument,
               "broadcast with root out of range is InvalidArgument");
  check.Expect(code(comm.AllReduce(&x, -1, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)) ==
                   absl::StatusCode::kInvalidArgument,
               "negative count is InvalidArgument");
  check.Expect(code(comm.AllReduce(nullptr, 1, ReduceOp::kReduceSum,
                                   Purpose::kPurposeAdapterGrad)) ==
                   absl::StatusCode::kInvalidArgument,
               "null buffer is InvalidArgument");
  std::vector<float> buf(4 * comm.world_size());
  check.Expect(code(comm.ReduceScatter(buf.data(), buf.data(), 2, ReduceOp::kReduceSum,
                                       Purpose::kPurposeAdapterGrad)) ==
                   absl::StatusCode::kInvalidArgument,
               "overlapping reduce_scatter is InvalidArgument");
  // Rejected calls neither count nor break the communicator.
  for (int p = 0; p < kNumPurposes; ++p) {
    check.Expect(comm.stats().calls[p].load() == 0, "rejected calls are not counted");
  }
  check.ExpectOk(comm.health(), "communicator healthy after argument errors");
  check.ExpectOk(comm.Barrier()->Wait(kWait), "barrier after argument errors");
  comm.ResetStats();
}

int RunCollectives() {
  MpiCommunicator::Options options;
  options.timeout = std::chrono::minutes(2);
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> created = MpiCommunicator::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "MpiCommunicator::Create: %s\n", created.status().ToString().c_str());
    return 1;
  }
  MpiCommunicator& comm = **created;
  Checker check(comm.world_rank());
  const int64_t world = comm.world_size();

  absl::StatusOr<RankInfo> info = DiscoverRank();
  check.ExpectOk(info.status(), "DiscoverRank");
  if (info.ok()) {
    check.Expect(info->launcher == "openmpi" && info->world_rank == comm.world_rank() &&
                     info->world_size == comm.world_size(),
                 absl::StrCat("DiscoverRank agrees with MPI: ", info->launcher, " ",
                              info->world_rank, "/", info->world_size));
  }
  check.Expect(comm.thread_level() >= MPI_THREAD_FUNNELED, "thread level >= FUNNELED");
  check.Expect(comm.comm() != MPI_COMM_NULL && comm.comm() != MPI_COMM_WORLD,
               "comm() is a duplicate of MPI_COMM_WORLD");

  // The sum of rank ids, the c10d classic.
  {
    float id = static_cast<float>(comm.world_rank());
    check.ExpectOk(comm.AllReduce(&id, 1, ReduceOp::kReduceSum, Purpose::kPurposeControl)
                       ->Wait(kWait),
                   "sum of rank ids");
    check.Expect(id == static_cast<float>(world * (world - 1) / 2),
                 absl::StrCat("sum of rank ids = ", id, ", want N(N-1)/2"));
    comm.ResetStats();
  }
  check.ExpectOk(comm.Barrier()->Wait(kWait), "barrier");
  ExpectCounted(check, comm, Purpose::kPurposeControl, 0, "barrier bytes");

  const int64_t sizes[] = {0, 1, 2, world - 1, world, world + 1, 7, 1000, 1001, 4097,
                           1 << 20, (1 << 20) + 3};
  for (int64_t n : sizes) {
    if (n < 0) continue;
    CheckSize(check, comm, n);
  }
  CheckPipelined(check, comm);
  CheckErrors(check, comm);
  // The typed collectives (bf16, i32, nf4), with the thread backend's
  // closed forms (dtype_collectives_check.h).
  {
    const DTypeCheckResult typed = CheckDTypeCollectives(comm, kWait);
    check.Expect(typed.checks > 100, absl::StrCat("typed checks ran: ", typed.checks));
    for (const std::string& failure : typed.failures) check.Expect(false, failure);
    for (int k = 0; k < typed.checks - static_cast<int>(typed.failures.size()); ++k) {
      check.Expect(true, "typed");
    }
  }
  check.ExpectOk(comm.health(), "healthy at the end");

  // The healthy shutdown (a bounded barrier, then MPI_Finalize), after which
  // MPI cannot come back in this process.
  const int me = comm.world_rank();
  created->reset();
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> again = MpiCommunicator::Create(options);
  check.Expect(again.status().code() == absl::StatusCode::kFailedPrecondition,
               absl::StrCat("Create after MPI_Finalize is FailedPrecondition: ",
                            again.status().ToString()));

  std::printf("mpi_collectives_check rank %d/%lld: %s (%d checks, %d failed)\n", me,
              static_cast<long long>(world), check.failures() == 0 ? "OK" : "FAILED",
              check.checks(), check.failures());
  std::fflush(stdout);
  return check.failures() == 0 ? 0 : 1;
}

int RunDeadRank(int dead_rank, std::chrono::milliseconds timeout,
                std::chrono::milliseconds watchdog, std::chrono::milliseconds peer_timeout,
                bool stop_instead, const std::string& status_dir) {
  MpiCommunicator::Options options;
  options.timeout = watchdog;
  options.peer_timeout = peer_timeout;
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> created = MpiCommunicator::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "MpiCommunicator::Create: %s\n", created.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<MpiCommunicator> comm = std::move(*created);
  const int me = comm->world_rank();
  // Connect everyone first (OpenMPI's tcp BTL connects lazily).
  std::vector<float> data(1 << 16, 1.0f);
  absl::Status status =
      comm->AllReduce(data.data(), 1 << 16, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
          ->Wait(kWait);
  if (status.ok()) status = comm->Barrier()->Wait(kWait);
  if (!status.ok()) {
    std::fprintf(stderr, "rank %d: warm-up failed: %s\n", me, status.ToString().c_str());
    return 1;
  }
  if (me == dead_rank && stop_instead) {
    std::ofstream(absl::StrCat(status_dir, "/pid")) << getpid() << "\n";
    std::fprintf(stderr, "rank %d: stopping itself (SIGSTOP) before the collective\n", me);
    std::fflush(stderr);
    raise(SIGSTOP);
    _exit(1);  // only if someone sends SIGCONT
  }
  if (me == dead_rank) {
    std::fprintf(stderr, "rank %d: dying before the collective\n", me);
    std::fflush(stderr);
    _exit(1);
  }
  const Clock::time_point start = Clock::now();
  status = comm->AllReduce(data.data(), 1 << 16, ReduceOp::kReduceSum,
                           Purpose::kPurposeAdapterGrad)
               ->Wait(timeout);
  const double waited_s = std::chrono::duration<double>(Clock::now() - start).count();
  const Clock::time_point later_start = Clock::now();
  std::unique_ptr<Work> later_work = comm->Barrier();
  // Fail-fast, without a clock: a broken communicator answers a new call
  // with an already completed Work (a barrier with a dead peer would never
  // be Done on a healthy one).
  const bool later_at_once = later_work->Done();
  const absl::Status later = later_work->Wait(timeout);
  const double later_s = std::chrono::duration<double>(Clock::now() - later_start).count();
  std::printf("rank %d: all_reduce after %.2fs: %s\nrank %d: next call after %.3fs: %s\n", me,
              waited_s, status.ToString().c_str(), me, later_s, later.ToString().c_str());
  std::fflush(stdout);
  // DeadlineExceeded is what OpenMPI 4.1 gives here (its tcp BTL reports
  // nothing for the dead peer); Unavailable would be an MPI error, which is
  // as good: what matters is an error in bounded time, then fail-fast.
  const bool detected = (status.code() == absl::StatusCode::kDeadlineExceeded ||
                         status.code() == absl::StatusCode::kUnavailable) &&
                        later.code() == absl::StatusCode::kUnavailable && later_at_once;
  const int code = detected ? kDeadPeerExitCode : 1;
  if (!status_dir.empty()) {
    std::ofstream(absl::StrCat(status_dir, "/rank", me)) << code << "\n";
  }
  if (stop_instead && me == 0) {
    // Let the other survivors reach their own verdict first (they hear of
    // the break through rank 0's pings stopping), then free mpirun.
    const int n = comm->world_size();
    for (int waited_ms = 0; waited_ms < 15000; waited_ms += 50) {
      bool all = true;
      for (int r = 1; r < n; ++r) {
        if (r != dead_rank && !std::ifstream(absl::StrCat(status_dir, "/rank", r))) all = false;
      }
      if (all) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::ifstream pid_file(absl::StrCat(status_dir, "/pid"));
    pid_t pid = 0;
    // SIGCONT: it resumes and _exits. (A SIGKILL of the stopped process
    // leaves OpenMPI 4.1's mpirun waiting for ever.)
    if (pid_file >> pid && pid > 0) kill(pid, SIGCONT);
  }
  // Destroying a broken communicator must not hang (it skips MPI_Finalize).
  comm.reset();
  std::printf("rank %d: exiting with %d\n", me, code);
  std::fflush(stdout);
  return code;
}

// Set-up bounded (Options::init_timeout = `timeout`): rank `late_rank`
// starts `late` after the others. Every other rank must either finish
// set-up once it arrives (late < timeout) or fail with DeadlineExceeded
// naming what it waited for; each prints its outcome and writes 0 (set up)
// or 43 (timed out) to DIR/rank<r>.
// --mode=idle: the world stays idle for `idle` after a warm-up (no
// collectives; only the progress threads' liveness pings), then runs one
// more all-reduce. Healthy ranks must not break each other by the peer
// timeout. Run under libfaketime with the wall clock ahead of the kernel's
// (dist/mpi_clock_test.sh), where a progress thread sleeping on Abseil's
// CLOCK_REALTIME deadline overslept its ping interval by the offset.
// Exit 0 when the world is healthy and the sum right, 1 otherwise.
int RunIdle(std::chrono::milliseconds idle, std::chrono::milliseconds peer_timeout) {
  MpiCommunicator::Options options;
  options.peer_timeout = peer_timeout;
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> created = MpiCommunicator::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "MpiCommunicator::Create: %s\n", created.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<MpiCommunicator> comm = std::move(*created);
  const int me = comm->world_rank();
  const int64_t n = comm->world_size();
  std::vector<float> data(1024, 1.0f);
  absl::Status status =
      comm->AllReduce(data.data(), 1024, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
          ->Wait(kWait);
  if (status.ok()) status = comm->Barrier()->Wait(kWait);
  if (!status.ok()) {
    std::fprintf(stderr, "rank %d: warm-up failed: %s\n", me, status.ToString().c_str());
    return 1;
  }
  std::this_thread::sleep_for(idle);
  const absl::Status health = comm->health();
  std::fill(data.begin(), data.end(), 1.0f);
  if (health.ok()) {
    status = comm->AllReduce(data.data(), 1024, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
                 ->Wait(kWait);
  }
  const bool sum_ok = status.ok() && data[0] == static_cast<float>(n) && data[1023] == static_cast<float>(n);
  std::printf("rank %d: after %.1fs idle (peer timeout %.1fs): health %s; all-reduce %s\n", me,
              std::chrono::duration<double>(idle).count(),
              std::chrono::duration<double>(peer_timeout).count(), health.ToString().c_str(),
              sum_ok ? "right" : status.ToString().c_str());
  std::fflush(stdout);
  return health.ok() && sum_ok ? 0 : 1;
}

int RunLateRank(int late_rank, std::chrono::milliseconds late, std::chrono::milliseconds timeout,
                const std::string& status_dir) {
  const char* env_rank = std::getenv("OMPI_COMM_WORLD_RANK");
  const int me = env_rank != nullptr ? std::atoi(env_rank) : 0;
  if (me == late_rank) std::this_thread::sleep_for(late);
  MpiCommunicator::Options options;
  options.init_timeout = timeout;
  options.init_log_interval = std::chrono::seconds(1);
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> created = MpiCommunicator::Create(options);
  const double took = std::chrono::duration<double>(Clock::now() - start).count();
  const int code = created.ok() ? 0 : 43;
  std::printf("rank %d: set-up after %.2fs: %s\n", me, took,
              created.ok() ? "OK" : created.status().ToString().c_str());
  std::fflush(stdout);
  if (!status_dir.empty()) std::ofstream(absl::StrCat(status_dir, "/rank", me)) << code << "\n";
  if (!created.ok()) std::_Exit(code);  // MPI may be stuck in another thread
  return code;
}

int RunWorld() {
  WorldOptions options;
  options.mpi.timeout = std::chrono::minutes(2);
  absl::StatusOr<std::unique_ptr<World>> created = World::FromEnvironment(options);
  if (!created.ok()) {
    std::fprintf(stderr, "World::FromEnvironment: %s\n", created.status().ToString().c_str());
    return 1;
  }
  World& world = **created;
  Checker check(world.rank());
  const int64_t n = world.size();
  const char* size_env = std::getenv("OMPI_COMM_WORLD_SIZE");
  check.Expect(size_env != nullptr && absl::StrCat(n) == size_env,
               absl::StrCat("world size ", n, " is the launcher's"));
  check.Expect(world.rank_info().launcher == "openmpi" && world.rank_info().world_rank == world.rank(),
               "rank_info from the launcher");
  check.Expect(world.shared() && &world.control() == &world.data(),
               "control and data are one communicator");
  check.Expect(world.control().backend_name() == (n == 1 ? "local" : "mpi"),
               absl::StrCat("backend ", world.control().backend_name()));
  float id = static_cast<float>(world.rank());
  check.ExpectOk(world.data()
                     .AllReduce(&id, 1, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
                     ->Wait(kWait),
                 "data all_reduce");
  check.Expect(id == static_cast<float>(n * (n - 1) / 2), "sum of rank ids over data");
  int32_t token = world.rank() == 0 ? 1234 : 0;
  check.ExpectOk(
      world.control().Broadcast(&token, sizeof(token), 0, Purpose::kPurposeControl)->Wait(kWait),
      "control broadcast");
  check.Expect(token == 1234, "control broadcast from rank 0");
  check.ExpectOk(world.control().Barrier()->Wait(kWait), "control barrier");
  const int me = world.rank();
  created->reset();
  std::printf("mpi_collectives_check --mode=world rank %d/%lld: %s (%d checks, %d failed)\n", me,
              static_cast<long long>(n), check.failures() == 0 ? "OK" : "FAILED",
              check.checks(), check.failures());
  std::fflush(stdout);
  return check.failures() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace sheaf::dist

int main(int argc, char** argv) {
  std::string mode = "collectives";
  std::string status_dir;
  int dead_rank = -1;
  int timeout_ms = 5000;
  int watchdog_ms = 120'000;
  int peer_timeout_ms = 120'000;
  std::string dead_how = "exit";
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    auto value = [&](absl::string_view flag) -> const char* {
      return arg.substr(0, flag.size()) == flag ? argv[i] + flag.size() : nullptr;
    };
    if (const char* v = value("--mode=")) {
      mode = v;
    } else if (const char* v = value("--dead_how=")) {
      dead_how = v;
    } else if (const char* v = value("--status_dir=")) {
      status_dir = v;
    } else if (const char* v = value("--dead_rank=");
               v != nullptr && absl::SimpleAtoi(absl::string_view(v), &dead_rank)) {
    } else if (const char* v = value("--timeout_ms=");
               v != nullptr && absl::SimpleAtoi(absl::string_view(v), &timeout_ms)) {
    } else if (const char* v = value("--watchdog_ms=");
               v != nullptr && absl::SimpleAtoi(absl::string_view(v), &watchdog_ms)) {
    } else if (const char* v = value("--peer_timeout_ms=");
               v != nullptr && absl::SimpleAtoi(absl::string_view(v), &peer_timeout_ms)) {
    } else {
      std::fprintf(stderr, "unknown or malformed argument: %s\n", argv[i]);
      return 2;
    }
  }
  if (mode == "collectives") return sheaf::dist::RunCollectives();
  if (mode == "world") return sheaf::dist::RunWorld();
  if (mode == "late_rank") {
    return sheaf::dist::RunLateRank(dead_rank, std::chrono::milliseconds(watchdog_ms),
                                    std::chrono::milliseconds(timeout_ms), status_dir);
  }
  if (mode == "dead_rank") {
    return sheaf::dist::RunDeadRank(dead_rank, std::chrono::milliseconds(timeout_ms),
                                    std::chrono::milliseconds(watchdog_ms),
                                    std::chrono::milliseconds(peer_timeout_ms),
                                    dead_how == "stop", status_dir);
  }
  if (mode == "idle") {
    return sheaf::dist::RunIdle(std::chrono::milliseconds(timeout_ms),
                                std::chrono::milliseconds(peer_timeout_ms));
  }
  std::fprintf(stderr, "unknown --mode=%s\n", mode.c_str());
  return 2;
}
