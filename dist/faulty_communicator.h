// A test helper that wraps a Communicator and injects faults into chosen
// collectives, as c10d's tests do by wrapping a backend.
//
// Collectives are numbered from 0 in issue order over every kind (barriers
// included). A Fault names the number it hits and what happens:
//   kFaultFail  the collective is not run on this rank; its Work completes
//               at once with `status` (an error this rank detected before
//               the wire; in a multi-rank world the peers then wait, as they
//               would for a real failure);
//   kFaultDelay the collective runs, but its Work is not done until `delay`
//               after it was issued (a slow peer or link); a Wait that ends
//               earlier returns DeadlineExceeded;
//   kFaultHang  the collective is not run and never completes (a dead peer
//               seen from a world of one): Done() stays false and every Wait
//               returns DeadlineExceeded after its timeout.
// Collectives without a fault are forwarded unchanged, with their dtype
// (a dtype the interface rejects is rejected before it gets an index).
// WaitOnStream of a faulted Work is Unimplemented (the faults are host-side). Bytes and calls that
// the wrapped communicator counts are mirrored into this one's stats, so
// code holding a Communicator& sees the same numbers.
//
// Thread-safety: as Communicator (issue from one thread).
#ifndef SHEAF_DIST_FAULTY_COMMUNICATOR_H_
#define SHEAF_DIST_FAULTY_COMMUNICATOR_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "dist/communicator.h"

namespace sheaf::dist {

struct Fault {
  enum class Kind { kFaultFail, kFaultDelay, kFaultHang };
  int64_t index = 0;  // which collective, 0-based in issue order
  Kind kind = Kind::kFaultFail;
  absl::Status status = absl::UnavailableError("injected fault");  // kFaultFail
  std::chrono::milliseconds delay{0};                                // kFaultDelay
};

class FaultyCommunicator final : public Communicator {
 public:
  FaultyCommunicator(std::unique_ptr<Communicator> inner, std::vector<Fault> faults);

  int world_rank() const override { return inner_->world_rank(); }
  int world_size() const override { return inner_->world_size(); }
  Device device() const override { return inner_->device(); }
  std::string backend_name() const override { return "faulty(" + inner_->backend_name() + ")"; }

  std::unique_ptr<Work> Broadcast(void* data, int64_t bytes, int root,
                                  Purpose purpose) override;
  std::unique_ptr<Work> Barrier() override;

  Communicator& inner() { return *inner_; }
  // Collectives issued so far (the index the next one gets).
  int64_t issued() const { return next_index_; }
  // Faults that have fired so far.
  int64_t fired() const { return fired_; }

 protected:
  // Forwarded with their dtype to the inner communicator's typed calls.
  std::unique_ptr<Work> DoAllGather(void* out, const void* in, int64_t count, DType dtype,
                                    Purpose purpose) override;
  std::unique_ptr<Work> DoReduceScatter(void* out, const void* in, int64_t count, DType dtype,
                                        ReduceOp op, Purpose purpose) override;
  std::unique_ptr<Work> DoAllReduce(void* data, int64_t count, DType dtype, ReduceOp op,
                                    Purpose purpose) override;

 private:
  // Runs `run` on the inner communicator unless a fault applies.
  std::unique_ptr<Work> Apply(Purpose purpose,
                              const std::function<std::unique_ptr<Work>()>& run);

  std::unique_ptr<Communicator> inner_;
  std::vector<Fault> faults_;
  int64_t next_index_ = 0;
  int64_t fired_ = 0;
};

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_FAULTY_COMMUNICATOR_H_
