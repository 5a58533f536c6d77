// Recipes: one small class per job kind over the shared training parts
// (jobs/build, train_loop, world_sync, state, evaluation, metrics), and the
// registry the worker and `sheaf train` create them from. In the spirit of
// torchtune's recipes (CONVENTIONS.md): a recipe has a fixed life
//
//   Setup(spec)        build every part from the spec (nothing written to
//                      output_dir until all of it succeeded); prepare output_dir
//   LoadCheckpoint()   (resume only) restore the newest valid checkpoint
//   Train(step)        run from `step` to the end or a stop request, calling
//                      SaveCheckpoint as it goes (a recipe may run several
//                      phases here, hold several models, train tensors
//                      outside the model: jobs/recipe_interface_test.cc)
//   Export()           write the artifact (finished runs only)
//   Cleanup()          summary and anything else a finished run leaves
//
// and Run() walks it. A new kind is a new recipe registered under its
// JobSpec oneof case: an alwayslink cc_library whose static initialiser
// calls RecipeRegistry::Global().Register (jobs/lora_recipe.cc), added to
// //jobs:recipes.
//
// Thread-safety: a recipe is driven from one thread; RequestStop() may be
// called from any thread (a signal handler's, the lease keeper's). The
// registry is filled during static initialisation and read-only afterwards.
#ifndef SHEAF_JOBS_RECIPE_H_
#define SHEAF_JOBS_RECIPE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/optimizer.h"
#include "dist/communicator.h"
#include "proto/job_spec.pb.h"

namespace sheaf {

struct TrainProgress {
  int64_t step = 0;        // completed optimizer steps
  int64_t total_steps = 0;
  double loss = 0;         // mean train loss of the last step
  double val_loss = -1;    // last evaluation, < 0 if none yet
  double lr = 0;
  double grad_norm = 0;    // NaN / inf on a skipped step
  double tokens_per_s = 0;
  double eta_s = 0;
  int64_t skipped_steps = 0;  // steps skipped for a non-finite gradient norm
  // Recipe-specific figures for heartbeats and `sheaf status` (langadapt:
  // val_loss/<lang>, phase); names of [A-Za-z0-9_.:/-].
  std::map<std::string, double> metrics;
};

struct TrainerOptions {
  bool resume = false;  // continue from the newest valid checkpoint in output_dir
  bool quiet = false;   // no progress output on stderr
  std::function<void(const TrainProgress&)> on_progress;  // after every step (rank 0)
  // The world this rank belongs to (not owned); null = a world of one. With
  // N > 1 ranks, frozen base weights are sharded (dist::ShardedWeights),
  // trainable gradients all-reduced (dist::GradReducer), each rank reads
  // 1/N of every global batch (train.batch_size is global), and only rank 0
  // writes to output_dir.
  dist::Communicator* comm = nullptr;
  int64_t gather_budget_bytes = 0;        // ShardedWeights::Options
  int64_t bucket_cap_bytes = 4 << 20;     // GradReducer::Options
  // Where the run comes from, for the header of output_dir/spec.yaml (the
  // worker: "of job <id>"). The recipe owns spec.yaml and writes it.
  std::string spec_origin;
  // Tests: called with the step's reduced gradients before clipping (fault
  // injection, e.g. a non-finite gradient).
  std::function<void(int64_t step, const std::vector<ParamRef>& params)> inspect_gradients;
  // Storage of the frozen base weights (ModelOptions::frozen_dtype): f32
  // for every job kind; loram with quantize: nf4 trains on nf4.
  DType frozen_dtype = DType::kDTypeF32;
};

struct TrainResult {
  int64_t steps = 0;
  int64_t steps_this_run = 0;  // 0: resumed a run that had already finished
  double first_val_loss = -1;  // before any training step (step 0)
  double final_val_loss = -1;
  double final_train_loss = 0;
  std::vector<double> step_losses;  // losses of the steps run by this process
  std::string export_dir;           // adapter/ or model/
};

namespace jobs {

class Recipe {
 public:
  virtual ~Recipe() = default;

  // Builds every part; validation errors name the spec field.
  virtual absl::Status Setup(const proto::JobSpec& spec) = 0;
  // The step to continue from (0 when output_dir holds no valid checkpoint).
  virtual absl::StatusOr<int64_t> LoadCheckpoint() = 0;
  // Trains from `start_step`; returns early (steps < total_steps()) after a
  // stop request, with a checkpoint saved.
  virtual absl::StatusOr<TrainResult> Train(int64_t start_step) = 0;
  virtual absl::Status SaveCheckpoint(int64_t step) = 0;
  virtual absl::Status Export(TrainResult* result) = 0;
  // After Export, for a run that trained at least one step.
  virtual absl::Status Cleanup(const TrainResult& result) = 0;

  // Finish the current step, checkpoint and return from Train() early.
  virtual void RequestStop() = 0;
  virtual int64_t total_steps() const = 0;
  // The resolved spec (defaults applied).
  virtual const proto::JobSpec& spec() const = 0;

  // The fixed life after Setup: LoadCheckpoint (resume) → Train → Export →
  // Cleanup (the last two only once every step has run).
  absl::StatusOr<TrainResult> Run();

  const TrainerOptions& options() const { return options_; }

 protected:
  TrainerOptions options_;

 private:
  friend class RecipeRegistry;
};

using RecipeFactory = std::function<std::unique_ptr<Recipe>()>;

class RecipeRegistry {
 public:
  static RecipeRegistry& Global();

  // Returns true so that a registration can initialise a static. A second
  // recipe for one kind is a programmer error (CHECK).
  bool Register(proto::JobSpec::KindCase kind, std::string name, RecipeFactory factory);

  // The recipe for spec's kind, with options set and Setup(spec) done.
  // Unimplemented naming the kind when no recipe is linked for it.
  absl::StatusOr<std::unique_ptr<Recipe>> Create(const proto::JobSpec& spec,
                                                 const TrainerOptions& options) const;
  // Sets options and runs Setup on a recipe made elsewhere (tests, Trainer::Create).
  static absl::Status SetUp(Recipe& recipe, const proto::JobSpec& spec,
                            const TrainerOptions& options);
  std::vector<std::string> Names() const;

 private:
  struct Entry {
    std::string name;
    RecipeFactory factory;
  };
  std::map<int, Entry> recipes_;
};

// RecipeRegistry::Global().Create(spec, options).
absl::StatusOr<std::unique_ptr<Recipe>> CreateRecipe(const proto::JobSpec& spec,
                                                     const TrainerOptions& options);

}  // namespace jobs
}  // namespace sheaf

#endif  // SHEAF_JOBS_RECIPE_H_
