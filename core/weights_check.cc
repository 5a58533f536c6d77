#include "core/weights_check.h"

#include <algorithm>
#include <memory>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace sheaf {

absl::Status CheckWeightsMatchConfig(const ModelConfig& config, const std::string& dir) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsModel> st, SafetensorsModel::Open(dir));
  std::set<std::string> expected;
  for (const ExpectedTensor& e : ExpectedTensors(config)) {
    const TensorInfo* info = st->Find(e.name);
    if (info == nullptr) {
      return absl::NotFoundError(absl::StrCat(
          dir, ": tensor ", e.name, " is missing (config.json says it exists",
          e.name.ends_with(".bias") ? ": attention_bias / mlp_bias" : "", ")"));
    }
    if (info->shape != e.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, ": tensor ", e.name, " has shape ", ShapeToString(info->shape),
          " but config.json implies ", ShapeToString(e.shape)));
    }
    expected.insert(e.name);
  }
  std::vector<std::string> unread;
  for (const TensorInfo* t : st->tensors()) {
    if (expected.contains(t->name)) continue;
    if (t->name.ends_with(".rotary_emb.inv_freq")) continue;  // recomputed from the config
    if (t->name == "lm_head.weight" && config.tie_word_embeddings) continue;  // HF ignores it too
    unread.push_back(t->name);
  }
  if (!unread.empty()) {
    const size_t shown = std::min<size_t>(unread.size(), 5);
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": ", unread.size(), " tensor(s) that config.json does not describe and nothing "
        "would read: ", absl::StrJoin(unread.begin(), unread.begin() + static_cast<long>(shown), ", "),
        unread.size() > shown ? ", ..." : "",
        " (a bias or layer the config leaves out would be silently dropped)"));
  }
  return absl::OkStatus();
}

}  // namespace sheaf
