// The shape of a Llama-family decoder, read from a Hugging Face config.json.
//
// Per-layer shapes: structured pruning (LoRAM) leaves layers with different
// MLP widths and head counts, so every layer has its own LayerShape. A
// config.json with scalar `intermediate_size`, `num_attention_heads`,
// `num_key_value_heads` is the uniform case; each of the three may instead be
// a list with one entry per layer (as our pruned models write it).
#ifndef SHEAF_CORE_MODEL_CONFIG_H_
#define SHEAF_CORE_MODEL_CONFIG_H_

#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/hf_fields.h"

namespace sheaf {

struct LayerShape {
  int num_heads = 0;     // NH: query heads
  int num_kv_heads = 0;  // KVH: key/value heads (groups); NH % KVH == 0
  int intermediate = 0;  // I: MLP width
};

// config.json's rope_scaling (transformers' rope_type "linear" and "llama3";
// "default" and null are kRopeScalingNone). Applied to RoPE's inverse
// frequencies: linear divides all of them by `factor`; llama3 divides the
// low frequencies (wavelength > original_max / low_freq_factor) by
// `factor`, keeps the high ones (wavelength < original_max /
// high_freq_factor) and interpolates smoothly between.
struct RopeScaling {
  enum class Type { kRopeScalingNone, kRopeScalingLinear, kRopeScalingLlama3 };
  Type type = Type::kRopeScalingNone;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
  bool none() const { return type == Type::kRopeScalingNone; }
};

// RoPE inverse frequencies [HD/2] of `scaling` over base theta (what
// transformers' rope init functions return; fp32 as theirs).
std::vector<float> RopeInvFreq(int head_dim, float theta, const RopeScaling& scaling);

struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";
  std::string model_type = "llama";
  int hidden_size = 0;  // C
  int num_layers = 0;   // L
  int head_dim = 0;     // HD
  int vocab_size = 0;   // V
  int max_position_embeddings = 2048;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v bias (Qwen2; Llama's attention_bias)
  bool o_proj_bias = false;     // o_proj bias (Llama's attention_bias)
  bool mlp_bias = false;        // gate/up/down bias (Llama's mlp_bias)
  RopeScaling rope_scaling;
  // Attention window (Mistral's sliding_window, Qwen2's with
  // use_sliding_window); 0 = none. Not implemented: a Forward whose T would
  // let the window mask anything (T > sliding_window) is refused, naming it.
  int sliding_window = 0;
  // Special token ids from config.json (-1 = not given); exported again.
  int bos_token_id = -1, eos_token_id = -1, pad_token_id = -1;
  // config.json's torch_dtype ("float32", "bfloat16", ...; "" = not given).
  std::string torch_dtype;
  std::vector<LayerShape> layers;

  bool uniform() const;
  // Checks internal consistency; errors name the offending field.
  absl::Status Validate() const;
  // The config.json text (scalars when uniform, per-layer lists otherwise).
  std::string ToJson() const;
  // Total parameter count of the base model.
  int64_t NumParams() const;
};

// Every config.json field sheaf knows and what it does with it (the walk in
// model_config_test checks each row).
std::span<const FieldRule> ModelConfigFields();

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source);
// Reads `<dir>/config.json`.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

// The base tensors `config` needs, by Hugging Face name, with their shapes,
// in the order core/model.h's Model keeps them (weights().all()); computed without allocating anything.
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& config);

}  // namespace sheaf

#endif  // SHEAF_CORE_MODEL_CONFIG_H_
