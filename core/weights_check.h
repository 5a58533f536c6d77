// A model directory's safetensors headers against its config.json, before
// anything is allocated (the worker, the CLI and, at submit, the
// coordinator).
#ifndef SHEAF_CORE_WEIGHTS_CHECK_H_
#define SHEAF_CORE_WEIGHTS_CHECK_H_

#include <string>

#include "absl/status/status.h"
#include "core/model_config.h"

namespace sheaf {

// Checks a model directory's safetensors headers against `config` before
// anything is allocated: every expected tensor present with its shape, and
// no tensor that nothing would read (an error naming it: a bias or a layer
// the config does not describe would be silently dropped otherwise). Named
// allowances: `*.rotary_emb.inv_freq` (older checkpoints store the RoPE
// table; sheaf computes it from the config, as transformers does), and
// `lm_head.weight` beside tied embeddings (transformers ignores it too).
// InvalidArgument / NotFound naming the file and the tensor.
absl::Status CheckWeightsMatchConfig(const ModelConfig& config, const std::string& dir);

}  // namespace sheaf

#endif  // SHEAF_CORE_WEIGHTS_CHECK_H_
