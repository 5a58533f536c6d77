// The pieces of a `reclora` job (proto RecLoraJob), shared by its recipe
// (recipe.cc), `sheaf reclora export-user` and the tests: the ratings, the
// recommender, the prompt, the LLM with its meta-LoRA bank and gates, and
// one batch through all of them.
//
// Prompt (byte tokenizer: ids 0..255 are bytes, 256 BOS, 257 EOS pads):
//   BOS "User: <user feature values>. Rated: <title>:<rating>, ... (the last
//   k items). Likes <target title>? yes or no:"
// The answer is the next byte: 'y' (121) for yes, 'n' (110) for no. The
// shipped model (models/tiny-en) is byte-level, so "yes"/"no" have no token
// of their own; their first bytes differ and are what is read. The
// selected-rows head reads the two columns {n, y} at each sample's last
// prompt row, so p(yes) = softmax([logit(n), logit(y)])[1] and the loss is
// the cross-entropy of the answer alone. Titles are cut to title_chars; when
// a prompt is longer than the model's positions, the oldest history items
// are dropped until it fits (InvalidArgument if none fits).
//
// One batch (RunBatch): the frozen CRM reads the samples (history crm.history)
// → gate input (its final hidden layer, or user_reps) → gates → per-sample
// mixture of the bank (rows_per_group = the batch's padded length) → the
// model → selected-rows head.
#ifndef SHEAF_JOBS_RECLORA_PARTS_H_
#define SHEAF_JOBS_RECLORA_PARTS_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/crm/ctr_data.h"
#include "core/crm/din.h"
#include "core/crm/gate.h"
#include "core/crm/metrics.h"
#include "core/lora.h"
#include "core/model.h"
#include "dist/communicator.h"
#include "jobs/build.h"
#include "proto/job_spec.pb.h"

namespace sheaf::reclora {

inline constexpr int32_t kAnswerNo = 'n';   // 110
inline constexpr int32_t kAnswerYes = 'y';  // 121
inline constexpr int32_t kBos = 256, kPad = 257;

// The prompt's text for sample `s` with the last `k` history items, cut to
// fit `max_tokens` (BOS included).
absl::StatusOr<std::string> PromptText(const crm::CtrData& data, const crm::CtrSample& s, int k,
                                       int title_chars, int max_tokens);

struct Parts {
  proto::JobSpec spec;  // defaults applied
  crm::CtrData data;
  std::unique_ptr<crm::Din> crm;
  jobs::ModelParts llm;  // model (+ shards)
  ModelConfig config;
  // The bank (num_experts = N), or a plain adapter when plain_lora.
  std::unique_ptr<LoraAdapter> bank;
  std::unique_ptr<crm::GateBank> gates;  // null when plain_lora
  // Few2Many: the LLM's training samples (a seeded subset of train).
  std::vector<crm::CtrSample> subset;
  AdapterMixing mixing = AdapterMixing::kAdapterMixingWeights;
  bool user_reps = false;
  int gate_in_dim = 0;
};

// Reads the atomic files, builds the CtrData, the CRM (initialised, not
// trained: see TrainOrLoadCrm), the model with its frozen weights, bank and
// gates. Errors name the spec field.
absl::StatusOr<std::unique_ptr<Parts>> BuildParts(const proto::JobSpec& spec,
                                                  dist::Communicator* comm,
                                                  int64_t gather_budget_bytes);

struct BatchResult {
  LossStats stats;
  std::vector<float> p_yes;  // per sample
};
// Runs `samples` through CRM → gates → model. training applies dropout and
// keeps what Backward needs; backward then runs Model::Backward(grad_scale)
// and the gates' backward.
absl::StatusOr<BatchResult> RunBatch(Parts& parts, std::span<const crm::CtrSample> samples,
                                     bool training, uint64_t dropout_seed, bool backward,
                                     float grad_scale);

// The gate input of `samples` from the frozen CRM ([n, gate_in_dim]).
absl::StatusOr<std::vector<float>> GateInput(Parts& parts,
                                             std::span<const crm::CtrSample> samples);

// p(yes) of every sample (batches of batch_size) and the metrics.
absl::StatusOr<crm::BinaryMetrics> EvaluateLlm(Parts& parts,
                                               std::span<const crm::CtrSample> samples,
                                               int batch_size, std::vector<float>* p_yes = nullptr);

// Loads what a finished job wrote into output_dir: crm.sheafckpt and
// reclora/{bank,gates}.safetensors (or adapter/ for plain_lora: not
// supported here, Unimplemented). Errors name the file.
absl::Status LoadTrainedState(Parts& parts, const std::string& output_dir);

// A user's sample "now": every interaction of theirs is history (the
// target is their latest item). InvalidArgument naming the user when they
// are unknown or have no interaction left after filtering.
absl::StatusOr<crm::CtrSample> UserNowSample(const Parts& parts, const std::string& user_id);
absl::StatusOr<crm::CtrSample> UserNowSample(const Parts& parts, int32_t user);

// The gate rows (per gate, N weights) of `user` from the user_reps gate on
// their whole history. FailedPrecondition unless gate_input is user_reps
// (the crm_final gate depends on the target item: there is no per-user
// adapter to export).
absl::StatusOr<std::vector<std::vector<float>>> UserGateRows(Parts& parts, int32_t user);

// The user's mixed adapter as a plain adapter (crm::MixBank over
// UserGateRows): what `sheaf reclora export-user` writes in PEFT layout.
absl::StatusOr<std::unique_ptr<LoraAdapter>> ExportUserAdapter(Parts& parts, int32_t user);

// p(yes) of `s` under the mixture with the gate frozen at its user's
// UserGateRows (user_adapter null), or under `user_adapter` alone: the two
// must agree (the export check).
absl::StatusOr<float> PredictWithUserGate(Parts& parts, const crm::CtrSample& s,
                                          const LoraAdapter* user_adapter);

// The first `n` (0 = all) of a seeded shuffle of `samples`.
std::vector<crm::CtrSample> SeededSubset(const std::vector<crm::CtrSample>& samples, int64_t n,
                                         uint64_t seed);

}  // namespace sheaf::reclora

#endif  // SHEAF_JOBS_RECLORA_PARTS_H_
