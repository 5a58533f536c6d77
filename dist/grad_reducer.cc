#include "dist/grad_reducer.h"

#include <algorithm>
#include <cstring>

#include "core/status.h"

namespace sheaf::dist {

absl::StatusOr<std::unique_ptr<GradReducer>> GradReducer::Create(Model* model, LoraAdapter* adapter,
                                                                 Communicator* comm,
                                                                 const Options& options) {
  std::unique_ptr<GradReducer> r(new GradReducer(model, comm, options));
  const int L = model->config().num_layers;
  // Backward finishes groups in this order: layers L-1 .. 0, then the edges.
  std::vector<int> order;
  for (int l = L - 1; l >= 0; --l) order.push_back(LayerGroup(l));
  order.push_back(kEdgeGroup);
  r->order_pos_.assign(static_cast<size_t>(model->num_groups()), 0);
  for (size_t i = 0; i < order.size(); ++i) r->order_pos_[static_cast<size_t>(order[i])] = static_cast<int>(i);
  r->done_.assign(static_cast<size_t>(model->num_groups()), false);

  // Segments in backward order: within a group, adapter modules then base
  // tensors, in their fixed creation order.
  std::vector<Segment> segs;
  for (int g : order) {
    if (adapter != nullptr) {
      auto add_module = [&](LoraModule* m) {
        if (m == nullptr) return;
        segs.push_back({m->da.data, m->da.numel(), g});
        segs.push_back({m->db.data, m->db.numel(), g});
      };
      if (g == kEdgeGroup) {
        add_module(adapter->lm_head());
      } else {
        for (int p = 0; p < kNumProj; ++p) add_module(adapter->module(g - 1, static_cast<Proj>(p)));
      }
    }
    for (Param* p : model->GroupParams(g)) {
      if (p->trainable()) segs.push_back({p->grad.data, p->grad.numel(), g});
    }
  }
  const int64_t cap = std::max<int64_t>(1, options.bucket_cap_bytes / 4);
  for (const Segment& s : segs) {
    if (r->buckets_.empty() || (r->buckets_.back().elements > 0 && r->buckets_.back().elements + s.count > cap)) {
      r->buckets_.emplace_back();
    }
    Bucket& b = r->buckets_.back();
    b.segments.push_back(s);
    b.elements += s.count;
    b.last_group_pos = std::max(b.last_group_pos, r->order_pos_[static_cast<size_t>(s.group)]);
    r->total_elements_ += s.count;
  }
  for (Bucket& b : r->buckets_) b.staging.resize(static_cast<size_t>(b.elements));
  model->set_grad_listener(r.get());
  return r;
}

GradReducer::~GradReducer() {
  for (Bucket& b : buckets_) {
    if (b.work) (void)b.work->Wait(options_.timeout);
  }
  if (model_) model_->set_grad_listener(nullptr);
}

void GradReducer::Launch(Bucket& b) {
  float* dst = b.staging.data();
  for (const Segment& s : b.segments) {
    std::memcpy(dst, s.grad, static_cast<size_t>(s.count) * sizeof(float));
    dst += s.count;
  }
  b.work = comm_->AllReduce(b.staging.data(), b.elements, ReduceOp::kReduceSum,
                            Purpose::kPurposeAdapterGrad);
  b.launched = true;
}

absl::Status GradReducer::OnGradsReady(int group) {
  if (!enabled_) return absl::OkStatus();
  done_[static_cast<size_t>(group)] = true;
  // Groups finish in backward order; launch buckets whose last group is done.
  while (groups_done_ < static_cast<int>(done_.size())) {
    int g = -1;
    for (size_t i = 0; i < order_pos_.size(); ++i) {
      if (order_pos_[i] == groups_done_) g = static_cast<int>(i);
    }
    if (g < 0 || !done_[static_cast<size_t>(g)]) break;
    ++groups_done_;
  }
  for (Bucket& b : buckets_) {
    if (!b.launched && b.last_group_pos < groups_done_) Launch(b);
  }
  return absl::OkStatus();
}

absl::Status GradReducer::Finish() {
  absl::Status status;
  for (Bucket& b : buckets_) {
    if (!b.launched) Launch(b);
  }
  for (Bucket& b : buckets_) {
    absl::Status s = b.work->Wait(options_.timeout);
    b.work.reset();
    b.launched = false;
    if (!s.ok()) {
      status.Update(s);
      continue;
    }
    const float* src = b.staging.data();
    for (const Segment& seg : b.segments) {
      std::memcpy(seg.grad, src, static_cast<size_t>(seg.count) * sizeof(float));
      src += seg.count;
    }
  }
  std::fill(done_.begin(), done_.end(), false);
  groups_done_ = 0;
  return status;
}

}  // namespace sheaf::dist
