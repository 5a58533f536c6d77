#include "dist/communicator.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "core/status.h"

namespace sheaf::dist {

const char* PurposeName(Purpose p) {
  switch (p) {
    case Purpose::kPurposeFrozenGather:
      return "frozen_gather";
    case Purpose::kPurposeAdapterGrad:
      return "adapter_grad";
    case Purpose::kPurposeControl:
      return "control";
  }
  return "unknown";
}

const char* ReduceOpName(ReduceOp op) {
  return op == ReduceOp::kReduceAvg ? "avg" : "sum";
}

absl::Status CheckCollectiveDType(const char* what, DType dtype, int64_t count, bool reduce,
                                  ReduceOp op) {
  if (reduce) {
    const bool floating = dtype == DType::kDTypeF32 || dtype == DType::kDTypeBF16;
    const bool sum_only = dtype == DType::kDTypeI32;
    if (!floating && !(sum_only && op == ReduceOp::kReduceSum)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": no ", ReduceOpName(op), " reduction over ", DTypeName(dtype),
                       " (reductions take f32 or bf16, and i32 for sum)"));
    }
    return absl::OkStatus();
  }
  if (dtype == DType::kDTypeNF4 && count % kNf4BlockSize != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": nf4 count ", count, " is not a multiple of the block size ",
                     kNf4BlockSize, " (a shard must be whole blocks)"));
  }
  return absl::OkStatus();
}

absl::Status Work::WaitOnStream(void* /*stream*/) {
  return absl::UnimplementedError(
      "WaitOnStream: this backend works on host memory and has no streams; call Wait");
}

std::unique_ptr<Work> Communicator::AllGather(void* out, const void* in, int64_t count,
                                              DType dtype, Purpose purpose) {
  if (absl::Status s = CheckCollectiveDType("all_gather", dtype, count, false); !s.ok()) {
    return CompletedWork(std::move(s));
  }
  return DoAllGather(out, in, count, dtype, purpose);
}

std::unique_ptr<Work> Communicator::ReduceScatter(void* out, const void* in, int64_t count,
                                                  DType dtype, ReduceOp op, Purpose purpose) {
  if (absl::Status s = CheckCollectiveDType("reduce_scatter", dtype, count, true, op); !s.ok()) {
    return CompletedWork(std::move(s));
  }
  return DoReduceScatter(out, in, count, dtype, op, purpose);
}

std::unique_ptr<Work> Communicator::AllReduce(void* data, int64_t count, DType dtype,
                                              ReduceOp op, Purpose purpose) {
  if (absl::Status s = CheckCollectiveDType("all_reduce", dtype, count, true, op); !s.ok()) {
    return CompletedWork(std::move(s));
  }
  return DoAllReduce(data, count, dtype, op, purpose);
}

namespace {

class CompletedWorkImpl final : public Work {
 public:
  explicit CompletedWorkImpl(absl::Status status) : status_(std::move(status)) {}
  absl::Status Wait(std::chrono::milliseconds /*timeout*/) override { return status_; }
  bool Done() override { return true; }

 private:
  const absl::Status status_;
};

// The value of environment variable `name`, or nullptr when it is unset.
// An empty value counts as set (and is then rejected as malformed): a
// launcher that exports RANK= has a bug worth reporting.
const char* Env(const char* name) { return std::getenv(name); }

// Parses `name`'s value as a non-negative int.
absl::StatusOr<int> EnvInt(const char* name) {
  const char* value = Env(name);
  if (value == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(name, " is not set"));
  }
  int parsed = 0;
  if (!absl::SimpleAtoi(absl::string_view(value), &parsed) || parsed < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, "='", value, "' is not a non-negative integer"));
  }
  return parsed;
}

// Checks 0 <= rank < size and size >= 1, naming both variables.
absl::Status CheckRankInSize(const char* rank_name, int rank, const char* size_name,
                             int size) {
  if (size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(size_name, "=", size, " must be >= 1"));
  }
  if (rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat(rank_name, "=", rank, " is not below ",
                                                   size_name, "=", size));
  }
  return absl::OkStatus();
}

// Checks 0 <= local_rank < local_size <= world_size, naming the variables.
absl::Status CheckLocal(const char* local_rank_name, int local_rank,
                        const char* local_size_name, int local_size,
                        const char* world_size_name, int world_size) {
  if (local_size < 1 || local_size > world_size) {
    return absl::InvalidArgumentError(absl::StrCat(local_size_name, "=", local_size,
                                                   " must be between 1 and ", world_size_name,
                                                   "=", world_size));
  }
  if (local_rank >= local_size) {
    return absl::InvalidArgumentError(absl::StrCat(local_rank_name, "=", local_rank,
                                                   " is not below ", local_size_name, "=",
                                                   local_size));
  }
  return absl::OkStatus();
}

// OMPI_COMM_WORLD_* (mpirun). The LOCAL_* pair is optional: when a launcher
// omits it we assume a single node (local == world), which is what mpirun
// without a hostfile does anyway.
absl::StatusOr<RankInfo> FromOpenMpi() {
  RankInfo info;
  info.launcher = "openmpi";
  ASSIGN_OR_RETURN(info.world_rank, EnvInt("OMPI_COMM_WORLD_RANK"));
  ASSIGN_OR_RETURN(info.world_size, EnvInt("OMPI_COMM_WORLD_SIZE"));
  RETURN_IF_ERROR(CheckRankInSize("OMPI_COMM_WORLD_RANK", info.world_rank,
                                  "OMPI_COMM_WORLD_SIZE", info.world_size));
  const bool has_local_rank = Env("OMPI_COMM_WORLD_LOCAL_RANK") != nullptr;
  const bool has_local_size = Env("OMPI_COMM_WORLD_LOCAL_SIZE") != nullptr;
  if (has_local_rank != has_local_size) {
    return absl::InvalidArgumentError(
        "OMPI_COMM_WORLD_LOCAL_RANK and OMPI_COMM_WORLD_LOCAL_SIZE must be set together");
  }
  if (has_local_rank) {
    ASSIGN_OR_RETURN(info.local_rank, EnvInt("OMPI_COMM_WORLD_LOCAL_RANK"));
    ASSIGN_OR_RETURN(info.local_size, EnvInt("OMPI_COMM_WORLD_LOCAL_SIZE"));
    RETURN_IF_ERROR(CheckLocal("OMPI_COMM_WORLD_LOCAL_RANK", info.local_rank,
                               "OMPI_COMM_WORLD_LOCAL_SIZE", info.local_size,
                               "OMPI_COMM_WORLD_SIZE", info.world_size));
  } else {
    info.local_rank = info.world_rank;
    info.local_size = info.world_size;
  }
  return info;
}

// Expands SLURM's compressed per-node task counts ("2(x3),1" = 2,2,2,1).
absl::StatusOr<std::vector<int>> ParseSlurmTasksPerNode(const char* name,
                                                        absl::string_view value) {
  std::vector<int> counts;
  for (absl::string_view entry : absl::StrSplit(value, ',')) {
    int repeat = 1;
    absl::string_view count_text = entry;
    if (const size_t paren = entry.find('('); paren != absl::string_view::npos) {
      absl::string_view rep = entry.substr(paren);
      count_text = entry.substr(0, paren);
      if (rep.size() < 4 || rep.substr(0, 2) != "(x" || rep.back() != ')' ||
          !absl::SimpleAtoi(rep.substr(2, rep.size() - 3), &repeat) || repeat < 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, "='", std::string(value), "': bad repeat '", std::string(rep),
            "' (expected e.g. 2(x3))"));
      }
    }
    int count = 0;
    if (!absl::SimpleAtoi(count_text, &count) || count < 1) {
      return absl::InvalidArgumentError(absl::StrCat(name, "='", std::string(value),
                                                     "': bad task count '",
                                                     std::string(count_text), "'"));
    }
    if (counts.size() + repeat > 1'000'000) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "='", std::string(value), "' lists too many nodes"));
    }
    counts.insert(counts.end(), repeat, count);
  }
  return counts;
}

// Tasks on this node and the variable that said so: SLURM_NTASKS_PER_NODE
// when the job asked for a fixed number, else this node's entry of
// SLURM_TASKS_PER_NODE (indexed by SLURM_NODEID, node 0 when unset), else a
// guess of one node.
struct SlurmLocal {
  int size;
  const char* name;
};
absl::StatusOr<SlurmLocal> SlurmLocalSize(int world_size) {
  if (Env("SLURM_NTASKS_PER_NODE") != nullptr) {
    ASSIGN_OR_RETURN(const int n, EnvInt("SLURM_NTASKS_PER_NODE"));
    return SlurmLocal{n, "SLURM_NTASKS_PER_NODE"};
  }
  if (const char* per_node = Env("SLURM_TASKS_PER_NODE"); per_node != nullptr) {
    ASSIGN_OR_RETURN(std::vector<int> counts,
                     ParseSlurmTasksPerNode("SLURM_TASKS_PER_NODE", per_node));
    int node = 0;
    if (Env("SLURM_NODEID") != nullptr) {
      ASSIGN_OR_RETURN(node, EnvInt("SLURM_NODEID"));
    }
    if (node >= static_cast<int>(counts.size())) {
      return absl::InvalidArgumentError(absl::StrCat("SLURM_NODEID=", node,
                                                     " has no entry in SLURM_TASKS_PER_NODE='",
                                                     per_node, "'"));
    }
    return SlurmLocal{counts[node], "SLURM_TASKS_PER_NODE"};
  }
  return SlurmLocal{world_size, "SLURM_NTASKS"};
}

// SLURM_{PROCID,NTASKS,LOCALID} (srun). Under srun --mpi=pmix, PMIX_RANK is
// set as well and must agree.
absl::StatusOr<RankInfo> FromSlurm() {
  RankInfo info;
  info.launcher = "slurm";
  ASSIGN_OR_RETURN(info.world_rank, EnvInt("SLURM_PROCID"));
  ASSIGN_OR_RETURN(info.world_size, EnvInt("SLURM_NTASKS"));
  RETURN_IF_ERROR(
      CheckRankInSize("SLURM_PROCID", info.world_rank, "SLURM_NTASKS", info.world_size));
  if (Env("PMIX_RANK") != nullptr) {
    ASSIGN_OR_RETURN(const int pmix_rank, EnvInt("PMIX_RANK"));
    if (pmix_rank != info.world_rank) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PMIX_RANK=", pmix_rank, " disagrees with SLURM_PROCID=", info.world_rank));
    }
  }
  // srun (and the batch step) always set SLURM_LOCALID.
  ASSIGN_OR_RETURN(info.local_rank, EnvInt("SLURM_LOCALID"));
  ASSIGN_OR_RETURN(const SlurmLocal local, SlurmLocalSize(info.world_size));
  info.local_size = local.size;
  RETURN_IF_ERROR(CheckLocal("SLURM_LOCALID", info.local_rank, local.name, info.local_size,
                             "SLURM_NTASKS", info.world_size));
  return info;
}

// PMIX_RANK alone (a PMIx launcher that is neither mpirun nor srun). PMIx
// keeps the world size in its key-value store, not in the environment; we do
// not link libpmix for one number (the MPI backend learns the size from
// MPI_Comm_size anyway), so it comes from SLURM_NTASKS, and without it we
// fail clearly rather than guess a world of one. (OMPI_UNIVERSE_SIZE is no
// substitute: it counts slots, not processes.)
absl::StatusOr<RankInfo> FromPmix() {
  RankInfo info;
  info.launcher = "pmix";
  ASSIGN_OR_RETURN(info.world_rank, EnvInt("PMIX_RANK"));
  if (Env("SLURM_NTASKS") == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PMIX_RANK=", info.world_rank, " is set but the world size is unknown: set SLURM_NTASKS"));
  }
  ASSIGN_OR_RETURN(info.world_size, EnvInt("SLURM_NTASKS"));
  RETURN_IF_ERROR(
      CheckRankInSize("PMIX_RANK", info.world_rank, "SLURM_NTASKS", info.world_size));
  // No portable local rank without PMIx queries: assume one node.
  info.local_rank = info.world_rank;
  info.local_size = info.world_size;
  return info;
}

}  // namespace

std::unique_ptr<Work> CompletedWork(absl::Status status) {
  return std::make_unique<CompletedWorkImpl>(std::move(status));
}

void Communicator::ResetStats() {
  for (int p = 0; p < kNumPurposes; ++p) {
    stats_.bytes_sent[p] = 0;
    stats_.calls[p] = 0;
  }
  stats_.wait_ns = 0;
}

absl::StatusOr<RankInfo> DiscoverRank() {
  // mpirun first: OpenMPI 4 also exports PMIX_RANK, and an mpirun inside a
  // SLURM allocation inherits SLURM_* describing the allocation, not us.
  if (Env("OMPI_COMM_WORLD_RANK") != nullptr || Env("OMPI_COMM_WORLD_SIZE") != nullptr) {
    return FromOpenMpi();
  }
  if (Env("SLURM_PROCID") != nullptr) return FromSlurm();
  if (Env("PMIX_RANK") != nullptr) return FromPmix();
  return RankInfo{};
}

}  // namespace sheaf::dist
