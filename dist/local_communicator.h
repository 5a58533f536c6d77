// A world of one process: the backend for single-process training and the
// reference the other backends are compared with.
//
// Every collective is the identity on a world of one, so nothing is copied
// unless the output buffer differs from the input (AllReduce is a no-op,
// AllGather/ReduceScatter copy only when in != out) and nothing crosses a
// wire: bytes_sent stays 0 for every purpose while calls are still counted,
// so code that checks "adapter_grad calls == steps" works unchanged.
//
// Thread-safety: as Communicator; it holds no state besides the counters.
#ifndef SHEAF_DIST_LOCAL_COMMUNICATOR_H_
#define SHEAF_DIST_LOCAL_COMMUNICATOR_H_

#include <memory>
#include <string>

#include "dist/communicator.h"

namespace sheaf::dist {

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator() = default;

  int world_rank() const override { return 0; }
  int world_size() const override { return 1; }
  Device device() const override { return Device::kDeviceCpu; }
  std::string backend_name() const override { return "local"; }

  // Each returns a completed Work: OK, or InvalidArgument for a negative
  // count, a null buffer with a positive count, or (Broadcast) root != 0.
  // Every dtype of communicator.h is the identity as well.
  std::unique_ptr<Work> Broadcast(void* data, int64_t bytes, int root,
                                  Purpose purpose) override;
  std::unique_ptr<Work> Barrier() override;

 protected:
  std::unique_ptr<Work> DoAllGather(void* out, const void* in, int64_t count, DType dtype,
                                    Purpose purpose) override;
  std::unique_ptr<Work> DoReduceScatter(void* out, const void* in, int64_t count, DType dtype,
                                        ReduceOp op, Purpose purpose) override;
  std::unique_ptr<Work> DoAllReduce(void* data, int64_t count, DType dtype, ReduceOp op,
                                    Purpose purpose) override;
};

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_LOCAL_COMMUNICATOR_H_
