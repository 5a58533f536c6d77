#include "core/spec/memory_estimate.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sheaf {
namespace {

constexpr double kBytesPerValue = 4;  // fp32

int64_t Saturate(double bytes) {
  constexpr double kMax = static_cast<double>(std::numeric_limits<int64_t>::max());
  if (!(bytes < kMax)) return std::numeric_limits<int64_t>::max();
  return bytes <= 0 ? 0 : static_cast<int64_t>(std::ceil(bytes));
}

// in/out features of each adapter target of one layer.
struct Dims {
  double in = 0, out = 0;
};

Dims TargetDims(absl::string_view target, const ModelConfig& m,
                const LayerShape& layer) {
  const double c = m.hidden_size;
  const double q = double{1} * layer.num_heads * m.head_dim;
  const double kv = double{1} * layer.num_kv_heads * m.head_dim;
  const double i = layer.intermediate;
  if (target == "q_proj") return {c, q};
  if (target == "k_proj" || target == "v_proj") return {c, kv};
  if (target == "o_proj") return {q, c};
  if (target == "gate_proj" || target == "up_proj") return {c, i};
  if (target == "down_proj") return {i, c};
  return {};  // lm_head: not a per-layer module
}

double LayerParams(const ModelConfig& m, const LayerShape& s) {
  const double c = m.hidden_size;
  const double q = double{1} * s.num_heads * m.head_dim;
  const double kv = double{1} * s.num_kv_heads * m.head_dim;
  double n = 2 * c + q * c + 2 * kv * c + c * q + 3 * double{1} * s.intermediate * c;
  if (m.attention_bias) n += q + 2 * kv;
  return n;
}

}  // namespace

int64_t MemoryEstimate::PerRank(int world_size) const {
  const double n = std::max(1, world_size);
  const double sequences = std::ceil(std::max(1, batch_size) / n);
  const double bytes = static_cast<double>(frozen_bytes) / n + gathered_bytes +
                       trainable_bytes +
                       sequences * static_cast<double>(activation_bytes_per_sequence);
  return Saturate(bytes * kWorkspaceMargin + kRuntimeBytes);
}

std::string FormatBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= double{1} * (int64_t{1} << 40)) return absl::StrFormat("%.1f TiB", b / (int64_t{1} << 40));
  if (b >= double{1} * (1 << 30)) return absl::StrFormat("%.1f GiB", b / (1 << 30));
  if (b >= double{1} * (1 << 20)) return absl::StrFormat("%.1f MiB", b / (1 << 20));
  if (b >= 1024) return absl::StrFormat("%.1f KiB", b / 1024);
  return absl::StrCat(bytes, " bytes");
}

std::string MemoryEstimate::Describe(int world_size) const {
  const int n = std::max(1, world_size);
  const int64_t sequences = (std::max(1, batch_size) + n - 1) / n;
  return absl::StrCat(
      "about ", FormatBytes(PerRank(n)), " per rank at ", n,
      n == 1 ? " rank" : " ranks", " (frozen weights ",
      FormatBytes(Saturate(static_cast<double>(frozen_bytes) / n + gathered_bytes)),
      ", trainable weights and optimizer ", FormatBytes(trainable_bytes),
      ", activations for ", sequences, sequences == 1 ? " sequence " : " sequences ",
      FormatBytes(Saturate(static_cast<double>(activation_bytes_per_sequence) * sequences)),
      ")");
}

ModelConfig ModelConfigFromShape(const proto::ModelShape& shape) {
  ModelConfig m;
  m.hidden_size = shape.hidden_size();
  m.num_layers = shape.num_hidden_layers();
  m.head_dim = shape.head_dim();
  m.vocab_size = shape.vocab_size();
  m.max_position_embeddings = shape.max_position_embeddings();
  m.tie_word_embeddings = shape.tie_word_embeddings();
  LayerShape layer;
  layer.num_heads = shape.num_attention_heads();
  layer.num_kv_heads = shape.num_key_value_heads();
  layer.intermediate = shape.intermediate_size();
  m.layers.assign(static_cast<size_t>(std::max(0, m.num_layers)), layer);
  return m;
}

absl::StatusOr<ModelConfig> JobModelShape(const proto::JobSpec& spec) {
  if (spec.has_pretrain() && spec.base_model().empty()) {
    return ModelConfigFromShape(spec.pretrain().model());
  }
  return LoadModelConfig(spec.base_model());
}

std::optional<MemoryEstimate> EstimateJobMemory(const proto::JobSpec& spec,
                                                const ModelConfig& m) {
  if (!spec.has_lora() && !spec.has_pretrain()) return std::nullopt;
  MemoryEstimate e;
  e.batch_size = std::max(1, spec.train().batch_size());
  const double c = m.hidden_size, v = m.vocab_size;
  const double t = std::max(1, spec.data().seq_len());

  double model_params = v * c * (m.tie_word_embeddings ? 1 : 2) + c;
  double max_layer = 0;
  for (const LayerShape& s : m.layers) {
    const double p = LayerParams(m, s);
    model_params += p;
    max_layer = std::max(max_layer, p);
  }

  double trainable = 0, lora_values_per_token = 0;
  if (spec.has_lora()) {
    const proto::AdapterSpec& a = spec.lora().adapter();
    const double r = a.rank();
    std::vector<bool> adapted(m.layers.size(), a.layers().empty());
    for (int l : a.layers()) {
      if (l >= 0 && static_cast<size_t>(l) < adapted.size()) adapted[l] = true;
    }
    for (const std::string& target : a.targets()) {
      if (target == "lm_head") {
        trainable += r * (c + v);
        lora_values_per_token += r;
        continue;
      }
      for (size_t l = 0; l < m.layers.size(); ++l) {
        if (!adapted[l]) continue;
        const Dims d = TargetDims(target, m, m.layers[l]);
        trainable += r * (d.in + d.out);
        lora_values_per_token += r;
      }
    }
    e.frozen_bytes = Saturate(model_params * kBytesPerValue);
    e.gathered_bytes = Saturate(2 * max_layer * kBytesPerValue);
  } else {
    // pretrain (and kinds without their own estimate): the whole model is
    // trained, replicated on every rank.
    trainable = model_params;
  }
  // Parameters, gradients, two AdamW moments.
  e.trainable_bytes = Saturate(4 * trainable * kBytesPerValue);

  double per_token = 2 * v + c;  // logits + their gradient; embeddings out
  for (const LayerShape& s : m.layers) {
    const double q = double{1} * s.num_heads * m.head_dim;
    const double kv = double{1} * s.num_kv_heads * m.head_dim;
    per_token += 6 * c + 2 * q + 2 * kv + 3 * double{1} * s.intermediate +
                 double{1} * s.num_heads * t;  // attention probabilities
  }
  per_token += lora_values_per_token;
  e.activation_bytes_per_sequence = Saturate(t * per_token * kBytesPerValue);
  return e;
}

}  // namespace sheaf
