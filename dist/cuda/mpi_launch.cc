#include "dist/cuda/mpi_launch.h"

#include <cuda_runtime.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace sheaf::dist {

bool UnderMpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr; }

int RelaunchUnderMpirun(int argc, char** argv) {
  const char* name = argc > 0 ? argv[0] : "gpu check";
  int ranks = 0;
  if (const char* env = std::getenv("SHEAF_GPU_RANKS"); env != nullptr && env[0] != '\0') {
    ranks = std::atoi(env);
  } else if (cudaGetDeviceCount(&ranks) != cudaSuccess) {
    ranks = 0;
  }
  if (ranks < 1) {
    std::fprintf(stderr,
                 "%s: no CUDA device visible (cudaGetDeviceCount); this needs a GPU. "
                 "Run tools/gpu_check.sh on a GPU machine.\n",
                 name);
    return 1;
  }
  // OpenMPI keeps unix sockets under TMPDIR, whose path must stay short;
  // Bazel's TEST_TMPDIR is too long for that.
  setenv("TMPDIR", "/tmp", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  // Containers forbid the ptrace-based single copy; our MPI traffic is tiny.
  setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1);
  char self[4096];
  const ssize_t length = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (length <= 0) {
    std::perror("readlink /proc/self/exe");
    return 1;
  }
  self[length] = '\0';
  std::string np = std::to_string(ranks);
  std::vector<char*> args = {const_cast<char*>("mpirun"),
                             const_cast<char*>("--oversubscribe"),
                             const_cast<char*>("--bind-to"),
                             const_cast<char*>("none"),
                             const_cast<char*>("-np"),
                             np.data(),
                             self};
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  args.push_back(nullptr);
  std::fprintf(stderr, "%s: mpirun -np %d (one rank per GPU)\n", name, ranks);
  execvp("mpirun", args.data());
  std::perror("execvp mpirun");
  return 1;
}

}  // namespace sheaf::dist
