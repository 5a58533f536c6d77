// A rank's view of its worker world: the two communicators every component
// above dist uses (DESIGN.md, Distribution).
//
//   control  host memory, always: votes, spec and metric broadcasts,
//            barriers, checkpoint agreement. MPI in a world of several
//            ranks, LocalCommunicator in a world of one.
//   data     frozen-weight gathers and adapter-gradient reductions: the
//            bulk traffic. Today the SAME communicator object as control
//            (one MpiCommunicator, one duplicate of MPI_COMM_WORLD, one
//            progress thread); a later NCCL backend makes it a separate
//            NcclCommunicator on device buffers, bootstrapped over control
//            (dist/cuda/nccl_communicator.h, CommunicatorBootstrap).
//
// Ordering rule that holds in both layouts: every rank issues the same
// collectives in the same order counting both communicators together (as
// one communicator requires). Code that follows it keeps working when data
// becomes a second communicator; code that relied on control and data being
// independent queues would deadlock today, so do not.
//
// Bytes stay attributable: each collective carries its Purpose, and
// control().stats() / data().stats() count per purpose on whichever object
// moved them (the same object today).
//
// Thread-safety: as Communicator. A World is not copyable; destroying it
// destroys data before control (control may own MPI, and data's bootstrap
// ran over it).
#ifndef SHEAF_DIST_WORLD_H_
#define SHEAF_DIST_WORLD_H_

#include <memory>

#include "absl/status/statusor.h"
#include "dist/communicator.h"
#include "dist/mpi_communicator.h"

namespace sheaf::dist {

struct WorldOptions {
  // The data communicator's device. kDeviceCuda is for the NCCL backend,
  // which lives in //dist/cuda (--config=cuda only): FromEnvironment answers
  // Unimplemented for it; a CUDA build makes the NcclCommunicator itself and
  // passes both to World::Own.
  Device data_device = Device::kDeviceCpu;
  // For the MpiCommunicator of a world of several ranks.
  MpiCommunicator::Options mpi;
};

class World {
 public:
  // The world this process belongs to, from the launcher's environment
  // (DiscoverRank): a world of one gets a LocalCommunicator, a larger one an
  // MpiCommunicator (MpiCommunicator::Create), shared by control and data.
  // Errors: DiscoverRank's InvalidArgument (inconsistent launcher
  // variables; a usage error), MpiCommunicator::Create's errors,
  // Unimplemented for data_device = kDeviceCuda. MPI may be initialised
  // only once per process: create one World per process and keep it.
  static absl::StatusOr<std::unique_ptr<World>> FromEnvironment(
      const WorldOptions& options = {});

  // Takes ownership. `data` may be null: data is then control.
  // CHECK-fails when control is null or the two disagree on rank or size.
  static std::unique_ptr<World> Own(RankInfo rank_info, std::unique_ptr<Communicator> control,
                                    std::unique_ptr<Communicator> data = nullptr);
  // Does not take ownership (both must outlive the World); data may equal
  // control, or be null (then it is control). For tests over a ThreadWorld
  // rank and for callers that already hold a communicator.
  static std::unique_ptr<World> Borrow(Communicator* control, Communicator* data = nullptr);

  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  Communicator& control() const { return *control_; }
  Communicator& data() const { return *data_; }
  // True when control and data are one object (today's layout).
  bool shared() const { return control_ == data_; }

  int rank() const { return control_->world_rank(); }
  int size() const { return control_->world_size(); }
  // The launcher's view (local rank and size pick a GPU); for Borrow'ed
  // worlds, rank and size only, one node assumed.
  const RankInfo& rank_info() const { return rank_info_; }

 private:
  World(RankInfo rank_info, Communicator* control, Communicator* data);

  RankInfo rank_info_;
  std::unique_ptr<Communicator> owned_control_;
  std::unique_ptr<Communicator> owned_data_;
  Communicator* control_;
  Communicator* data_;
};

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_WORLD_H_
