// Writes a sheaf LoRA adapter (random A and B, so it changes the model) in
// PEFT layout for tests/hf_reference.py to load with PEFT:
//   hf_adapter_export MODEL_DIR OUT_DIR TARGETS RANK ALPHA RSLORA LAYERS SEED
// TARGETS: comma-separated projection names (lm_head allowed); LAYERS:
// comma-separated layer indexes or "all".
#include <cstdio>
#include <cstdlib>
#include <random>

#include "absl/strings/str_split.h"
#include "core/lora.h"
#include "core/model_config.h"

int main(int argc, char** argv) {
  using namespace sheaf;
  if (argc != 9) {
    std::fprintf(stderr, "usage: hf_adapter_export MODEL_DIR OUT_DIR TARGETS RANK ALPHA RSLORA LAYERS SEED\n");
    return 2;
  }
  auto config = LoadModelConfig(argv[1]);
  if (!config.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  LoraOptions o;
  o.targets = absl::StrSplit(argv[3], ',');
  o.rank = std::atoi(argv[4]);
  o.alpha = static_cast<float>(std::atof(argv[5]));
  o.rslora = std::string(argv[6]) == "1";
  if (std::string(argv[7]) != "all") {
    for (absl::string_view l : absl::StrSplit(argv[7], ',')) o.layers.push_back(std::atoi(std::string(l).c_str()));
  }
  o.seed = static_cast<uint64_t>(std::atoll(argv[8]));
  auto a = LoraAdapter::Create(*config, o);
  if (!a.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(a.status().message()).c_str());
    return 2;
  }
  std::mt19937 rng(static_cast<uint32_t>(o.seed));
  std::normal_distribution<float> n(0.0f, 0.1f);
  Tensor all = (*a)->params().view(0);
  for (int i = 0; i < (*a)->params().num_slots(); ++i) {
    Tensor t = (*a)->params().view(i);
    for (int64_t k = 0; k < t.numel(); ++k) t.data[k] = n(rng);
  }
  (void)all;
  absl::Status s = (*a)->SavePeft(argv[2], argv[1]);
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
