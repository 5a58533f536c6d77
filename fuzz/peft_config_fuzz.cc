// Fuzz target: the PEFT adapter reader (core/lora LoraAdapter::LoadPeft):
// adapter_config.json and adapter_model.safetensors against a fixed tiny
// model (2 layers, hidden 8).
//
// The input is adapter_config.json, then a line "@@@@", then the
// adapter_model.safetensors bytes (no second part: no safetensors file).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/lora.h"
#include "core/model_config.h"
#include "fuzz/fuzz_util.h"

namespace {

const sheaf::ModelConfig& TinyConfig() {
  static const sheaf::ModelConfig config = [] {
    absl::StatusOr<sheaf::ModelConfig> c = sheaf::ParseModelConfig(
        R"({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": false})",
        "tiny config.json");
    if (!c.ok()) abort();
    return *c;
  }();
  return config;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = sheaf::fuzz::SplitParts(sheaf::fuzz::AsView(data, size), 2);
  sheaf::fuzz::WriteScratch("adapter_config.json", parts[0]);
  if (parts.size() > 1) {
    sheaf::fuzz::WriteScratch("adapter_model.safetensors", parts[1]);
  } else {
    sheaf::fuzz::RemoveScratch("adapter_model.safetensors");
  }
  auto adapter = sheaf::LoraAdapter::LoadPeft(sheaf::fuzz::ScratchDir(), TinyConfig());
  if (!adapter.ok()) {
    sheaf::fuzz::Note(adapter.status());
    return 0;
  }
  (void)(*adapter)->num_params();
  return 0;
}
