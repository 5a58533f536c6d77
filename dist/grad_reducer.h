// All-reduces the trainable gradients of a world in buckets that overlap
// backward (c10d's reducer, for our model's group structure).
//
// Buckets are assigned once at creation, in the order backward finishes
// groups (last layer first, the edge group last), identical on every rank:
// consecutive tensors are packed until a bucket reaches bucket_cap_bytes (a
// tensor larger than the cap gets a bucket of its own). Backward reports each
// finished group (GradReadyListener); a bucket is copied into its staging
// buffer and its all-reduce started as soon as its last group is ready.
// Finish() waits for every bucket and copies the results back.
//
// Reduction is a SUM: the trainer scales each rank's gradient by 1/(valid
// target tokens of the whole global batch), so the sum is exactly the
// gradient one rank would compute for the global batch, even when ranks see
// different numbers of valid tokens (an average would be biased then).
//
// Only the gradients of trainable tensors are ever communicated: the frozen
// base has no gradient buffer to send. With gradient accumulation, enable the
// reducer only for the last micro-step (set_enabled).
#ifndef SHEAF_DIST_GRAD_REDUCER_H_
#define SHEAF_DIST_GRAD_REDUCER_H_

#include <chrono>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/lora.h"
#include "core/model.h"
#include "dist/communicator.h"

namespace sheaf::dist {

class GradReducer final : public GradReadyListener {
 public:
  struct Options {
    int64_t bucket_cap_bytes = 4 << 20;
    std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  };
  // Gradients of `adapter` (may be null) and of the model's trainable base
  // tensors. Installs itself as the model's grad listener.
  static absl::StatusOr<std::unique_ptr<GradReducer>> Create(Model* model, LoraAdapter* adapter,
                                                             Communicator* comm, const Options& options);
  ~GradReducer() override;

  void set_enabled(bool enabled) { enabled_ = enabled; }
  absl::Status OnGradsReady(int group) override;
  // Launches any bucket not launched yet, waits for all, copies back. Call
  // after Backward of the last micro-step.
  absl::Status Finish();

  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  int64_t grad_elements() const { return total_elements_; }  // per step, all buckets

 private:
  struct Segment {
    float* grad;
    int64_t count;
    int group;
  };
  struct Bucket {
    std::vector<Segment> segments;
    int64_t elements = 0;
    int last_group_pos = 0;  // index in the backward order of its last group
    std::vector<float> staging;
    std::unique_ptr<Work> work;
    bool launched = false;
  };
  GradReducer(Model* model, Communicator* comm, const Options& options)
      : model_(model), comm_(comm), options_(options) {}
  void Launch(Bucket& b);

  Model* model_;
  Communicator* comm_;
  Options options_;
  std::vector<Bucket> buckets_;
  std::vector<int> order_pos_;  // group -> position in backward order
  int groups_done_ = 0;         // prefix of the backward order that is done
  std::vector<bool> done_;
  int64_t total_elements_ = 0;
  bool enabled_ = true;
};

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_GRAD_REDUCER_H_
