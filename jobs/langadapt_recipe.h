// The `langadapt` recipe (proto LangAdaptJob; docs/langadapt.md): languages
// are added to a base model one after another, each a phase of
// steps_per_language optimizer steps over that language's raw text only
// (no replay), and every language (supported and added) is evaluated
// before the first phase and after every phase: the phase x language
// matrix.
//
// Methods:
//   layra      LoRA on the selected first and last layers (LangAdaptLayers)
//   lora       LoRA on every layer
//   cpt        every weight trains (norms and biases without weight decay,
//              as the pretrain recipe does)
//   layer_cpt  every weight of the selected layers trains; the rest
//              (embeddings, other layers, final norm) stays frozen
// Between languages (layra, lora): `merge` adds the finished adapter into
// the model (Model::ApplyAdapter, coefficient 1: exactly `sheaf merge`) and
// starts a fresh adapter; `stack` keeps the finished adapters frozen under
// the new trainable one (AdapterPlan::AddFrozenAdapter) and the frozen base
// never changes. cpt / layer_cpt continue with the trained weights.
//
// Each phase has its own warmup + cosine schedule, a freshly initialised
// adapter (init seed from (seed, phase)), fresh AdamW moments, its own data
// cursor and dropout stream. Steps are counted over the whole job (phase p
// holds steps [p·S, (p+1)·S)), so a checkpoint at any step resumes inside
// its phase bit for bit: a checkpoint holds the trainable tensors (the
// current adapter, or the model's trainable weights), every finished
// adapter, the optimizer, the phase count, one cursor per language and the
// matrix so far. A merged base is rebuilt on resume by applying the
// finished adapters to the base in order, which is the same arithmetic.
//
// The matrix row of a stage is the evaluation of that stage's model as a
// plain model (merge and stack: the base with the finished adapters
// merged, the model `sheaf merge` writes; cpt: the trained weights),
// through jobs/evaluation with each language's val text packed as `sheaf
// eval` packs it (seq_len, seed 0), so a separate `sheaf eval` of an
// exported stage reproduces the row. Losses are nats per byte (the byte
// tokenizer).
//
// Files (rank 0): langadapt_matrix.json and langadapt_matrix.md (after
// every phase), adapters/<name>/ (PEFT, per added language, for layra and
// lora), stages/<p>-<name>/ (keep_stage_models), model/ (the final merged
// model), instruct_model/ (instruction_residual), metrics.jsonl (per step:
// step, phase, loss, ...; per phase: val_loss/<lang>), summary.json
// (forgetting and gain), spec.yaml, checkpoints/. Heartbeats carry
// val_loss/<lang> of the latest row and `phase` (TrainProgress::metrics).
//
// Worlds: every rank holds the whole model (frozen weights are not
// sharded, since a merge changes them); trainable gradients are summed
// over the world before clipping.
//
// Driven from one thread; RequestStop() may be called from any thread.
#ifndef SHEAF_JOBS_LANGADAPT_RECIPE_H_
#define SHEAF_JOBS_LANGADAPT_RECIPE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "jobs/build.h"
#include "jobs/metrics.h"
#include "jobs/recipe.h"
#include "jobs/state.h"
#include "jobs/train_loop.h"
#include "jobs/world_sync.h"
#include "proto/job_spec.pb.h"

namespace sheaf::jobs {

// The decoder layers a method trains, sorted, for a model of `num_layers`
// layers. layra without a selection: the first max(1, round(0.30·L)) and the
// last max(1, round(0.06·L)) layers; layer_cpt without one: n = 2·⌊L·f/2⌋
// (at least 2, at most L) split equally between front and back; lora and
// cpt: every layer. InvalidArgument naming the field for a layer >= L or a
// selection larger than the model.
absl::StatusOr<std::vector<int>> LangAdaptLayers(const proto::LangAdaptJob& job, int num_layers);

// Loss by phase and language. Row 0 is the base ("base"), row p+1 the model
// after the p-th added language ("+nl"); columns are the supported
// languages, then the added ones, in spec order.
struct LangAdaptMatrix {
  std::vector<std::string> languages;
  std::vector<std::string> rows;
  std::vector<std::vector<double>> loss;  // [row][column]
  int num_supported = 0;

  int Column(const std::string& language) const;
  // JSON: {"unit", "languages", "rows", "loss", "forgetting", "gain", ...}.
  std::string ToJson(const std::string& method) const;
  // A Markdown table of the losses plus the summary lines.
  std::string ToMarkdown(const std::string& method) const;
  // Forgetting: mean over the supported languages of loss(last row) −
  // loss(base) (> 0: forgot). Gain: mean over the added languages of
  // loss(row before it was added) − loss(row after) (> 0: learnt).
  // Both need the rows; NaN when the matrix has none after the base.
  double MeanSupportedForgetting() const;
  double MeanGain() const;
  // Bytes for checkpoints, and back (the shape must match).
  std::string Encode() const;
  absl::Status Decode(std::string_view bytes);
};

class LangAdaptRecipe : public Recipe {
 public:
  LangAdaptRecipe();
  ~LangAdaptRecipe() override;

  absl::Status Setup(const proto::JobSpec& spec) override;
  absl::StatusOr<int64_t> LoadCheckpoint() override;
  absl::StatusOr<TrainResult> Train(int64_t start_step) override;
  absl::Status SaveCheckpoint(int64_t step) override;
  absl::Status Export(TrainResult* result) override;
  absl::Status Cleanup(const TrainResult& result) override;
  void RequestStop() override { stop_.store(true); }
  int64_t total_steps() const override { return total_steps_; }
  const proto::JobSpec& spec() const override { return spec_; }

  // For tests.
  int64_t steps_per_language() const { return steps_per_language_; }
  const std::vector<int>& layers() const { return layers_; }
  const LangAdaptMatrix& matrix() const { return matrix_; }
  Model& model() { return *model_; }
  LoraAdapter* current_adapter() { return current_.get(); }
  // Finished adapters (valid for the phases done), one per added language.
  const std::vector<std::unique_ptr<LoraAdapter>>& finished_adapters() const { return finished_; }
  int64_t phases_done() const { return phases_done_; }
  // Called after every optimizer step (global step count) before the stop
  // check; a test may call RequestStop() from it.
  void set_after_step(std::function<void(int64_t step)> fn) { after_step_ = std::move(fn); }
  // Called at the end of every phase, after the merge, with the stage's
  // evaluation model (stack: the merged copy; otherwise the model).
  void set_after_phase(std::function<void(int64_t phase, Model& stage)> fn) {
    after_phase_ = std::move(fn);
  }

 private:
  bool lora_method() const;
  bool stack() const;
  absl::Status BuildLanguages(const ModelConfig& config);
  // Fresh adapter init and optimizer moments for phase `phase`; a new loop.
  absl::Status StartPhase(int64_t phase, bool fresh);
  absl::Status EndPhase(int64_t phase);
  absl::Status EvaluateRow(Model& model, const std::string& label);
  // The stage model of a stack run: base + every finished adapter merged.
  absl::StatusOr<std::unique_ptr<Model>> MergedCopy(int64_t adapters) const;
  absl::Status WriteMatrixFiles() const;
  absl::Status WriteSpecFile() const;
  absl::Status ReduceGradients();
  MetricValues MatrixMetrics() const;

  proto::JobSpec spec_;
  ModelConfig config_;
  std::vector<int> layers_;
  int64_t steps_per_language_ = 0;
  int64_t total_steps_ = 0;
  std::unique_ptr<Tokenizer> tokenizer_;
  // Per added language: its train/val dataset; per language (supported then
  // added): the evaluation dataset (val text as `sheaf eval` packs it).
  std::vector<std::unique_ptr<Dataset>> train_sets_;
  std::vector<std::unique_ptr<Dataset>> eval_sets_;
  std::vector<DataCursor> cursors_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<LoraAdapter> current_;                // layra / lora
  std::vector<std::unique_ptr<LoraAdapter>> finished_;  // one per added language
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<WorldSync> world_;
  std::unique_ptr<TrainLoop> loop_;
  int64_t loop_phase_ = -1;
  std::unique_ptr<MetricsSink> metrics_;
  CheckpointState state_;
  LangAdaptMatrix matrix_;
  int64_t step_ = 0;
  int64_t phases_done_ = 0;
  int64_t skipped_steps_ = 0;
  std::function<void(int64_t)> after_step_;
  std::function<void(int64_t, Model&)> after_phase_;
  std::atomic<bool> stop_{false};
};

}  // namespace sheaf::jobs

#endif  // SHEAF_JOBS_LANGADAPT_RECIPE_H_
