// The Llama-family decoder with hand-written forward and backward (fp32
// activations; frozen weights f32, bf16 or NF4), computed by a Backend
// (core/backend.h; the CPU one lives in ops/cpu).
//
//   x0 = embed[tokens]
//   per layer l:  h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1)))
//                 x' = h + down_proj(silu(gate_proj(n2)) * up_proj(n2))
//                 with n1 = rmsnorm(x), n2 = rmsnorm(h)
//   h_final = rmsnorm(x_L)           (the trunk ends here)
//   loss head: logits = lm_head(h_final) (lm_head = embedᵀ when tied) and
//              cross-entropy over targets != kIgnoreIndex (the LM head), or
//              the selected-rows head (LossHead): a few rows, a few
//              vocabulary columns, never the [B*T, V] logits
//
// Every projection (and lm_head) adds what an AdapterPlan lists for it
// (core/adapter_plan.h): plain LoRA, stacked frozen + trainable adapters, or
// gated mixtures of K experts; Forward(..., LoraAdapter*, ...) is the K = 1
// plan of one adapter.
//
// Which base tensors are trainable is decided per tensor at creation (by HF
// tensor name): trainable ones live in the params arena with a same-layout
// grads arena; the rest live in the frozen arena and never get a gradient
// buffer, so no dW is ever computed for them. LoRA-only training is "nothing
// trainable + an adapter"; all-weights training is "everything trainable".
//
// Lifecycle: Create → load or init weights → Forward(training) → Backward →
// (optimizer) → ... Activations are planned for the largest (B, T) seen and
// reused. Not thread-safe: one model per training thread (the backend's
// kernels use their own threads internally).
#ifndef SHEAF_CORE_MODEL_H_
#define SHEAF_CORE_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/adapter_plan.h"
#include "core/backend.h"
#include "core/dtype.h"
#include "core/lora.h"
#include "core/model_config.h"
#include "core/weights_check.h"
#include "core/safetensors.h"
#include "core/tensor.h"

namespace sheaf {

inline constexpr int kIgnoreIndex = -100;

// A base weight and, when trainable, its gradient.
struct Param {
  std::string name;  // Hugging Face name, e.g. model.layers.0.mlp.up_proj.weight
  Tensor value;
  Tensor grad;  // empty when frozen
  bool trainable() const { return static_cast<bool>(grad); }
};

struct LayerWeights {
  Param input_norm;           // (C)
  Param q, k, v, o;           // (NH*HD, C) (KVH*HD, C) (KVH*HD, C) (C, NH*HD)
  Param q_bias, k_bias, v_bias;  // (NH*HD) (KVH*HD) (KVH*HD), attention_bias only
  Param o_bias;               // (C), o_proj_bias only (Llama attention_bias)
  Param post_norm;            // (C)
  Param gate, up, down;       // (I, C) (I, C) (C, I)
  Param gate_bias, up_bias, down_bias;  // (I) (I) (C), mlp_bias only
  Param* proj(Proj p);
};

struct ModelWeights {
  Param embed;  // (V, C)
  std::vector<LayerWeights> layers;
  Param norm;     // (C)
  Param lm_head;  // (V, C); shares embed's storage (and grad) when tied
  // Every distinct tensor (tied lm_head listed once, as embed).
  std::vector<Param*> all();
};

// The loss head that takes over after the trunk's final hidden states.
struct LossHead {
  enum class Kind {
    kLossHeadLm,            // logits [B*T, V], cross-entropy per token
    kLossHeadSelectedRows,  // logits [M, J] = h[rows] · lm_head[cols]ᵀ
  };
  Kind kind = Kind::kLossHeadLm;
  // kLossHeadSelectedRows: rows of the B*T batch rows (M), vocabulary
  // columns (J), and per selected row a target in [0, J) or kIgnoreIndex
  // (a yes/no classifier: the answer row of each sample, the "yes" and "no"
  // token ids, target 0 or 1).
  std::vector<int32_t> rows, cols, targets;

  static LossHead Lm() { return LossHead{}; }
  static LossHead SelectedRows(std::vector<int32_t> rows, std::vector<int32_t> cols,
                               std::vector<int32_t> targets);
};

struct LossStats {
  double loss_sum = 0;  // summed token cross-entropy
  int64_t tokens = 0;   // targets != kIgnoreIndex
  double mean() const { return tokens ? loss_sum / static_cast<double>(tokens) : 0.0; }
};

// CheckWeightsMatchConfig: core/weights_check.h (included above).

// PEFT adapters may carry copies of base weights (LoraAdapter::base_copies);
// PEFT loads them over the base, so one that differs from `model`'s weight
// is InvalidArgument naming it (equal copies are harmless).
absl::Status CheckAdapterBaseCopies(const class Model& model, const LoraAdapter& adapter);

using TrainablePredicate = std::function<bool(const std::string& hf_name)>;

// Groups of base tensors that are used together: group 0 holds the "edges"
// (embedding, final norm, untied lm_head), group l+1 the tensors of layer l.
inline int LayerGroup(int layer) { return layer + 1; }
inline constexpr int kEdgeGroup = 0;

// Supplies the frozen base tensors of a group on demand, for worlds where
// each rank stores only a shard of them (dist::ShardedWeights). Acquire
// makes the group's frozen Param views valid until Release; Prefetch is a
// hint that `group` will be acquired next, so its gather can overlap the
// current computation. The model calls these in the same order on every rank.
class FrozenWeightSource {
 public:
  virtual ~FrozenWeightSource() = default;
  virtual absl::Status Acquire(int group) = 0;
  virtual void Prefetch(int group) = 0;
  virtual void Release(int group) = 0;
};

// Told during Backward when every trainable gradient of a group (the LoRA
// modules and trainable base tensors of a layer, or of the edges) is final,
// so a gradient reducer can start communicating it while backward goes on.
class GradReadyListener {
 public:
  virtual ~GradReadyListener() = default;
  virtual absl::Status OnGradsReady(int group) = 0;
};

struct ModelOptions {
  // When true the frozen tensors get no storage here: a FrozenWeightSource
  // provides them (sharded worlds). Trainable tensors always live here.
  bool external_frozen = false;
  // Where the model computes and allocates; null = DefaultBackend() (link
  // //ops/cpu:ops for the CPU backend). Not owned; must outlive the model.
  Backend* backend = nullptr;
  // Storage of the frozen matrices (projections, embedding, untied head):
  // f32, or bf16 (half the memory; a bf16 file is then read without
  // widening, and the backend computes in fp32 tile by tile). Norms and
  // biases stay f32. nf4 (QLoRAM): the layers' projection matrices (q, k, v,
  // o, gate, up, down) in NF4 blocks of 64 with double-quantised scales
  // (core/quant/nf4.h; 36 bytes per 64 weights in memory, ~1/7 of f32),
  // quantised on load from an f32/bf16/f16 file; the backend dequantises
  // tile by tile in forward and dX. Embedding, lm_head, norms and biases
  // stay f32. Save() writes the dequantised values as F32.
  DType frozen_dtype = DType::kDTypeF32;
  // Fused projections: q/k/v (and gate/up) of a layer run as one GEMM over
  // the logical [Wq;Wk;Wv] together with their LoRA A matrices, forward and
  // backward (dX as one GEMM over [dq dk dv g] · [Wq;Wk;Wv;A], written with
  // beta = 0 instead of zero-then-accumulate); o and down fuse with their
  // own A the same way. The weights stay separate tensors (no copy: a
  // sharded world's gathered views fuse as they are). A group fuses when
  // every member is a frozen f32 matrix without bias and carries at most one
  // plain LoRA entry without dropout; anything else runs per projection.
  // Same losses and gradients as false within fp32 reassociation.
  bool fuse_projections = true;
  // compute: f32, or bf16 (the spec's train.compute): the frozen layer
  // projections (q, k, v, o, gate, up, down; storage f32 or bf16) multiply
  // as bf16 x bf16 with fp32 accumulation (AVX512_BF16 where the processor
  // has it), their input activations (and, in backward, the output
  // gradients) rounded to bf16 at the GEMM input. Adapters, trainable base
  // weights, lm_head / embeddings, norms, softmax and the optimizer stay
  // fp32. Refused (naming the field) with nf4 storage and on backends
  // without SupportsBf16Compute().
  DType compute = DType::kDTypeF32;
};
inline bool NothingTrainable(const std::string&) { return false; }
inline bool EverythingTrainable(const std::string&) { return true; }

class Model {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Create(
      const ModelConfig& config, const TrainablePredicate& trainable,
      const ModelOptions& options = {});

  // Optional hooks (not owned; null = none). See the interfaces above.
  void set_frozen_source(FrozenWeightSource* source) { frozen_source_ = source; }
  void set_grad_listener(GradReadyListener* listener) { grad_listener_ = listener; }
  // The base tensors of a group (frozen and trainable), in a fixed order.
  std::vector<Param*> GroupParams(int group);
  int num_groups() const { return config_.num_layers + 1; }

  // Reads every base tensor from a model dir (model.safetensors or index).
  // Missing tensors and shape mismatches are errors naming the tensor.
  absl::Status LoadWeights(const std::string& dir);
  // Normal(0, std) for matrices, ones for norms, zeros for biases.
  void InitRandom(uint64_t seed, float std);
  // Writes config.json + model.safetensors into dir (created if missing).
  // Matrices keep their storage dtype (bf16 frozen weights stay BF16; NF4
  // ones are written dequantised, as F32),
  // norms and biases are F32. Also writes generation_config.json when the
  // config knows BOS or EOS.
  absl::Status Save(const std::string& dir) const;
  // As Save, with EVERY tensor written in `file_dtype` (F32, BF16 or F16;
  // as transformers' save_pretrained of a model in that dtype), and
  // config.json's torch_dtype saying so.
  absl::Status Save(const std::string& dir, SafetensorsDtype file_dtype) const;
  // As Save(dir, file_dtype), in shards of at most max_shard_bytes of
  // tensor data when the whole is larger (a tensor larger than that gets a
  // shard of its own), as transformers' save_pretrained(max_shard_size):
  // model-00001-of-0000N.safetensors ... and model.safetensors.index.json
  // ({"metadata": {"total_size"}, "weight_map"}). One file when it fits.
  absl::Status Save(const std::string& dir, SafetensorsDtype file_dtype,
                    int64_t max_shard_bytes) const;

  // Runs the model on tokens [B*T] with the adapter plan's entries on the
  // projections, then the loss head. With the LM head, targets [B*T] (may be
  // null for logits only) give the loss; the selected-rows head carries its
  // own targets (targets must then be null). training = true keeps what
  // Backward needs and applies the entries' dropout. The plan is copied
  // (views): what it views must live until the matching Backward.
  // InvalidArgument for tokens, targets, head indices or plan entries that do
  // not fit the model (naming them).
  absl::StatusOr<LossStats> Forward(const int32_t* tokens, const int32_t* targets, int B,
                                    int T, const AdapterPlan& plan, bool training,
                                    const LossHead& head = LossHead::Lm());
  // The plan of one adapter (AdapterPlan::ForAdapter; null = none): today's
  // behaviour, bit for bit.
  absl::StatusOr<LossStats> Forward(const int32_t* tokens,
                                    const int32_t* targets, int B, int T,
                                    LoraAdapter* adapter, bool training);
  // Accumulates gradients of (grad_scale * summed loss of the last training
  // Forward) into the trainable base grads and the plan's trainable entries
  // (adapter factors and gates). Use grad_scale = 1 / (valid targets in the
  // whole optimizer step).
  absl::Status Backward(float grad_scale);

  // Incremental decoding (sheaf generate): a KV cache holds, per layer, the
  // post-RoPE keys and the values of every position seen so far, and
  // ForwardCached runs only the new tokens [n] of one sequence (B = 1)
  // against it: positions cache.len .. cache.len + n - 1, causal within the
  // new block, attending to everything cached. logits() then holds [n, V].
  // The cache is filled from position 0 (the prompt as one block, then one
  // token per step) and is valid for one adapter: changing the adapter
  // needs a new cache. Host backends only (FailedPrecondition otherwise);
  // InvalidArgument past max_len, max_position_embeddings or the sliding
  // window, and for tokens outside the vocabulary.
  struct KvCache {
    int max_len = 0;
    int len = 0;                          // positions filled
    std::vector<std::vector<float>> k, v;  // per layer [max_len, KVH*HD]
    std::vector<float> cos, sin;          // RoPE tables [max_len, HD/2]
  };
  absl::StatusOr<KvCache> NewKvCache(int max_len) const;
  absl::Status ForwardCached(const int32_t* tokens, int n, LoraAdapter* adapter, KvCache& cache);

  // logits [B*T, V] of the last Forward with the LM head (null after one
  // with the selected-rows head, which never forms them).
  const float* logits() const { return act_.logits.data; }
  // logits [M, J] of the last Forward with the selected-rows head.
  const float* selected_logits() const { return act_.sel_logits.data; }

  // Model arithmetic: W += coefficient · s · B·A for every module of
  // `adapter` (s = the module's own scale). FailedPrecondition for sharded or
  // bf16 frozen weights, a bank (its mixture needs a gate), or a LoRA on
  // lm_head with tied embeddings (it would change the input embeddings too).
  absl::Status ApplyAdapter(const LoraAdapter& adapter, float coefficient);
  // ApplyAdapter with +1 and -1.
  absl::Status MergeAdapter(const LoraAdapter& adapter);
  absl::Status UnmergeAdapter(const LoraAdapter& adapter);

  const ModelConfig& config() const { return config_; }
  Backend* backend() const { return backend_; }
  ModelWeights& weights() { return weights_; }
  const ModelWeights& weights() const { return weights_; }
  Arena& frozen_arena() { return frozen_; }
  Arena& params_arena() { return params_; }
  Arena& grads_arena() { return grads_; }
  void ZeroGrads() { grads_.Zero(); }
  int64_t activation_bytes() const { return acts_.bytes() + scratch_.bytes(); }

 private:
  explicit Model(const ModelConfig& config) : config_(config) {}
  absl::Status SaveImpl(const std::string& dir, std::optional<SafetensorsDtype> all,
                        int64_t max_shard_bytes = 0) const;  // 0: one file
  // Plans activations for (B, T), the plan's layout and the head; keeps the
  // current plan when it fits.
  void PlanActivations(int B, int T, const AdapterPlan& plan, const LossHead& head);
  absl::Status CheckHead(const LossHead& head, int64_t N) const;
  SelectedRowsArgs HeadArgs(const LossHead& head, int64_t N) const;
  // Embedding, layers, final norm (into act_.nf) under last_plan_; leaves
  // the edge group acquired for the head.
  // With a cache (B = 1, no training): RoPE at the cache's positions and
  // attention over the cached keys and values (ForwardCached).
  absl::Status ForwardTrunk(const int32_t* tokens, int B, int T, bool training,
                            bool will_backward, KvCache* cache = nullptr);
  // The adapter's K = 1 plan into last_plan_ (cached per adapter).
  absl::Status UseAdapterPlan(LoraAdapter* adapter);
  // RoPE tables [T, HD/2] for positions 0..T-1 (scaled on the host).
  void FillRopeTables(float* cos, float* sin, int64_t T) const;
  // lm_head entries of last_plan_ on the selected rows and columns.
  void SelectedHeadEntriesForward(const LossHead& head, bool training);
  void SelectedHeadEntriesBackward(const LossHead& head);
  // An entry's op arguments on the selected rows/columns; gathers its B_cat
  // rows (and gate rows) into scratch.
  LoraOpArgs SelectedEntryArgs(const AdapterEntry& e, const LossHead& head);

  struct LayerActs {
    Tensor x;          // (B*T, C) layer input (residual stream)
    Tensor n1, rstd1;  // (B*T, C), (B*T)
    Tensor q, k, v;    // (B*T, NH*HD) (B*T, KVH*HD) (B*T, KVH*HD), q/k after RoPE
    Tensor attn_saved;  // backend-defined attention state (AttentionSavedBytes)
    Tensor att;        // (B*T, NH*HD)
    Tensor h;          // (B*T, C) residual after attention
    Tensor n2, rstd2;  // (B*T, C), (B*T)
    Tensor gate, up, act;  // (B*T, I) each; act = silu(gate)*up
    // Per projection, per plan entry: x·A_catᵀ (B*T, K*R) and, with dropout,
    // the mask (B*T, in) holding 0 or 1/(1-p) (empty without dropout).
    std::array<std::vector<Tensor>, kNumProj> lora_xa, lora_mask;
  };
  struct Acts {
    std::vector<LayerActs> layers;
    Tensor x_final;            // (B*T, C) output of the last layer
    Tensor nf, rstdf;          // (B*T, C), (B*T)
    Tensor logits;             // (B*T, V), LM head only
    Tensor sel_logits;         // (M, J), selected-rows head only
    Tensor sel_h;              // (M, C) h[rows], with lm_head entries only
    std::vector<Tensor> head_xa, head_mask;  // lm_head entries
    Tensor cos, sin;           // (T, HD/2)
  };
  // Backward scratch: gradients of activations, reused across layers.
  struct Scratch {
    Tensor dx, dn;        // (B*T, C)
    Tensor dq, dk, dv, datt;  // (B*T, maxNH*HD) / (B*T, maxKVH*HD)
    Tensor dgate, dup, dact;  // (B*T, maxI)
    Tensor dlogits;       // (B*T, V), LM head only
    Tensor sel_dlogits;   // (M, J), selected-rows head only
    Tensor head_scratch;  // selected-rows head's gathers
    // lm_head entries under the selected-rows head: gathered B_cat rows
    // (J, maxKR) and their gradient, gathered gate rows (M, maxK) and theirs,
    // d h[rows] (M, C).
    Tensor sel_b, sel_db, sel_gate, sel_dgate, sel_dh;
    Tensor lora_scratch;  // the adapter op's scratch (largest entry)
    Tensor lora_tmp;      // (B*T, max(in)) dropout path / masked input
    Tensor fused_g;       // (B*T, Σ K·R of a fused group): scale · dy · B per entry
  };

  ModelConfig config_;
  Backend* backend_ = nullptr;  // not owned
  Arena frozen_{ArenaKind::kArenaFrozen};
  Arena params_{ArenaKind::kArenaParams};
  Arena grads_{ArenaKind::kArenaGrads};
  Arena acts_{ArenaKind::kArenaActivations};
  Arena scratch_{ArenaKind::kArenaActivations};
  ModelWeights weights_;
  Acts act_;
  Scratch scr_;
  absl::Status AcquireGroup(int group);
  void ReleaseGroup(int group);
  void PrefetchGroup(int group);
  absl::Status GradsReady(int group);

  FrozenWeightSource* frozen_source_ = nullptr;
  GradReadyListener* grad_listener_ = nullptr;
  bool edges_held_ = false;  // training Forward keeps group 0 for Backward
  int planned_B_ = 0, planned_T_ = 0;
  // AdapterPlan::Layout() + the head kind, and the head's planned M x J.
  std::vector<int32_t> planned_layout_;
  int planned_M_ = 0, planned_J_ = 0;
  // State of the last Forward, for Backward.
  std::vector<int32_t> last_tokens_copy_, last_targets_copy_;
  int last_B_ = 0, last_T_ = 0;
  AdapterPlan last_plan_;
  // last_plan_ is the K = 1 plan of the adapter with this instance_id (set
  // by the LoraAdapter* Forward, cleared when another plan is copied in).
  bool adapter_plan_cached_ = false;
  uint64_t cached_adapter_id_ = 0;
  LossHead last_head_;
  bool last_training_ = false;
  bool fuse_projections_ = true;  // ModelOptions::fuse_projections
  bool bf16_compute_ = false;     // ModelOptions::compute == bf16
};

}  // namespace sheaf

#endif  // SHEAF_CORE_MODEL_H_
