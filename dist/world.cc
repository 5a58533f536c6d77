#include "dist/world.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "dist/local_communicator.h"

namespace sheaf::dist {
namespace {

// A programmer error in wiring a world: abort with both sides named.
void CheckSameWorld(const Communicator& control, const Communicator& data) {
  if (control.world_rank() != data.world_rank() || control.world_size() != data.world_size()) {
    std::fprintf(stderr,
                 "dist::World: control (%s, rank %d of %d) and data (%s, rank %d of %d) "
                 "are not the same world\n",
                 control.backend_name().c_str(), control.world_rank(), control.world_size(),
                 data.backend_name().c_str(), data.world_rank(), data.world_size());
    std::abort();
  }
}

}  // namespace

World::World(RankInfo rank_info, Communicator* control, Communicator* data)
    : rank_info_(std::move(rank_info)), control_(control), data_(data) {
  if (control_ == nullptr) {
    std::fprintf(stderr, "dist::World: control communicator is null\n");
    std::abort();
  }
  if (data_ == nullptr) data_ = control_;
  CheckSameWorld(*control_, *data_);
}

World::~World() {
  data_ = nullptr;
  owned_data_.reset();  // before control: it may have bootstrapped over it
  control_ = nullptr;
  owned_control_.reset();
}

std::unique_ptr<World> World::Own(RankInfo rank_info, std::unique_ptr<Communicator> control,
                                  std::unique_ptr<Communicator> data) {
  std::unique_ptr<World> world(new World(std::move(rank_info), control.get(), data.get()));
  world->owned_control_ = std::move(control);
  world->owned_data_ = std::move(data);
  return world;
}

std::unique_ptr<World> World::Borrow(Communicator* control, Communicator* data) {
  RankInfo info;
  if (control != nullptr) {
    info.world_rank = control->world_rank();
    info.world_size = control->world_size();
    info.local_rank = info.world_rank;
    info.local_size = info.world_size;
  }
  return std::unique_ptr<World>(new World(std::move(info), control, data));
}

absl::StatusOr<std::unique_ptr<World>> World::FromEnvironment(const WorldOptions& options) {
  if (options.data_device != Device::kDeviceCpu) {
    return absl::UnimplementedError(absl::StrCat(
        "dist::World: a ", DeviceName(options.data_device),
        " data communicator is made by //dist/cuda (NcclCommunicator::Create with "
        "CommunicatorBootstrap over the control communicator) and passed to World::Own"));
  }
  absl::StatusOr<RankInfo> rank = DiscoverRank();
  if (!rank.ok()) return rank.status();
  if (rank->world_size == 1) {
    return Own(*std::move(rank), std::make_unique<LocalCommunicator>());
  }
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> mpi = MpiCommunicator::Create(options.mpi);
  if (!mpi.ok()) return mpi.status();
  if ((*mpi)->world_rank() != rank->world_rank || (*mpi)->world_size() != rank->world_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dist::World: the launcher (", rank->launcher, ") says rank ", rank->world_rank, " of ",
        rank->world_size, " but MPI says rank ", (*mpi)->world_rank(), " of ",
        (*mpi)->world_size()));
  }
  return Own(*std::move(rank), *std::move(mpi));
}

}  // namespace sheaf::dist
