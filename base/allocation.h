// What a launcher granted this process: CPUs and memory, read from the
// launcher's environment and the cgroup the process runs in, so that a rank
// uses what Slurm or a pod's resources gave it rather than the whole node.
//
// CPUs, first that applies:
//   1. OMP_NUM_THREADS (an explicit choice; the sbatch script sets it);
//   2. SLURM_CPUS_PER_TASK;
//   3. the cgroup's CPU quota, rounded up (v2 `cpu.max`, v1
//      `cpu.cfs_quota_us` / `cpu.cfs_period_us`);
//   4. the CPUs this process may run on (sched_getaffinity).
// Memory per rank, the smallest that applies:
//   SLURM_MEM_PER_CPU x CPUs per task; SLURM_MEM_PER_NODE / local ranks;
//   the cgroup's memory limit (v2 `memory.max`, v1
//   `memory.limit_in_bytes`) / local ranks; physical memory / local ranks.
// Slurm's memory variables are in MiB (what `--mem`/`--mem-per-cpu` set).
// Values that do not parse are ignored (the next source applies): the
// result is a sizing hint, and `sheaf-worker --memory-bytes` or a spec's
// `train.threads` override it.
#ifndef SHEAF_BASE_ALLOCATION_H_
#define SHEAF_BASE_ALLOCATION_H_

#include <cstdint>
#include <functional>
#include <string>

namespace sheaf {

struct AllocationSources {
  // Environment lookup; nullptr or "" means unset.
  std::function<const char*(const char*)> getenv;
  // This process's cgroup directories holding the CPU and the memory
  // controller's files (one directory under cgroup v2, one per controller
  // under v1); "" when unknown.
  std::string cgroup_cpu_dir;
  std::string cgroup_memory_dir;
  int affinity_cpus = 0;         // 0: unknown
  int64_t physical_bytes = 0;    // 0: unknown
};

// The real process: getenv, this process's cgroup (from /proc/self/cgroup),
// sched_getaffinity, sysconf.
AllocationSources ProcessAllocationSources();

// CPUs granted (>= 1).
int AllocatedCpus(const AllocationSources& sources);
int AllocatedCpus();

// Memory per rank granted, with `local_ranks` ranks on this host; 0 when
// nothing is known.
int64_t AllocatedMemoryBytes(const AllocationSources& sources, int local_ranks);
int64_t AllocatedMemoryBytes(int local_ranks);

// One line for logs: "4 CPUs (SLURM_CPUS_PER_TASK), 2000 MiB per rank (SLURM_MEM_PER_CPU)".
std::string DescribeAllocation(const AllocationSources& sources, int local_ranks);

}  // namespace sheaf

#endif  // SHEAF_BASE_ALLOCATION_H_
