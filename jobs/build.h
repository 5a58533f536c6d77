// Building: a job spec → the parts a recipe trains (tokenizer, corpora and
// dataset, model shape, model with its frozen weights, LoRA adapter).
//
// Every function validates what it reads and returns InvalidArgument /
// NotFound naming the spec field, and none writes anything: a recipe builds
// all of its parts before it touches output_dir.
//
// Tokenizers come from one factory keyed by `data.tokenizer` (default
// "auto": the model directory's, see MakeTokenizerForModel); a name it does
// not know is refused naming the field.
#ifndef SHEAF_JOBS_BUILD_H_
#define SHEAF_JOBS_BUILD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/data/dataset.h"
#include "core/data/token_corpus.h"
#include "core/data/tokenizer.h"
#include "core/lora.h"
#include "core/model.h"
#include "dist/communicator.h"
#include "dist/sharded_weights.h"
#include "proto/job_spec.pb.h"

namespace sheaf::jobs {

// The tokenizers `data.tokenizer` may name, in the order they are listed in
// errors.
std::vector<std::string> TokenizerNames();
// `name` empty selects "byte".
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& name);

// The tokenizer of a model directory. `name` (data.tokenizer, or a
// command's --tokenizer):
//   "" or "auto"     the model's own: model_dir/tokenizer.json, else
//                    model_dir/tokenizer.model, else "byte" when its
//                    config.json's vocab_size is 258 (sheaf's own byte-level
//                    models carry no tokenizer files), else InvalidArgument
//                    naming data.tokenizer and model_dir; "byte" without a
//                    model_dir (pretrain)
//   "byte"           the byte tokenizer
//   "tokenizer.json" / "tokenizer.model"   that file of model_dir
//   a path ending in tokenizer.json / .model   that file
// Special ids come from tokenizer_config.json, else generation_config.json /
// config.json beside the file. Errors name the field and the file.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizerForModel(const std::string& name,
                                                                 const std::string& model_dir);
// What MakeTokenizerForModel(name, model_dir) reads, without loading it: a
// factory name ("byte") or the tokenizer file's path. A sub-job on another
// model directory (loram's pruned model) keeps its parent's tokenizer by
// being given this instead of "auto". Errors: as MakeTokenizerForModel.
absl::StatusOr<std::string> ResolveTokenizer(const std::string& name, const std::string& model_dir);

// Reads `paths` (a data.train / data.val list, `key` names it in errors) in
// `format` and tokenises them (format tokens: exactly one .tok file of the
// tokenizer's vocabulary).
absl::StatusOr<std::shared_ptr<const TokenCorpus>> LoadCorpus(
    const google::protobuf::RepeatedPtrField<std::string>& paths, proto::DataSpec::Format format,
    const Tokenizer& tokenizer, const char* key);

// The model shape: base_model's config.json, or pretrain.model.
absl::StatusOr<ModelConfig> ModelConfigForSpec(const proto::JobSpec& spec);
absl::StatusOr<ModelConfig> ConfigFromShape(const proto::ModelShape& shape);

struct DataParts {
  std::unique_ptr<Tokenizer> tokenizer;
  std::shared_ptr<const TokenCorpus> train, val;  // val null: split from train
  std::unique_ptr<Dataset> dataset;
};
// spec.data → tokenizer, corpora and the split/packed dataset for `config`.
absl::StatusOr<DataParts> BuildData(const proto::JobSpec& spec, const ModelConfig& config);

struct ModelParts {
  std::unique_ptr<Model> model;
  std::unique_ptr<dist::ShardedWeights> sharded;  // frozen weights of a world > 1
  std::unique_ptr<LoraAdapter> adapter;           // spec.lora only
};
struct ModelBuildOptions {
  dist::Communicator* comm = nullptr;  // world; null = one rank
  int64_t gather_budget_bytes = 0;     // ShardedWeights::Options
  DType frozen_dtype = DType::kDTypeF32;  // ModelOptions::frozen_dtype
};
// The model of `spec` (all weights trainable for pretrain, frozen for lora;
// frozen weights sharded over a world of more than one rank), its weights
// loaded (base_model) or initialised (pretrain.model), and the LoRA adapter.
absl::StatusOr<ModelParts> BuildModel(const proto::JobSpec& spec, const ModelConfig& config,
                                      const ModelBuildOptions& options);

// lora.adapter → LoraOptions (the adapter init seed derives from spec.seed).
LoraOptions LoraOptionsFromSpec(const proto::AdapterSpec& adapter, uint64_t seed);

}  // namespace sheaf::jobs

#endif  // SHEAF_JOBS_BUILD_H_
