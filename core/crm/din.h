// DIN (Zhou et al., "Deep Interest Network for Click-Through Rate
// Prediction", KDD 2018) as RecLoRA's recommender uses it, with a
// hand-written backward.
//
// Legend: B samples, L history slots (padded), e embedding width, F fields,
// H attention hidden width, m1, m2 MLP widths (m2 = d_crm, the final hidden
// layer the reclora gate reads).
//
//   fields   E_f[b] = mean of table_f rows over the entity's tokens (F of
//            them: user_id, item_id (= t, the target), each .user column,
//            each .item column; an empty bag is the zero vector)
//   history  h_j = relu(W_h [item_emb(i_j) ⊕ rating_emb(r_j)] + b_h)  (2e→e),
//            item_emb shared with the item_id field
//   attention a_j = mask_j · (w_a2 relu(W_a1 [t, h_j, t−h_j, t⊙h_j] + b_a1) + b_a2)
//            (4e→H→1; no softmax, as DIN: the weights keep the intensity
//            of interest), mask_j = 1 for j < len
//   pooling  u = Σ_j a_j h_j
//   MLP      z1 = relu(W1 [E_1..E_F, u] + b1), z2 = relu(W2 z1 + b2),
//            logit = w3 z2 + b3
//   loss     Σ_b softplus(logit_b) − y_b logit_b   (summed BCE with logits)
//
// user_reps (the gate's per-user input option): [E_user_id, mean_{j<len} h_j].
//
// Parameters live in one params arena and one grads arena of the same layout
// (slot order = ParamNames()), so AdamW and checkpoints see single blocks.
// Lifecycle: Create → InitRandom or SetParams → (Forward → Backward →
// optimizer)*. Not thread-safe; the backend's kernels use their own threads.
#ifndef SHEAF_CORE_CRM_DIN_H_
#define SHEAF_CORE_CRM_DIN_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/backend.h"
#include "core/crm/ctr_data.h"
#include "core/optimizer.h"
#include "core/tensor.h"

namespace sheaf::crm {

struct DinConfig {
  int emb_dim = 16;     // e
  int att_hidden = 32;  // H
  int mlp1 = 200;       // m1
  int mlp2 = 80;        // m2 = d_crm
  float init_std = 0.05f;  // embeddings; linear layers use Kaiming-uniform
  absl::Status Validate() const;
  std::string ToString() const;
};

// The categorical inputs: per field, the token bag of every user or item.
struct DinField {
  std::string name;
  bool of_user = true;  // indexed by user (else by item)
  int vocab = 0;
  std::vector<std::vector<int32_t>> bags;  // per entity
};
struct DinInputs {
  int num_users = 0, num_items = 0, num_ratings = 0;
  std::vector<DinField> fields;  // the feature columns (ids are implicit)
};
// user_id and item_id fields come first implicitly; then dataset columns.
DinInputs DinInputsFrom(const CtrData& data);

// One batch: samples and their padded histories.
struct DinBatch {
  int B = 0, L = 0;
  std::vector<int32_t> user, item;        // (B)
  std::vector<int32_t> hist_item;         // (B, L), 0 in padding
  std::vector<int32_t> hist_rating;       // (B, L), 0 in padding
  std::vector<int32_t> hist_len;          // (B), 1..L
  std::vector<float> label;               // (B)
};
// The batch of `samples` with their last `history` events (L = the longest
// history among them, <= history).
DinBatch MakeDinBatch(const CtrData& data, std::span<const CtrSample> samples, int history);

class Din {
 public:
  // InvalidArgument for a bad config or inputs (an out-of-range token).
  static absl::StatusOr<std::unique_ptr<Din>> Create(const DinConfig& config,
                                                     DinInputs inputs,
                                                     Backend* backend = nullptr);

  // Embeddings Normal(0, init_std); linear weights Kaiming-uniform
  // (bound 1/sqrt(in)) and biases uniform in the same bound, as nn.Linear.
  void InitRandom(uint64_t seed);

  // Summed BCE of the batch (labels may be anything for inference). Keeps
  // what Backward needs. InvalidArgument for ids out of range.
  absl::StatusOr<double> Forward(const DinBatch& batch);
  // grads += grad_scale · d(summed loss of the last Forward) / d params.
  void Backward(float grad_scale);

  const std::vector<float>& logits() const { return logit_; }  // (B)
  // z2 of the last Forward: (B, mlp2).
  std::span<const float> final_hidden() const;
  // [E_user_id, mean h] of the last Forward: (B, 2e).
  std::vector<float> UserReps() const;
  int final_dim() const { return config_.mlp2; }
  int user_reps_dim() const { return 2 * config_.emb_dim; }

  const DinConfig& config() const { return config_; }
  const DinInputs& inputs() const { return inputs_; }
  Arena& params() { return params_; }
  Arena& grads() { return grads_; }
  const Arena& params() const { return params_; }
  void ZeroGrads() { grads_.Zero(); }
  // One ParamRef per slot (embeddings and biases without weight decay).
  std::vector<ParamRef> ParamRefs();
  std::vector<std::string> ParamNames() const;
  // "config ... ; slot shapes" — stored in checkpoints and compared on load.
  std::string Layout() const;

 private:
  Din(const DinConfig& config, DinInputs inputs, Backend* backend)
      : config_(config), inputs_(std::move(inputs)), backend_(backend) {}
  struct Slot {
    int index = 0;
    bool decay = false;
  };
  Tensor P(int slot) const { return params_.view(slot); }
  Tensor G(int slot) const { return grads_.view(slot); }

  DinConfig config_;
  DinInputs inputs_;
  Backend* backend_;
  Arena params_{ArenaKind::kArenaParams};
  Arena grads_{ArenaKind::kArenaGrads};
  // Slots.
  int user_emb_ = 0, item_emb_ = 0, rating_emb_ = 0;
  std::vector<int> field_emb_;
  int wh_ = 0, bh_ = 0, wa1_ = 0, ba1_ = 0, wa2_ = 0, ba2_ = 0;
  int w1_ = 0, b1_ = 0, w2_ = 0, b2_ = 0, w3_ = 0, b3_ = 0;
  std::vector<bool> decay_;

  // Activations of the last Forward.
  DinBatch batch_;
  std::vector<float> x0_;            // (B, D), D = (F + 1) e, F = 2 + fields
  std::vector<float> hin_, hpre_, h_;  // (B L, 2e), (B L, e), (B L, e)
  std::vector<float> ain_, apre_, ahid_, a_;  // (B L, 4e), (B L, H) x2, (B L)
  std::vector<float> z1pre_, z1_, z2pre_, z2_, logit_;  // (B, m1) x2, (B, m2) x2, (B)
};

}  // namespace sheaf::crm

#endif  // SHEAF_CORE_CRM_DIN_H_
