#include "base/allocation.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace sheaf {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

bool ReadSmallFile(const std::string& path, std::string* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

bool EnvInt(const AllocationSources& s, const char* name, int64_t* out) {
  const char* v = s.getenv ? s.getenv(name) : nullptr;
  if (v == nullptr || *v == '\0') return false;
  int64_t n = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(v), &n) || n <= 0) return false;
  *out = n;
  return true;
}

// Slurm may write a per-node count as "4" or "4(x2)"; the first number is ours.
bool SlurmInt(const AllocationSources& s, const char* name, int64_t* out) {
  const char* v = s.getenv ? s.getenv(name) : nullptr;
  if (v == nullptr || *v == '\0') return false;
  absl::string_view sv(v);
  sv = sv.substr(0, sv.find_first_of("(,"));
  int64_t n = 0;
  if (!absl::SimpleAtoi(sv, &n) || n <= 0) return false;
  *out = n;
  return true;
}

// CPU quota of the cgroup, rounded up; 0 when there is none.
int CgroupCpus(const std::string& dir) {
  if (dir.empty()) return 0;
  std::string text;
  if (ReadSmallFile(dir + "/cpu.max", &text)) {  // "max 100000" or "200000 100000"
    std::vector<absl::string_view> parts =
        absl::StrSplit(absl::StripAsciiWhitespace(text), ' ', absl::SkipEmpty());
    int64_t quota = 0, period = 0;
    if (parts.size() == 2 && absl::SimpleAtoi(parts[0], &quota) &&
        absl::SimpleAtoi(parts[1], &period) && quota > 0 && period > 0) {
      return static_cast<int>((quota + period - 1) / period);
    }
    return 0;
  }
  std::string q, p;
  int64_t quota = 0, period = 0;
  if (ReadSmallFile(dir + "/cpu.cfs_quota_us", &q) && ReadSmallFile(dir + "/cpu.cfs_period_us", &p) &&
      absl::SimpleAtoi(absl::StripAsciiWhitespace(q), &quota) &&
      absl::SimpleAtoi(absl::StripAsciiWhitespace(p), &period) && quota > 0 && period > 0) {
    return static_cast<int>((quota + period - 1) / period);
  }
  return 0;
}

// Memory limit of the cgroup; 0 when there is none. cgroup v1 writes "no
// limit" as a huge number (PAGE_COUNTER_MAX pages); anything above 2^60
// counts as none.
int64_t CgroupMemory(const std::string& dir) {
  if (dir.empty()) return 0;
  std::string text;
  if (!ReadSmallFile(dir + "/memory.max", &text) && !ReadSmallFile(dir + "/memory.limit_in_bytes", &text)) {
    return 0;
  }
  int64_t n = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &n) || n <= 0 || n > (int64_t{1} << 60)) {
    return 0;
  }
  return n;
}

struct Cpus {
  int n;
  const char* source;
};

Cpus ResolveCpus(const AllocationSources& s) {
  int64_t n = 0;
  if (EnvInt(s, "OMP_NUM_THREADS", &n)) return {static_cast<int>(std::min<int64_t>(n, 1 << 16)), "OMP_NUM_THREADS"};
  if (SlurmInt(s, "SLURM_CPUS_PER_TASK", &n)) return {static_cast<int>(std::min<int64_t>(n, 1 << 16)), "SLURM_CPUS_PER_TASK"};
  const int cg = CgroupCpus(s.cgroup_cpu_dir);
  if (cg > 0 && (s.affinity_cpus <= 0 || cg < s.affinity_cpus)) return {cg, "cgroup CPU quota"};
  if (s.affinity_cpus > 0) return {s.affinity_cpus, "CPU affinity"};
  return {1, "default"};
}

struct Memory {
  int64_t bytes;
  const char* source;
};

Memory ResolveMemory(const AllocationSources& s, int local_ranks) {
  local_ranks = std::max(1, local_ranks);
  Memory best{0, "unknown"};
  auto offer = [&](int64_t bytes, const char* source) {
    if (bytes > 0 && (best.bytes == 0 || bytes < best.bytes)) best = {bytes, source};
  };
  int64_t per_cpu = 0, per_node = 0;
  if (SlurmInt(s, "SLURM_MEM_PER_CPU", &per_cpu)) {
    int64_t cpus = 1;
    SlurmInt(s, "SLURM_CPUS_PER_TASK", &cpus);
    offer(per_cpu * kMiB * cpus, "SLURM_MEM_PER_CPU");
  }
  if (SlurmInt(s, "SLURM_MEM_PER_NODE", &per_node)) offer(per_node * kMiB / local_ranks, "SLURM_MEM_PER_NODE");
  offer(CgroupMemory(s.cgroup_memory_dir) / local_ranks, "cgroup memory limit");
  offer(s.physical_bytes / local_ranks, "physical memory");
  return best;
}

// This process's cgroup directories from /proc/self/cgroup: v2 ("0::/path")
// or v1's "cpu" and "memory" controller lines, mapped under /sys/fs/cgroup;
// a path hidden by a cgroup namespace ("/") maps to the mount itself.
void ProcessCgroupDirs(std::string* cpu_dir, std::string* memory_dir) {
  std::string text;
  if (!ReadSmallFile("/proc/self/cgroup", &text)) return;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    const std::string path = f[2] == "/" ? "" : std::string(f[2]);
    if (f[0] == "0" && f[1].empty()) {
      *cpu_dir = *memory_dir = absl::StrCat("/sys/fs/cgroup", path);
      return;
    }
    for (absl::string_view controller : absl::StrSplit(f[1], ',')) {
      if (controller == "cpu") *cpu_dir = absl::StrCat("/sys/fs/cgroup/", f[1], path);
      if (controller == "memory") *memory_dir = absl::StrCat("/sys/fs/cgroup/", f[1], path);
    }
  }
}

}  // namespace

AllocationSources ProcessAllocationSources() {
  AllocationSources s;
  s.getenv = [](const char* name) -> const char* { return std::getenv(name); };
  ProcessCgroupDirs(&s.cgroup_cpu_dir, &s.cgroup_memory_dir);
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) s.affinity_cpus = CPU_COUNT(&set);
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) s.physical_bytes = static_cast<int64_t>(pages) * page;
  return s;
}

int AllocatedCpus(const AllocationSources& sources) { return std::max(1, ResolveCpus(sources).n); }
int AllocatedCpus() { return AllocatedCpus(ProcessAllocationSources()); }

int64_t AllocatedMemoryBytes(const AllocationSources& sources, int local_ranks) {
  return ResolveMemory(sources, local_ranks).bytes;
}
int64_t AllocatedMemoryBytes(int local_ranks) {
  return AllocatedMemoryBytes(ProcessAllocationSources(), local_ranks);
}

std::string DescribeAllocation(const AllocationSources& sources, int local_ranks) {
  const Cpus c = ResolveCpus(sources);
  const Memory m = ResolveMemory(sources, local_ranks);
  return absl::StrCat(c.n, " CPUs (", c.source, "), ", m.bytes / kMiB, " MiB per rank (", m.source, ")");
}

}  // namespace sheaf
