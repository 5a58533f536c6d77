// Frozen base weights sharded across the ranks of a world.
//
// Each group of frozen tensors (model.h: group 0 = embedding / final norm /
// untied head, group l+1 = layer l) is laid out as one flat byte vector in
// the tensors' storage dtypes (f32, or bf16 matrices with
// ModelOptions::frozen_dtype; each tensor starts at a multiple of 4 bytes, so
// an all-f32 group is the plain float vector it always was), padded to a
// multiple of N 4-byte words, and rank r stores only words [r*S, (r+1)*S) of
// it, read straight from its own byte ranges of the safetensors file(s).
// Gathers move those words untouched (a bf16 pair travels as one 32-bit
// word until collectives take a dtype). NF4 fits the same layout: each
// tensor is quantised whole at load (core/quant/nf4.h, double-quantised
// scales) and each rank keeps its byte range of the NF4 bytes, so a shard
// boundary may fall inside a 36-byte block; gathers move NF4 bytes, never
// dequantised floats, and the gathered bytes equal an unsharded NF4
// model's. Before a
// group is used it is all-gathered into a gather buffer; Prefetch issues the
// gather of the next group so it overlaps the current computation.
//
// Buffer policy: the edge group has its own buffer and stays gathered once
// gathered. Layers share K buffers, K = clamp(gather_budget_bytes /
// layer_bytes, 2, L): with K = L every layer is gathered once and kept (no
// traffic after the first step); with K = 2 (the default) forward gathers
// each layer, and backward re-gathers all but the last two. Decisions depend
// only on the sequence of calls, which is identical on every rank, so the
// collectives match.
//
// Not thread-safe: one trainer thread per rank calls it through the model.
#ifndef SHEAF_DIST_SHARDED_WEIGHTS_H_
#define SHEAF_DIST_SHARDED_WEIGHTS_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/tensor.h"
#include "dist/communicator.h"

namespace sheaf::dist {

class ShardedWeights final : public FrozenWeightSource {
 public:
  struct Options {
    int64_t gather_budget_bytes = 0;  // for layer buffers; 0 = double buffering
    std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  };

  // `model` must have been created with ModelOptions::external_frozen; its
  // frozen tensors are read from `model_dir`. Installs itself as the model's
  // frozen source. Errors: those of reading the files (naming the tensor).
  static absl::StatusOr<std::unique_ptr<ShardedWeights>> Create(Model* model, Communicator* comm,
                                                                const std::string& model_dir,
                                                                const Options& options);
  ~ShardedWeights() override;

  absl::Status Acquire(int group) override;
  void Prefetch(int group) override;
  void Release(int group) override;

  // Bytes of frozen weights in the whole model, this rank's resident shard
  // storage, and the gather buffers.
  int64_t total_frozen_bytes() const { return total_frozen_bytes_; }
  int64_t shard_bytes() const { return shards_.bytes(); }
  int64_t gather_buffer_bytes() const;
  int num_layer_buffers() const { return static_cast<int>(buffers_.size()) - 1; }
  int64_t gathers() const { return gathers_; }
  // 4-byte words gathered per group (padded; elements for an f32 group), for
  // traffic checks.
  int64_t group_padded_elements(int group) const { return groups_[static_cast<size_t>(group)].padded; }

 private:
  struct Group {
    std::vector<Param*> params;       // frozen params of the group
    std::vector<int64_t> offsets;     // byte offset of each param (multiple of 4)
    int64_t size = 0;                 // bytes
    int64_t padded = 0;               // 4-byte words, multiple of N
    int shard_slot = -1;              // in shards_
  };
  struct Buffer {
    std::vector<float> data;
    int owner = -1;     // group held (or being gathered)
    bool in_use = false;
    int64_t last_use = 0;
    std::unique_ptr<Work> pending;
  };
  ShardedWeights(Model* model, Communicator* comm, const Options& options)
      : model_(model), comm_(comm), options_(options) {}
  int BufferFor(int group) const;  // -1 when not resident or pending
  absl::Status StartGather(int group);
  absl::Status Complete(int buffer);

  Model* model_;
  Communicator* comm_;
  Options options_;
  std::vector<Group> groups_;
  Arena shards_{ArenaKind::kArenaFrozen};
  std::vector<Buffer> buffers_;  // [0] edges, [1..K] layers
  int64_t total_frozen_bytes_ = 0;
  int64_t gathers_ = 0;
  int64_t clock_ = 0;
  absl::Status broken_;
};

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_SHARDED_WEIGHTS_H_
