// Fuzz target: the config.json reader (core/model_config, with the field
// table walk of core/hf_fields).
//
// The input is config.json's text. An accepted config must be one Validate
// accepts, and its ToJson must parse back to a config that writes the same
// JSON again (the export round trip).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/model_config.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = sheaf::fuzz::AsView(data, size);
  absl::StatusOr<sheaf::ModelConfig> config = sheaf::ParseModelConfig(absl::string_view(text.data(), text.size()), "config.json");
  if (!config.ok()) {
    sheaf::fuzz::Note(config.status());
    return 0;
  }
  if (!config->Validate().ok()) {
    fprintf(stderr, "accepted config fails Validate: %s\n",
            std::string(config->Validate().message()).c_str());
    abort();
  }
  (void)config->NumParams();
  const std::string json = config->ToJson();
  absl::StatusOr<sheaf::ModelConfig> again = sheaf::ParseModelConfig(json, "ToJson");
  if (!again.ok()) {
    fprintf(stderr, "ToJson output is refused: %s\n---\n%s\n---\n",
            std::string(again.status().message()).c_str(), json.c_str());
    abort();
  }
  if (again->ToJson() != json) {
    fprintf(stderr, "ToJson round trip differs\n---\n%s\n---\n%s\n---\n", json.c_str(),
            again->ToJson().c_str());
    abort();
  }
  return 0;
}
