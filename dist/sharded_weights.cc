#include "dist/sharded_weights.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/quant/nf4.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace sheaf::dist {

absl::StatusOr<std::unique_ptr<ShardedWeights>> ShardedWeights::Create(Model* model, Communicator* comm,
                                                                       const std::string& model_dir,
                                                                       const Options& options) {
  std::unique_ptr<ShardedWeights> s(new ShardedWeights(model, comm, options));
  const int n = comm->world_size(), r = comm->world_rank();
  s->groups_.resize(static_cast<size_t>(model->num_groups()));
  for (int g = 0; g < model->num_groups(); ++g) {
    Group& grp = s->groups_[static_cast<size_t>(g)];
    for (Param* p : model->GroupParams(g)) {
      if (p->trainable()) continue;  // trainable tensors are replicated
      if (p->value.dtype != DType::kDTypeF32 && p->value.dtype != DType::kDTypeBF16 &&
          p->value.dtype != DType::kDTypeNF4) {
        return absl::UnimplementedError(absl::StrCat("sharded weights: tensor ", p->name, " has dtype ",
                                                     DTypeName(p->value.dtype), " (f32, bf16 or nf4)"));
      }
      grp.params.push_back(p);
      grp.offsets.push_back(grp.size);
      grp.size += (p->value.nbytes() + 3) / 4 * 4;
    }
    const int64_t words = grp.size / 4;
    grp.padded = (words + n - 1) / n * n;
    s->total_frozen_bytes_ += grp.size;
    grp.shard_slot = s->shards_.Add(absl::StrCat("group", g), {grp.padded / n});
  }
  s->shards_.Allocate();
  // Read only this rank's byte range of each group.
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsModel> st, SafetensorsModel::Open(model_dir));
  for (const Group& grp : s->groups_) {
    const int64_t shard = grp.padded / n * 4, begin = r * shard, end = std::min(begin + shard, grp.size);
    char* dst = static_cast<char*>(s->shards_.view(grp.shard_slot).raw());
    for (size_t i = 0; i < grp.params.size(); ++i) {
      const Tensor& v = grp.params[i]->value;
      const int64_t t0 = grp.offsets[i], t1 = t0 + v.nbytes();
      const int64_t lo = std::max(t0, begin), hi = std::min(t1, end);
      if (lo >= hi) continue;
      // Shape check once per tensor (ReadRange reads elements only).
      const TensorInfo* info = st->Find(grp.params[i]->name);
      if (info == nullptr) {
        return absl::NotFoundError(absl::StrCat(model_dir, ": tensor ", grp.params[i]->name, " is missing"));
      }
      if (info->shape != v.shape) {
        return absl::InvalidArgumentError(absl::StrCat(model_dir, ": tensor ", grp.params[i]->name,
                                                       " has shape ", ShapeToString(info->shape),
                                                       ", expected ", v.ShapeString()));
      }
      if (v.dtype == DType::kDTypeNF4) {
        // The tensor is quantised whole (its double-quantised scales depend
        // on every block: the bytes equal an unsharded model's), and this
        // rank keeps its byte range of it, which may cut a 36-byte block.
        std::vector<float> x(static_cast<size_t>(v.numel()));
        RETURN_IF_ERROR(st->ReadF32Range(grp.params[i]->name, 0, v.numel(), x.data()));
        std::vector<uint8_t> q(static_cast<size_t>(v.nbytes()));
        quant::QuantizeNf4DoubleQuant(x.data(), v.numel(), q.data());
        std::memcpy(dst + (lo - begin), q.data() + (lo - t0), static_cast<size_t>(hi - lo));
        continue;
      }
      // Offsets and shard bounds are multiples of 4 bytes, so [lo, hi) holds
      // whole f32 or bf16 elements.
      const int64_t elem = DTypeBytes(v.dtype, 1);
      RETURN_IF_ERROR(st->ReadRange(grp.params[i]->name, (lo - t0) / elem, (hi - lo) / elem, v.dtype,
                                    dst + (lo - begin)));
    }
  }
  // Buffers: edges, then K layer buffers.
  int64_t layer_max = 0;
  for (size_t g = 1; g < s->groups_.size(); ++g) layer_max = std::max(layer_max, s->groups_[g].padded);
  const int L = model->num_groups() - 1;
  int k = 2;
  if (layer_max > 0 && options.gather_budget_bytes > 0) {
    k = static_cast<int>(options.gather_budget_bytes / (layer_max * 4));  // layer_max in words
  }
  k = std::max(1, std::min(std::max(k, 2), L));
  s->buffers_.resize(static_cast<size_t>(k) + 1);
  s->buffers_[0].data.assign(static_cast<size_t>(s->groups_[0].padded), 0.0f);
  for (int b = 1; b <= k; ++b) s->buffers_[static_cast<size_t>(b)].data.assign(static_cast<size_t>(layer_max), 0.0f);
  model->set_frozen_source(s.get());
  return s;
}

ShardedWeights::~ShardedWeights() {
  for (Buffer& b : buffers_) {
    if (b.pending) (void)b.pending->Wait(options_.timeout);
  }
  if (model_) model_->set_frozen_source(nullptr);
}

int64_t ShardedWeights::gather_buffer_bytes() const {
  int64_t n = 0;
  for (const Buffer& b : buffers_) n += static_cast<int64_t>(b.data.size()) * 4;
  return n;
}

int ShardedWeights::BufferFor(int group) const {
  for (size_t b = 0; b < buffers_.size(); ++b) {
    if (buffers_[b].owner == group) return static_cast<int>(b);
  }
  return -1;
}

absl::Status ShardedWeights::StartGather(int group) {
  int chosen = -1;
  if (group == kEdgeGroup) {
    chosen = 0;
  } else {
    // A layer buffer that is neither in use nor being filled: an empty one
    // first, else the least recently used.
    for (size_t b = 1; b < buffers_.size(); ++b) {
      const Buffer& buf = buffers_[b];
      if (buf.in_use || buf.pending) continue;
      if (chosen < 0) {
        chosen = static_cast<int>(b);
        continue;
      }
      const Buffer& best = buffers_[static_cast<size_t>(chosen)];
      const bool empty = buf.owner < 0, best_empty = best.owner < 0;
      if ((empty && !best_empty) || (empty == best_empty && buf.last_use < best.last_use)) {
        chosen = static_cast<int>(b);
      }
    }
    if (chosen < 0) return absl::InternalError("sharded weights: no free gather buffer");
  }
  Buffer& buf = buffers_[static_cast<size_t>(chosen)];
  const Group& grp = groups_[static_cast<size_t>(group)];
  buf.owner = group;
  const int64_t shard = grp.padded / comm_->world_size();
  buf.pending = comm_->AllGather(buf.data.data(), shards_.view(grp.shard_slot).data, shard,
                                 Purpose::kPurposeFrozenGather);
  ++gathers_;
  return absl::OkStatus();
}

absl::Status ShardedWeights::Complete(int b) {
  Buffer& buf = buffers_[static_cast<size_t>(b)];
  if (!buf.pending) return absl::OkStatus();
  absl::Status s = buf.pending->Wait(options_.timeout);
  buf.pending.reset();
  if (!s.ok()) {
    buf.owner = -1;
    broken_ = s;
  }
  return s;
}

void ShardedWeights::Prefetch(int group) {
  if (!broken_.ok() || group < 0 || group >= static_cast<int>(groups_.size())) return;
  if (BufferFor(group) >= 0) return;
  if (group == kEdgeGroup && buffers_[0].in_use) return;
  // A failure surfaces at the next Acquire.
  absl::Status s = StartGather(group);
  if (!s.ok()) broken_ = s;
}

absl::Status ShardedWeights::Acquire(int group) {
  RETURN_IF_ERROR(broken_);
  int b = BufferFor(group);
  if (b < 0) {
    RETURN_IF_ERROR(StartGather(group));
    b = BufferFor(group);
  }
  RETURN_IF_ERROR(Complete(b));
  Buffer& buf = buffers_[static_cast<size_t>(b)];
  buf.in_use = true;
  buf.last_use = ++clock_;
  const Group& grp = groups_[static_cast<size_t>(group)];
  for (size_t i = 0; i < grp.params.size(); ++i) {
    grp.params[i]->value.data =
        reinterpret_cast<float*>(reinterpret_cast<char*>(buf.data.data()) + grp.offsets[i]);
  }
  return absl::OkStatus();
}

void ShardedWeights::Release(int group) {
  const int b = BufferFor(group);
  if (b >= 0) buffers_[static_cast<size_t>(b)].in_use = false;
  // Views stay pointing at the buffer; they are only valid until the buffer
  // is reused, and the model only touches them between Acquire and Release.
}

}  // namespace sheaf::dist
