// Dumps one model variant, its LoRA adapter and the C++ forward/backward
// results for tests/torch_reference.py, the independent PyTorch reference.
//
//   reference_dump <out_dir> <variant>
//
// writes
//   <out_dir>/model/    config.json + model.safetensors   (Model::Save)
//   <out_dir>/adapter/  adapter_config.json + adapter_model.safetensors
//                       (LoraAdapter::SavePeft)
//   <out_dir>/out.safetensors with
//     tokens, targets   [B, T] as float (targets hold -100 where ignored)
//     logits            [B, T, V]   LoRA run (frozen base)
//     loss              [1]         mean cross-entropy of the LoRA run
//     grad.<peft key>               every adapter gradient of the LoRA run
//     full.logits, full.loss        the same batch with every base weight
//                                   trainable (same weights, same adapter)
//     full.grad.<peft key>          adapter gradients of that run
//     wgrad.<hf name>               every base-weight gradient of that run
// All gradients are of the mean loss (Backward(1 / valid targets)).
//
// Variants (B = 2, T = 7; letters as in core/model.h):
//   mha_untied     2 layers, C 32, NH 4, KVH 4, HD 8, I 48, V 37, untied
//   gqa_tied_bias  as mha_untied with KVH 2, tied embeddings, q/k/v bias
//   perlayer       layer 0 NH 4 KVH 2 I 48, layer 1 NH 2 KVH 1 I 20, untied
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "jobs/train_loop.h"

namespace sheaf {
namespace {

constexpr int kB = 2, kT = 7;
constexpr float kWeightStd = 0.2f;

absl::StatusOr<ModelConfig> VariantConfig(const std::string& name) {
  ModelConfig c;
  c.hidden_size = 32;
  c.num_layers = 2;
  c.head_dim = 8;
  c.vocab_size = 37;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5f;
  if (name == "mha_untied") {
    c.rope_theta = 10000.0f;
    c.layers = {{4, 4, 48}, {4, 4, 48}};
  } else if (name == "gqa_tied_bias") {
    // Qwen2-style: bias on q/k/v, tied embeddings, large theta.
    c.architecture = "Qwen2ForCausalLM";
    c.model_type = "qwen2";
    c.rope_theta = 1000000.0f;
    c.tie_word_embeddings = true;
    c.attention_bias = true;
    c.layers = {{4, 2, 48}, {4, 2, 48}};
  } else if (name == "perlayer") {
    // A small theta so that every frequency pair rotates visibly over T = 7.
    c.rope_theta = 100.0f;
    c.layers = {{4, 2, 48}, {2, 1, 20}};
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown variant \"", name, "\" (known: mha_untied gqa_tied_bias perlayer)"));
  }
  RETURN_IF_ERROR(c.Validate());
  return c;
}

void FillNormal(const Tensor& t, std::mt19937_64& rng, float mean, float std) {
  std::normal_distribution<float> n(mean, std);
  for (int64_t i = 0; i < t.numel(); ++i) t.data[i] = n(rng);
}

// InitRandom leaves norms at one and biases at zero, which would hide a bug
// in how their values (or gradients' dependence on them) are used; perturb
// both so that every tensor matters.
void PerturbNormsAndBiases(Model& m, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (Param* p : m.weights().all()) {
    const bool is_norm = p->name.find("norm") != std::string::npos;
    const bool is_bias = p->name.ends_with(".bias");
    if (is_norm) FillNormal(p->value, rng, 1.0f, 0.2f);
    if (is_bias) FillNormal(p->value, rng, 0.0f, 0.2f);
  }
}

struct Batch {
  std::vector<int32_t> tokens, targets;
  int valid = 0;
};

Batch MakeBatch(int V) {
  std::mt19937 rng(1234);
  Batch b;
  for (int i = 0; i < kB * kT; ++i) {
    b.tokens.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(V)));
    b.targets.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(V)));
  }
  // Ignored targets in both sequences, including a first and a last position.
  for (int i : {0, 4, kT + 2, 2 * kT - 1}) b.targets[static_cast<size_t>(i)] = kIgnoreIndex;
  for (int32_t t : b.targets) b.valid += t != kIgnoreIndex;
  return b;
}

// Values and gradients added to the writer must outlive Write: they live in
// the models and adapters, and these vectors, all kept until the end of Run.
struct Dump {
  SafetensorsWriter writer;
  std::vector<std::unique_ptr<std::vector<float>>> owned;

  const float* Own(std::vector<float> v) {
    owned.push_back(std::make_unique<std::vector<float>>(std::move(v)));
    return owned.back()->data();
  }
};

// One training forward + backward; adds logits, loss and adapter grads under
// `prefix`.
absl::Status RunAndDump(Model& model, LoraAdapter& adapter, const Batch& batch,
                        const std::string& prefix, Dump& dump) {
  const int V = model.config().vocab_size;
  model.ZeroGrads();
  adapter.grads().Zero();
  // The recipes' training micro-step (jobs/train_loop.h).
  ASSIGN_OR_RETURN(LossStats stats,
                   jobs::ForwardBackward(model, &adapter, batch.tokens.data(), batch.targets.data(),
                                         kB, kT, 1.0f / static_cast<float>(batch.valid)));
  if (stats.tokens != batch.valid) {
    return absl::InternalError(
        absl::StrCat("Forward counted ", stats.tokens, " valid targets, expected ", batch.valid));
  }

  const float* logits = model.logits();
  dump.writer.Add(prefix + "logits", std::vector<int64_t>{kB, kT, V},
                  dump.Own(std::vector<float>(logits, logits + int64_t{kB} * kT * V)));
  dump.writer.Add(prefix + "loss", std::vector<int64_t>{1},
                  dump.Own({static_cast<float>(stats.mean())}));
  for (int i = 0; i < adapter.grads().num_slots(); ++i) {
    const Tensor g = adapter.grads().view(i);
    dump.writer.Add(prefix + "grad." + adapter.grads().name(i), g.shape, g.data);
  }
  return absl::OkStatus();
}

absl::Status Run(const std::string& dir, const std::string& variant) {
  ASSIGN_OR_RETURN(ModelConfig config, VariantConfig(variant));

  // --- the base model, saved in HF layout ---
  ASSIGN_OR_RETURN(std::unique_ptr<Model> lora_model, Model::Create(config, NothingTrainable));
  lora_model->InitRandom(/*seed=*/42, kWeightStd);
  PerturbNormsAndBiases(*lora_model, /*seed=*/43);
  RETURN_IF_ERROR(lora_model->Save(dir + "/model"));

  // --- the adapter: rank 4, alpha 8, every projection (+ lm_head if untied) ---
  LoraOptions options;
  options.rank = 4;
  options.alpha = 8.0f;
  options.dropout = 0.0f;
  options.seed = 7;
  options.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  if (!config.tie_word_embeddings) options.targets.push_back("lm_head");
  ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> adapter, LoraAdapter::Create(config, options));
  {
    // B starts at zero, which would make the adapter a no-op and dA zero.
    std::mt19937_64 rng(44);
    for (LoraModule* m : adapter->all_modules()) FillNormal(m->b, rng, 0.0f, 0.2f);
  }
  RETURN_IF_ERROR(adapter->SavePeft(dir + "/adapter", "reference_dump/" + variant));

  const Batch batch = MakeBatch(config.vocab_size);
  Dump dump;
  std::vector<float> tokens_f(batch.tokens.begin(), batch.tokens.end());
  std::vector<float> targets_f(batch.targets.begin(), batch.targets.end());
  dump.writer.Add("tokens", std::vector<int64_t>{kB, kT}, tokens_f.data());
  dump.writer.Add("targets", std::vector<int64_t>{kB, kT}, targets_f.data());

  // --- LoRA training step: frozen base, adapter gradients only ---
  RETURN_IF_ERROR(RunAndDump(*lora_model, *adapter, batch, "", dump));

  // --- all weights trainable: reload the saved weights (also checks that
  // Save and LoadWeights round-trip), same adapter ---
  ASSIGN_OR_RETURN(std::unique_ptr<Model> full_model, Model::Create(config, EverythingTrainable));
  RETURN_IF_ERROR(full_model->LoadWeights(dir + "/model"));
  // A second adapter with the same values: the first one's grads are already
  // queued in the writer and must stay unchanged until Write.
  ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> adapter2, LoraAdapter::Create(config, options));
  if (adapter2->params().size() != adapter->params().size()) {
    return absl::InternalError("adapter layouts differ");
  }
  std::copy(adapter->params().data(), adapter->params().data() + adapter->params().size(),
            adapter2->params().data());
  RETURN_IF_ERROR(RunAndDump(*full_model, *adapter2, batch, "full.", dump));
  for (Param* p : full_model->weights().all()) {
    if (!p->trainable()) return absl::InternalError(absl::StrCat(p->name, " is not trainable"));
    dump.writer.Add("wgrad." + p->name, p->grad.shape, p->grad.data);
  }

  RETURN_IF_ERROR(dump.writer.Write(dir + "/out.safetensors", {{"variant", variant}}));
  return absl::OkStatus();
}

}  // namespace
}  // namespace sheaf

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <out_dir> <mha_untied|gqa_tied_bias|perlayer>\n", argv[0]);
    return 2;
  }
  const absl::Status s = sheaf::Run(argv[1], argv[2]);
  if (!s.ok()) {
    std::fprintf(stderr, "reference_dump: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
