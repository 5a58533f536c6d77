// For GPU test and benchmark binaries that Bazel (or a person) starts as one
// process: re-run the same binary as `mpirun -np N`, one rank per GPU.
#ifndef SHEAF_DIST_CUDA_MPI_LAUNCH_H_
#define SHEAF_DIST_CUDA_MPI_LAUNCH_H_

namespace sheaf::dist {

// True inside an mpirun-started rank (OMPI_COMM_WORLD_SIZE is set).
bool UnderMpirun();

// Replaces this process with `mpirun -np N /proc/self/exe argv[1..]`, N =
// $SHEAF_GPU_RANKS or the number of visible CUDA devices. Returns only on
// failure (no GPU visible, mpirun missing), with 1 after printing why.
int RelaunchUnderMpirun(int argc, char** argv);

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_CUDA_MPI_LAUNCH_H_
