// The shape of a Llama-family decoder, read from a Hugging Face config.json.
//
// Per-layer shapes: structured pruning (LoRAM) leaves layers with different
// MLP widths and head counts, so every layer has its own LayerShape. A
// config.json with scalar `intermediate_size`, `num_attention_heads`,
// `num_key_value_heads` is the uniform case; each of the three may instead be
// a list with one entry per layer (as our pruned models write it).
#ifndef SHEAF_CORE_MODEL_CONFIG_H_
#define SHEAF_CORE_MODEL_CONFIG_H_

#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace sheaf {

struct LayerShape {
  int num_heads = 0;     // NH: query heads
  int num_kv_heads = 0;  // KVH: key/value heads (groups); NH % KVH == 0
  int intermediate = 0;  // I: MLP width
};

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
  bool attention_bias = false;  // q/k/v bias (Qwen2)
  std::vector<LayerShape> layers;

  bool uniform() const;
  // Checks internal consistency; errors name the offending field.
  absl::Status Validate() const;
  // The config.json text (scalars when uniform, per-layer lists otherwise).
  std::string ToJson() const;
  // Total parameter count of the base model.
  int64_t NumParams() const;
};

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source);
// Reads `<dir>/config.json`.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace sheaf

#endif  // SHEAF_CORE_MODEL_CONFIG_H_
