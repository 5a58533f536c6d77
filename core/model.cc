#include "core/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <span>

#include <sys/mman.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/backend.h"
#include "core/quant/nf4.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace sheaf {

Param* LayerWeights::proj(Proj p) {
  switch (p) {
    case Proj::kQ: return &q;
    case Proj::kK: return &k;
    case Proj::kV: return &v;
    case Proj::kO: return &o;
    case Proj::kGate: return &gate;
    case Proj::kUp: return &up;
    case Proj::kDown: return &down;
  }
  return nullptr;
}

std::vector<Param*> ModelWeights::all() {
  std::vector<Param*> out{&embed};
  for (LayerWeights& l : layers) {
    out.push_back(&l.input_norm);
    for (Param* p : {&l.q, &l.k, &l.v}) out.push_back(p);
    if (l.q_bias.value) {
      for (Param* p : {&l.q_bias, &l.k_bias, &l.v_bias}) out.push_back(p);
    }
    out.push_back(&l.o);
    if (l.o_bias.value) out.push_back(&l.o_bias);
    out.push_back(&l.post_norm);
    for (Param* p : {&l.gate, &l.up, &l.down}) out.push_back(p);
    if (l.gate_bias.value) {
      for (Param* p : {&l.gate_bias, &l.up_bias, &l.down_bias}) out.push_back(p);
    }
  }
  out.push_back(&norm);
  if (lm_head.value.data != embed.value.data) out.push_back(&lm_head);
  return out;
}

absl::Status CheckAdapterBaseCopies(const Model& model, const LoraAdapter& adapter) {
  for (const auto& [name, values] : adapter.base_copies()) {
    const ModelWeights& w = model.weights();
    const Param* p = name == "lm_head.weight" ? &w.lm_head : name == "model.embed_tokens.weight" ? &w.embed : nullptr;
    if (p == nullptr || p->value.data == nullptr || p->value.numel() != static_cast<int64_t>(values.size())) {
      return absl::InvalidArgumentError(absl::StrCat("adapter: its copy of ", name, " does not fit the base model"));
    }
    for (size_t i = 0; i < values.size(); ++i) {
      const float x = p->value.dtype == DType::kDTypeBF16
                          ? Bf16ToF32(static_cast<const uint16_t*>(p->value.raw())[i])
                          : p->value.data[i];
      if (x != values[i]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "adapter: its saved copy of base weight ", name, " differs from the base model's (element ", i,
            "); PEFT would load the copy over the base, sheaf does not: refused"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Model>> Model::Create(
    const ModelConfig& config, const TrainablePredicate& trainable, const ModelOptions& options) {
  RETURN_IF_ERROR(config.Validate());
  Backend* backend = options.backend ? options.backend : DefaultBackend();
  if (backend == nullptr) {
    return absl::FailedPreconditionError(
        "no compute backend: ModelOptions::backend is null and none is registered (link "
        "//ops/cpu:ops)");
  }
  const DType fdt = options.frozen_dtype;
  const bool nf4 = fdt == DType::kDTypeNF4;
  // NF4 covers the layers' projections only; embeddings and lm_head stay f32.
  const DType edge_dt = nf4 ? DType::kDTypeF32 : fdt;
  if (!backend->Supports(BackendOp::kBackendOpLinear, {DType::kDTypeF32, fdt}) ||
      !backend->Supports(BackendOp::kBackendOpEmbedding, {edge_dt})) {
    return absl::InvalidArgumentError(absl::StrCat("frozen_dtype ", DTypeName(fdt),
                                                   " is not supported by backend ",
                                                   backend->name(), " (use f32 or bf16)"));
  }
  if (!config.rope_scaling.none() && backend->device() != Device::kDeviceCpu) {
    return absl::UnimplementedError(absl::StrCat(
        "config rope_scaling: backend ", backend->name(),
        " keeps its RoPE tables in device memory; scaled RoPE is host-only so far"));
  }
  if (options.compute != DType::kDTypeF32 && options.compute != DType::kDTypeBF16) {
    return absl::InvalidArgumentError(absl::StrCat("compute ", DTypeName(options.compute),
                                                   " is not f32 or bf16"));
  }
  const bool bf16_compute = options.compute == DType::kDTypeBF16;
  if (bf16_compute && nf4) {
    return absl::InvalidArgumentError(
        "compute bf16 with frozen_dtype nf4 is not supported (NF4 projections compute in fp32)");
  }
  if (bf16_compute && !backend->SupportsBf16Compute()) {
    return absl::InvalidArgumentError(absl::StrCat("compute bf16 is not supported by backend ",
                                                   backend->name()));
  }
  std::unique_ptr<Model> m(new Model(config));
  m->bf16_compute_ = bf16_compute;
  m->backend_ = backend;
  m->fuse_projections_ = options.fuse_projections;
  for (Arena* a : {&m->frozen_, &m->params_, &m->grads_, &m->acts_, &m->scratch_}) {
    a->set_allocator(backend);
  }
  const int C = config.hidden_size, HD = config.head_dim, V = config.vocab_size;

  // Plan every tensor into the frozen or the params arena (grads mirror
  // params slot for slot), then resolve views after allocation.
  struct Planned {
    Param* param;
    bool trainable;
    int slot;
  };
  std::vector<Planned> planned;
  auto plan = [&](Param* p, std::string name, std::vector<int64_t> shape) {
    p->name = name;
    const bool t = trainable(name);
    // Frozen matrices take the frozen dtype; norms and biases stay f32. NF4
    // is for the layers' projection matrices only (q,k,v,o,gate,up,down):
    // the embedding is a row gather and lm_head is small next to the layers
    // (and LoRAM keeps both full precision), so they stay f32.
    const bool layer_matrix = shape.size() == 2 && name.starts_with("model.layers.");
    const DType dtype = shape.size() != 2 ? DType::kDTypeF32 : layer_matrix ? fdt : edge_dt;
    int slot = t ? m->params_.Add(name, shape) : m->frozen_.Add(name, shape, dtype);
    if (t) m->grads_.Add(name, shape);
    planned.push_back({p, t, slot});
  };
  ModelWeights& w = m->weights_;
  plan(&w.embed, "model.embed_tokens.weight", {V, C});
  w.layers.resize(static_cast<size_t>(config.num_layers));
  for (int l = 0; l < config.num_layers; ++l) {
    const LayerShape& s = config.layers[static_cast<size_t>(l)];
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    const std::string pre = absl::StrCat("model.layers.", l, ".");
    const int64_t q_out = int64_t{s.num_heads} * HD, kv_out = int64_t{s.num_kv_heads} * HD;
    plan(&lw.input_norm, pre + "input_layernorm.weight", {C});
    plan(&lw.q, pre + "self_attn.q_proj.weight", {q_out, C});
    plan(&lw.k, pre + "self_attn.k_proj.weight", {kv_out, C});
    plan(&lw.v, pre + "self_attn.v_proj.weight", {kv_out, C});
    if (config.attention_bias) {
      plan(&lw.q_bias, pre + "self_attn.q_proj.bias", {q_out});
      plan(&lw.k_bias, pre + "self_attn.k_proj.bias", {kv_out});
      plan(&lw.v_bias, pre + "self_attn.v_proj.bias", {kv_out});
    }
    plan(&lw.o, pre + "self_attn.o_proj.weight", {C, q_out});
    if (config.o_proj_bias) plan(&lw.o_bias, pre + "self_attn.o_proj.bias", {C});
    plan(&lw.post_norm, pre + "post_attention_layernorm.weight", {C});
    plan(&lw.gate, pre + "mlp.gate_proj.weight", {s.intermediate, C});
    plan(&lw.up, pre + "mlp.up_proj.weight", {s.intermediate, C});
    plan(&lw.down, pre + "mlp.down_proj.weight", {C, s.intermediate});
    if (config.mlp_bias) {
      plan(&lw.gate_bias, pre + "mlp.gate_proj.bias", {s.intermediate});
      plan(&lw.up_bias, pre + "mlp.up_proj.bias", {s.intermediate});
      plan(&lw.down_bias, pre + "mlp.down_proj.bias", {C});
    }
  }
  plan(&w.norm, "model.norm.weight", {C});
  if (!config.tie_word_embeddings) plan(&w.lm_head, "lm_head.weight", {V, C});

  if (!options.external_frozen) m->frozen_.Allocate();
  m->params_.Allocate();
  m->grads_.Allocate();
  for (const Planned& p : planned) {
    if (p.trainable) {
      p.param->value = m->params_.view(p.slot);
      p.param->grad = m->grads_.view(p.slot);
    } else {
      // External frozen storage: the shape is known, the data comes from
      // the FrozenWeightSource on Acquire.
      p.param->value = m->frozen_.view(p.slot);
      if (options.external_frozen) p.param->value.data = nullptr;
    }
  }
  if (config.tie_word_embeddings) {
    w.lm_head.name = "lm_head.weight (tied to model.embed_tokens.weight)";
    w.lm_head.value = w.embed.value;
    w.lm_head.grad = w.embed.grad;
  }
  return m;
}

std::vector<Param*> Model::GroupParams(int group) {
  std::vector<Param*> out;
  if (group == kEdgeGroup) {
    out.push_back(&weights_.embed);
    out.push_back(&weights_.norm);
    if (!config_.tie_word_embeddings) out.push_back(&weights_.lm_head);
    return out;
  }
  LayerWeights& l = weights_.layers[static_cast<size_t>(group - 1)];
  out = {&l.input_norm, &l.q, &l.k, &l.v};
  if (config_.attention_bias) {
    for (Param* p : {&l.q_bias, &l.k_bias, &l.v_bias}) out.push_back(p);
  }
  out.push_back(&l.o);
  if (config_.o_proj_bias) out.push_back(&l.o_bias);
  for (Param* p : {&l.post_norm, &l.gate, &l.up, &l.down}) out.push_back(p);
  if (config_.mlp_bias) {
    for (Param* p : {&l.gate_bias, &l.up_bias, &l.down_bias}) out.push_back(p);
  }
  return out;
}

absl::Status Model::AcquireGroup(int group) {
  return frozen_source_ ? frozen_source_->Acquire(group) : absl::OkStatus();
}
void Model::ReleaseGroup(int group) {
  if (frozen_source_) frozen_source_->Release(group);
}
void Model::PrefetchGroup(int group) {
  if (frozen_source_) frozen_source_->Prefetch(group);
}
absl::Status Model::GradsReady(int group) {
  return grad_listener_ ? grad_listener_->OnGradsReady(group) : absl::OkStatus();
}

namespace {

// The file pages a read touched stay in the process's RSS as long as the
// file is mapped; the arena holds its own copy, so they are given back after
// each tensor (peak RSS then measures the arenas, not the file twice over).
void DropMappedPages(const SafetensorsModel& st, const std::string& name) {
  const SafetensorsFile* f = st.FileFor(name);
  const TensorInfo* info = st.Find(name);
  if (f == nullptr || info == nullptr) return;
  std::span<const std::byte> bytes = f->Bytes(*info);
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(bytes.data()) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(bytes.data() + bytes.size());
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace

absl::Status Model::LoadWeights(const std::string& dir) {
  if (frozen_.data() == nullptr && frozen_.num_slots() > 0) {
    return absl::FailedPreconditionError("frozen weights are external (sharded): load them through the FrozenWeightSource");
  }
  RETURN_IF_ERROR(CheckWeightsMatchConfig(config_, dir));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsModel> st, SafetensorsModel::Open(dir));
  std::vector<float> widened;  // one NF4 tensor's floats at a time
  for (Param* p : weights_.all()) {
    if (p->value.dtype == DType::kDTypeNF4) {
      // Quantised on load, one tensor at a time, with double-quantised
      // scales (what the NF4 file of these weights holds).
      widened.resize(static_cast<size_t>(p->value.numel()));
      RETURN_IF_ERROR(st->Read(p->name, p->value.shape, DType::kDTypeF32, widened.data()));
      quant::QuantizeNf4DoubleQuant(widened.data(), p->value.numel(),
                                    static_cast<uint8_t*>(p->value.raw()));
    } else {
      RETURN_IF_ERROR(st->Read(p->name, p->value.shape, p->value.dtype, p->value.raw()));
    }
    DropMappedPages(*st, p->name);
  }
  return absl::OkStatus();
}

void Model::InitRandom(uint64_t seed, float std) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, std);
  for (Param* p : weights_.all()) {
    const bool is_norm = p->name.find("norm") != std::string::npos;
    const bool is_bias = p->name.size() > 5 && p->name.ends_with(".bias");
    const bool bf16 = p->value.dtype == DType::kDTypeBF16;
    const bool nf4 = p->value.dtype == DType::kDTypeNF4;
    uint16_t* bits = static_cast<uint16_t*>(p->value.raw());
    std::vector<float> drawn(nf4 ? static_cast<size_t>(p->value.numel()) : 0);
    for (int64_t i = 0; i < p->value.numel(); ++i) {
      const float x = is_norm ? 1.0f : is_bias ? 0.0f : normal(rng);
      if (nf4) {
        drawn[static_cast<size_t>(i)] = x;
      } else if (bf16) {
        bits[i] = F32ToBf16(x);
      } else {
        p->value.data[i] = x;
      }
    }
    if (nf4) {
      quant::QuantizeNf4DoubleQuant(drawn.data(), p->value.numel(),
                                    static_cast<uint8_t*>(p->value.raw()));
    }
  }
}

absl::Status Model::Save(const std::string& dir) const { return SaveImpl(dir, std::nullopt); }

absl::Status Model::Save(const std::string& dir, SafetensorsDtype file_dtype) const {
  // One file: no shard limit.
  return Save(dir, file_dtype, std::numeric_limits<int64_t>::max());
}

absl::Status Model::Save(const std::string& dir, SafetensorsDtype file_dtype,
                         int64_t max_shard_bytes) const {
  if (max_shard_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("Save: max_shard_bytes ", max_shard_bytes, " < 1"));
  }
  if (file_dtype != SafetensorsDtype::kDtypeF32 && file_dtype != SafetensorsDtype::kDtypeBF16 &&
      file_dtype != SafetensorsDtype::kDtypeF16) {
    return absl::InvalidArgumentError(absl::StrCat("Save: dtype ", SafetensorsDtypeName(file_dtype),
                                                   " (use F32, BF16 or F16)"));
  }
  return SaveImpl(dir, file_dtype, max_shard_bytes);
}

namespace {

absl::Status WriteTextAtomically(const std::string& path, const std::string& text) {
  std::error_code ec;
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !ok) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

const char* TorchDtypeName(SafetensorsDtype d) {
  switch (d) {
    case SafetensorsDtype::kDtypeBF16: return "bfloat16";
    case SafetensorsDtype::kDtypeF16: return "float16";
    default: return "float32";
  }
}

}  // namespace

absl::Status Model::SaveImpl(const std::string& dir, std::optional<SafetensorsDtype> all,
                             int64_t max_shard_bytes) const {
  if (frozen_.data() == nullptr && frozen_.num_slots() > 0) {
    return absl::FailedPreconditionError("cannot save a model whose frozen weights are sharded");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  // torch_dtype says what the file holds.
  ModelConfig written = config_;
  written.torch_dtype = all ? TorchDtypeName(*all)
                            : weights_.embed.value.dtype == DType::kDTypeBF16 ? "bfloat16" : "float32";
  RETURN_IF_ERROR(WriteTextAtomically(dir + "/config.json", written.ToJson()));
  if (config_.bos_token_id >= 0 || config_.eos_token_id >= 0) {
    // What transformers' GenerationConfig.from_model_config writes.
    std::string g = "{\n";
    if (config_.bos_token_id >= 0) g += absl::StrCat("  \"bos_token_id\": ", config_.bos_token_id, ",\n");
    if (config_.eos_token_id >= 0) g += absl::StrCat("  \"eos_token_id\": ", config_.eos_token_id, ",\n");
    if (config_.pad_token_id >= 0) g += absl::StrCat("  \"pad_token_id\": ", config_.pad_token_id, ",\n");
    g += "  \"_from_model_config\": true\n}\n";
    RETURN_IF_ERROR(WriteTextAtomically(dir + "/generation_config.json", g));
  }
  struct Out {
    std::string name;
    std::vector<int64_t> shape;
    const float* data;
    SafetensorsDtype dtype;
  };
  std::vector<Out> outs;  // every tensor, in the order of all()
  auto add = [&outs](const std::string& name, std::span<const int64_t> shape, const float* data,
                     SafetensorsDtype dtype) {
    outs.push_back({name, std::vector<int64_t>(shape.begin(), shape.end()), data, dtype});
  };
  std::vector<std::vector<float>> widened;  // bf16 tensors, written back as BF16 (exact)
  for (Param* p : const_cast<ModelWeights&>(weights_).all()) {
    if (p->value.dtype == DType::kDTypeNF4) {
      // NF4 has no safetensors dtype: the dequantised values, as F32 (exact:
      // code · scale in fp32), or in `all`.
      widened.emplace_back(static_cast<size_t>(p->value.numel()));
      quant::DequantizeNf4(static_cast<const uint8_t*>(p->value.raw()), 0, p->value.numel(),
                           widened.back().data());
      add(p->name, p->value.shape, widened.back().data(),
          all ? *all : SafetensorsDtype::kDtypeF32);
    } else if (p->value.dtype == DType::kDTypeBF16) {
      widened.emplace_back(static_cast<size_t>(p->value.numel()));
      const uint16_t* bits = static_cast<const uint16_t*>(p->value.raw());
      for (size_t i = 0; i < widened.back().size(); ++i) widened.back()[i] = Bf16ToF32(bits[i]);
      add(p->name, p->value.shape, widened.back().data(),
          all ? *all : SafetensorsDtype::kDtypeBF16);
    } else {
      add(p->name, p->value.shape, p->value.data, all ? *all : SafetensorsDtype::kDtypeF32);
    }
  }
  // Shards: tensors in order, a new shard when the next would not fit.
  auto bytes_of = [](const Out& o) {
    int64_t n = 1;
    for (int64_t d : o.shape) n *= d;
    return n * (o.dtype == SafetensorsDtype::kDtypeF32 ? 4 : 2);
  };
  std::vector<std::vector<size_t>> shards(1);
  int64_t total = 0, in_shard = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    const int64_t b = bytes_of(outs[i]);
    if (max_shard_bytes > 0 && !shards.back().empty() && in_shard + b > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += b;
    total += b;
  }
  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  // Shards of an earlier save that this one does not rewrite.
  auto remove_stale_shards = [&](int keep) {
    const std::string suffix = absl::StrFormat("-of-%05d.safetensors", keep);
    std::vector<std::filesystem::path> stale;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      const bool shard = name.size() == 32 && name.rfind("model-", 0) == 0 &&
                         name.compare(11, 4, "-of-") == 0 && absl::EndsWith(name, ".safetensors");
      if (shard && (keep == 0 || !absl::EndsWith(name, suffix))) stale.push_back(e.path());
    }
    for (const auto& path : stale) std::filesystem::remove(path, ec);
  };
  if (shards.size() == 1) {
    SafetensorsWriter w;
    for (const Out& o : outs) w.Add(o.name, o.shape, o.data, o.dtype);
    RETURN_IF_ERROR(w.Write(single, {{"format", "pt"}}));
    std::filesystem::remove(index, ec);  // a stale index would win over the file
    remove_stale_shards(0);
    return absl::OkStatus();
  }
  const int n = static_cast<int>(shards.size());
  std::vector<std::pair<std::string, std::string>> weight_map;
  for (int s = 0; s < n; ++s) {
    const std::string file = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, n);
    SafetensorsWriter w;
    for (size_t i : shards[static_cast<size_t>(s)]) {
      w.Add(outs[i].name, outs[i].shape, outs[i].data, outs[i].dtype);
      weight_map.emplace_back(outs[i].name, file);
    }
    RETURN_IF_ERROR(w.Write(dir + "/" + file, {{"format", "pt"}}));
  }
  std::sort(weight_map.begin(), weight_map.end());
  std::string text = absl::StrCat("{\n  \"metadata\": {\"total_size\": ", total, "},\n  \"weight_map\": {\n");
  for (size_t i = 0; i < weight_map.size(); ++i) {
    absl::StrAppend(&text, "    \"", weight_map[i].first, "\": \"", weight_map[i].second, "\"",
                    i + 1 < weight_map.size() ? ",\n" : "\n");
  }
  text += "  }\n}\n";
  RETURN_IF_ERROR(WriteTextAtomically(index, text));
  std::filesystem::remove(single, ec);  // a stale single file beside the shards
  remove_stale_shards(n);
  return absl::OkStatus();
}

namespace {

LoraMixing BackendMixing(AdapterMixing m) {
  return m == AdapterMixing::kAdapterMixingWeights ? LoraMixing::kLoraMixingWeights
                                                   : LoraMixing::kLoraMixingOutputs;
}

// The adapter op's arguments for one plan entry on rows [0, n) of a layer
// W [out, in].
LoraOpArgs EntryArgs(const AdapterEntry& e, int64_t n, int64_t in, int64_t out) {
  LoraOpArgs args;
  args.n = static_cast<int>(n);
  args.in = static_cast<int>(in);
  args.out = static_cast<int>(out);
  args.r = e.kr();
  args.scale = e.scale;
  args.a = e.a.data;
  args.b = e.b.data;
  args.num_experts = e.num_experts;
  args.gate = e.gate ? e.gate.data : nullptr;
  args.rows_per_group = e.gate ? e.rows_per_group : 1;
  args.mixing = BackendMixing(e.mixing);
  return args;
}

}  // namespace

void Model::PlanActivations(int B, int T, const AdapterPlan& plan, const LossHead& head) {
  const bool selected = head.kind == LossHead::Kind::kLossHeadSelectedRows;
  std::vector<int32_t> layout = plan.Layout();
  layout.push_back(selected ? 1 : 0);
  const int M = selected ? static_cast<int>(head.rows.size()) : 0;
  const int J = selected ? static_cast<int>(head.cols.size()) : 0;
  if (B <= planned_B_ && T == planned_T_ && layout == planned_layout_ && M <= planned_M_ &&
      J <= planned_J_) {
    return;
  }
  B = std::max(B, planned_B_);
  const bool same_layout = layout == planned_layout_;
  const int plan_M = same_layout ? std::max(M, planned_M_) : M;
  const int plan_J = same_layout ? std::max(J, planned_J_) : J;
  acts_.Reset();
  scratch_.Reset();
  const ModelConfig& c = config_;
  const int64_t N = int64_t{B} * T, C = c.hidden_size, HD = c.head_dim, V = c.vocab_size;
  int64_t max_q = 0, max_kv = 0, max_i = 0;
  bool any_dropout = false;
  int64_t lora_scratch = 1;

  // Each view is planned and bound in one place; the data pointers are
  // filled in once the arenas are allocated.
  std::vector<std::pair<Tensor*, int>> acts_binds, scratch_binds;
  auto act = [&](Tensor* t, const char* name, std::vector<int64_t> shape) {
    acts_binds.emplace_back(t, acts_.Add(name, std::move(shape)));
  };
  auto scratch = [&](Tensor* t, const char* name, std::vector<int64_t> shape) {
    scratch_binds.emplace_back(t, scratch_.Add(name, std::move(shape)));
  };
  // Per entry of a site: the saved x·A_catᵀ (N, K·R) and, with dropout, the
  // mask (N, in); the operator's scratch is shared by all entries.
  // `rows` rows: N, or M for lm_head under the selected-rows head.
  auto entries = [&](const std::vector<AdapterEntry>& es, int64_t rows, int in, int out,
                     std::vector<Tensor>* xa, std::vector<Tensor>* mask) {
    xa->assign(es.size(), Tensor{});
    mask->assign(es.size(), Tensor{});
    for (size_t i = 0; i < es.size(); ++i) {
      act(&(*xa)[i], "lora_xa", {rows, es[i].kr()});
      if (es[i].dropout > 0.0f) {
        act(&(*mask)[i], "lora_mask", {rows, in});
        any_dropout = true;
      }
      lora_scratch = std::max(lora_scratch,
                              backend_->LoraScratchFloats(EntryArgs(es[i], rows, in, out)));
    }
  };
  act_ = Acts{};
  act_.layers.assign(static_cast<size_t>(c.num_layers), {});
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerShape& s = c.layers[static_cast<size_t>(l)];
    const int64_t q_out = s.num_heads * HD, kv_out = s.num_kv_heads * HD, I = s.intermediate;
    max_q = std::max(max_q, q_out);
    max_kv = std::max(max_kv, kv_out);
    max_i = std::max(max_i, I);
    LayerActs& a = act_.layers[static_cast<size_t>(l)];
    act(&a.x, "x", {N, C});
    act(&a.n1, "n1", {N, C});
    act(&a.rstd1, "rstd1", {N});
    act(&a.q, "q", {N, q_out});
    act(&a.k, "k", {N, kv_out});
    act(&a.v, "v", {N, kv_out});
    // Attention's saved state is opaque (the CPU backend keeps the softmax
    // probabilities): planned by size, in 4-byte words.
    const int64_t saved_bytes =
        backend_->AttentionSavedBytes(B, T, s.num_heads, s.num_kv_heads, static_cast<int>(HD));
    act(&a.attn_saved, "attn_saved", {(saved_bytes + 3) / 4});
    act(&a.att, "att", {N, q_out});
    act(&a.h, "h", {N, C});
    act(&a.n2, "n2", {N, C});
    act(&a.rstd2, "rstd2", {N});
    act(&a.gate, "gate", {N, I});
    act(&a.up, "up", {N, I});
    act(&a.act, "act", {N, I});
    for (int p = 0; p < kNumProj; ++p) {
      entries(plan.entries(l, static_cast<Proj>(p)), N, ProjIn(c, l, static_cast<Proj>(p)),
              ProjOut(c, l, static_cast<Proj>(p)), &a.lora_xa[p], &a.lora_mask[p]);
    }
  }
  act(&act_.x_final, "x_final", {N, C});
  act(&act_.nf, "nf", {N, C});
  act(&act_.rstdf, "rstdf", {N});
  // The [N, V] logits exist only for the LM head: the selected-rows head
  // never forms them.
  if (!selected) act(&act_.logits, "logits", {N, V});
  act(&act_.cos, "cos", {T, HD / 2});
  act(&act_.sin, "sin", {T, HD / 2});
  // lm_head entries: on all N rows and V columns for the LM head; on the M
  // selected rows and J columns (gathered) for the selected-rows head.
  entries(plan.lm_head(), selected ? plan_M : N, static_cast<int>(C),
          selected ? plan_J : static_cast<int>(V), &act_.head_xa, &act_.head_mask);
  int64_t head_kr = 0, head_k = 0;
  for (const AdapterEntry& e : plan.lm_head()) {
    head_kr = std::max<int64_t>(head_kr, e.kr());
    head_k = std::max<int64_t>(head_k, e.num_experts);
  }
  if (selected) {
    act(&act_.sel_logits, "sel_logits", {plan_M, plan_J});
    if (!plan.lm_head().empty()) act(&act_.sel_h, "sel_h", {plan_M, C});
  }
  const int64_t max_in = std::max({C, max_q, max_i});
  scr_ = Scratch{};
  scratch(&scr_.dx, "dx", {N, C});
  scratch(&scr_.dn, "dn", {N, C});
  scratch(&scr_.dq, "dq", {N, max_q});
  // dq, dk and datt trade buffers during RoPE backward: all sized for q.
  scratch(&scr_.dk, "dk", {N, max_q});
  scratch(&scr_.dv, "dv", {N, max_kv});
  scratch(&scr_.datt, "datt", {N, max_q});
  scratch(&scr_.dgate, "dgate", {N, max_i});
  scratch(&scr_.dup, "dup", {N, max_i});
  scratch(&scr_.dact, "dact", {N, max_i});
  if (selected) {
    SelectedRowsArgs args;
    args.n = static_cast<int>(N);
    args.C = static_cast<int>(C);
    args.V = static_cast<int>(V);
    args.num_rows = plan_M;
    args.num_cols = plan_J;
    scratch(&scr_.sel_dlogits, "sel_dlogits", {plan_M, plan_J});
    if (!plan.lm_head().empty()) {
      scratch(&scr_.sel_b, "sel_b", {plan_J, head_kr});
      scratch(&scr_.sel_db, "sel_db", {plan_J, head_kr});
      scratch(&scr_.sel_gate, "sel_gate", {plan_M, head_k});
      scratch(&scr_.sel_dgate, "sel_dgate", {plan_M, head_k});
      scratch(&scr_.sel_dh, "sel_dh", {plan_M, C});
    }
    scratch(&scr_.head_scratch, "head_scratch",
            {std::max<int64_t>(1, backend_->SelectedRowsHeadScratchFloats(args))});
  } else {
    scratch(&scr_.dlogits, "dlogits", {N, V});
  }
  scratch(&scr_.lora_scratch, "lora_scratch", {lora_scratch});
  // Fused groups' g = scale · dy · B, one block per entry of the group.
  int64_t fused_kr = 1;
  for (int l = 0; l < c.num_layers; ++l) {
    for (std::initializer_list<Proj> g : {std::initializer_list<Proj>{Proj::kQ, Proj::kK, Proj::kV},
                                          {Proj::kO}, {Proj::kGate, Proj::kUp}, {Proj::kDown}}) {
      int64_t kr = 0;
      for (Proj p : g) {
        for (const AdapterEntry& e : plan.entries(l, p)) kr += e.kr();
      }
      fused_kr = std::max(fused_kr, kr);
    }
  }
  scratch(&scr_.fused_g, "fused_g", {N, fused_kr});
  // Masked inputs and their gradients; the selected rows may outnumber N.
  scratch(&scr_.lora_tmp, "lora_tmp",
          {std::max<int64_t>(N, plan_M), any_dropout ? 2 * max_in : 1});
  acts_.Allocate();
  scratch_.Allocate();
  for (auto& [t, slot] : acts_binds) *t = acts_.view(slot);
  for (auto& [t, slot] : scratch_binds) *t = scratch_.view(slot);
  FillRopeTables(act_.cos.data, act_.sin.data, T);
  planned_B_ = B;
  planned_T_ = T;
  planned_layout_ = std::move(layout);
  planned_M_ = plan_M;
  planned_J_ = plan_J;
}

void Model::FillRopeTables(float* cos, float* sin, int64_t T) const {
  const ModelConfig& c = config_;
  const int64_t HD = c.head_dim;
  if (c.rope_scaling.none()) {
    backend_->RopeTables(cos, sin, static_cast<int>(T), static_cast<int>(HD), c.rope_theta);
    return;
  }
  // Scaled frequencies: the tables are made here, on the host (Create
  // refuses rope_scaling on a backend whose memory is not host memory).
  const std::vector<float> inv = RopeInvFreq(static_cast<int>(HD), c.rope_theta, c.rope_scaling);
  const int64_t half = HD / 2;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(t) * inv[static_cast<size_t>(i)];
      cos[t * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin[t * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

namespace {

// One linear layer with the adapter plan's entries on it:
//   y = x Wᵀ + b + Σ_entries mixture_e(drop_e(x))
struct LinearCall {
  const Param* w;
  const Param* bias;                         // may be null / empty
  const std::vector<AdapterEntry>* entries;  // the site's entries
  const std::vector<Tensor>* xa;             // per entry: saved x·A_catᵀ
  const std::vector<Tensor>* mask;           // per entry: dropout mask or empty
  bool bf16 = false;  // compute: bf16 (a frozen weight: bf16 x bf16 -> fp32)
};

void LinearWithPlanForward(Backend& be, float* y, const float* x, const LinearCall& c,
                           int64_t n, const AdapterPlan& plan, bool training, float* tmp,
                           float* lora_scratch) {
  const int out = static_cast<int>(c.w->value.dim(0)), in = static_cast<int>(c.w->value.dim(1));
  const float* bias = c.bias && c.bias->value ? c.bias->value.data : nullptr;
  if (c.bf16) {
    be.LinearForwardBf16Compute(y, x, c.w->value, bias, static_cast<int>(n));
  } else {
    be.LinearForward(y, x, c.w->value, bias, static_cast<int>(n));
  }
  for (size_t i = 0; i < c.entries->size(); ++i) {
    const AdapterEntry& e = (*c.entries)[i];
    const Tensor& mask = (*c.mask)[i];
    const float* xin = x;
    if (mask && training) {
      be.DropoutMask(mask.data, n * in, plan.dropout_row_offset() * in, e.dropout,
                     plan.dropout_seed(), e.dropout_stream);
      be.Mul(tmp, x, mask.data, n * in);
      xin = tmp;
    }
    be.LoraMixForward(EntryArgs(e, n, in, out), y, (*c.xa)[i].data, lora_scratch, xin);
  }
}

// Backward of LinearWithPlanForward: dx += ...; trainable grads (adapter
// factors, gates, base weights) accumulate.
void LinearWithPlanBackward(Backend& be, float* dx, const float* dy, const float* x,
                            const LinearCall& c, int64_t n, float* tmp, float* lora_scratch) {
  const int out = static_cast<int>(c.w->value.dim(0)), in = static_cast<int>(c.w->value.dim(1));
  float* dbias = c.bias && c.bias->grad ? c.bias->grad.data : nullptr;
  if (c.bf16) {
    be.LinearBackwardBf16Compute(dx, dbias, dy, c.w->value, static_cast<int>(n));
  } else {
    be.LinearBackward(dx, c.w->grad.data, dbias, dy, x, c.w->value, static_cast<int>(n));
  }
  for (size_t i = 0; i < c.entries->size(); ++i) {
    const AdapterEntry& e = (*c.entries)[i];
    const Tensor& mask = (*c.mask)[i];
    float* da = e.da ? e.da.data : nullptr;
    float* db = e.db ? e.db.data : nullptr;
    float* dgate = e.dgate ? e.dgate.data : nullptr;
    if (dx == nullptr && da == nullptr && db == nullptr && dgate == nullptr) continue;
    const LoraOpArgs args = EntryArgs(e, n, in, out);
    if (mask) {
      // Recompute the masked input, and route dx through the mask.
      float* xd = tmp;
      float* dxd = tmp + n * in;
      be.Mul(xd, x, mask.data, n * in);
      be.Zero(dxd, n * in * static_cast<int64_t>(sizeof(float)));
      be.LoraMixBackward(args, dx ? dxd : nullptr, da, db, dgate, lora_scratch, dy, xd,
                         (*c.xa)[i].data);
      if (dx) be.MulAdd(dx, dxd, mask.data, n * in);
    } else {
      be.LoraMixBackward(args, dx, da, db, dgate, lora_scratch, dy, x, (*c.xa)[i].data);
    }
  }
}

// Fused projections (ModelOptions::fuse_projections): members of a group
// read one input x [n, in]. A member fuses when its weight is a frozen f32
// matrix without bias and it carries at most one plain LoRA entry without
// dropout.
bool Fusable(const LinearCall& c) {
  const Tensor& w = c.w->value;
  if (c.bf16 || w.dtype != DType::kDTypeF32 || w.data == nullptr || c.w->trainable()) return false;
  if (c.bias != nullptr && c.bias->value) return false;
  if (c.entries->size() > 1) return false;
  for (const AdapterEntry& e : *c.entries) {
    if (!e.plain() || e.dropout > 0.0f) return false;
  }
  return true;
}

// ys[i] = x W_iᵀ (+ scale_i · (x A_iᵀ) B_iᵀ): the base products and the
// x A_iᵀ (saved as xa) in one GEMM over [W_0; W_1; ...; A_0; A_1; ...].
void FusedForward(Backend& be, const float* x, std::span<const LinearCall> calls,
                  std::span<float* const> ys, int64_t n) {
  const int in = static_cast<int>(calls[0].w->value.dim(1));
  std::vector<Backend::MatmulPart> parts;
  for (size_t i = 0; i < calls.size(); ++i) {
    parts.push_back({nullptr, calls[i].w->value.data, ys[i],
                     static_cast<int>(calls[i].w->value.dim(0))});
  }
  for (size_t i = 0; i < calls.size(); ++i) {
    for (const AdapterEntry& e : *calls[i].entries) {
      parts.push_back({nullptr, e.a.data, (*calls[i].xa)[0].data, e.kr()});
    }
  }
  be.MatmulSplitN(parts, x, static_cast<int>(n), in, 1.0f, 0.0f);
  for (size_t i = 0; i < calls.size(); ++i) {
    for (const AdapterEntry& e : *calls[i].entries) {
      be.Matmul(ys[i], (*calls[i].xa)[0].data, e.b.data, static_cast<int>(n),
                static_cast<int>(calls[i].w->value.dim(0)), e.kr(), false, true, e.scale, 1.0f);
    }
  }
}

// Backward of FusedForward. dx (may be null) is OVERWRITTEN with
//   Σ_i dy_i W_i + g_i A_i,  g_i = scale_i · dy_i B_i  (one GEMM, beta = 0);
// da_i += g_iᵀ x and db_i += scale_i · dy_iᵀ xa_i accumulate.
void FusedBackward(Backend& be, float* dx, std::span<const LinearCall> calls,
                   std::span<const float* const> dys, const float* x, int64_t n, float* g) {
  const int in = static_cast<int>(calls[0].w->value.dim(1));
  const int rows = static_cast<int>(n);
  std::vector<Backend::MatmulPart> parts;
  for (size_t i = 0; i < calls.size(); ++i) {
    parts.push_back({dys[i], calls[i].w->value.data, nullptr,
                     static_cast<int>(calls[i].w->value.dim(0))});
  }
  for (size_t i = 0; i < calls.size(); ++i) {
    const int out = static_cast<int>(calls[i].w->value.dim(0));
    for (const AdapterEntry& e : *calls[i].entries) {
      const int r = e.kr();
      if (dx != nullptr || e.da) {
        be.Matmul(g, dys[i], e.b.data, rows, r, out, false, false, e.scale, 0.0f);
        if (e.da) be.Matmul(e.da.data, g, x, r, in, rows, true, false, 1.0f, 1.0f);
        parts.push_back({g, e.a.data, nullptr, r});
        g += n * r;
      }
      if (e.db) {
        be.Matmul(e.db.data, dys[i], (*calls[i].xa)[0].data, out, r, rows, true, false, e.scale,
                  1.0f);
      }
    }
  }
  if (dx != nullptr) be.MatmulSplitK(dx, parts, rows, in, 1.0f, 0.0f);
}

}  // namespace

LossHead LossHead::SelectedRows(std::vector<int32_t> rows, std::vector<int32_t> cols,
                                std::vector<int32_t> targets) {
  LossHead h;
  h.kind = Kind::kLossHeadSelectedRows;
  h.rows = std::move(rows);
  h.cols = std::move(cols);
  h.targets = std::move(targets);
  return h;
}

absl::Status Model::UseAdapterPlan(LoraAdapter* adapter) {
  // The adapter's K = 1 plan is built once per adapter, in last_plan_, and
  // only its dropout stream is refreshed per call: building and copying a
  // plan costs ~1 us per module, which this path, called every micro-step,
  // need not pay.
  const uint64_t id = adapter != nullptr ? adapter->instance_id() : 0;
  if (!adapter_plan_cached_ || cached_adapter_id_ != id) {
    absl::StatusOr<AdapterPlan> plan = AdapterPlan::ForAdapter(adapter, config_.num_layers);
    if (!plan.ok()) return plan.status();
    last_plan_ = *std::move(plan);
    cached_adapter_id_ = id;
    adapter_plan_cached_ = true;
  } else if (adapter != nullptr) {
    last_plan_.set_dropout(adapter->dropout_seed(), adapter->dropout_row_offset());
  }
  return absl::OkStatus();
}

absl::StatusOr<LossStats> Model::Forward(const int32_t* tokens, const int32_t* targets, int B,
                                         int T, LoraAdapter* adapter, bool training) {
  RETURN_IF_ERROR(UseAdapterPlan(adapter));
  return Forward(tokens, targets, B, T, last_plan_, training);
}

absl::StatusOr<Model::KvCache> Model::NewKvCache(int max_len) const {
  const ModelConfig& c = config_;
  if (max_len < 1) return absl::InvalidArgumentError(absl::StrCat("KV cache length ", max_len, " < 1"));
  if (max_len > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache length ", max_len,
                                                   " exceeds max_position_embeddings ",
                                                   c.max_position_embeddings));
  }
  KvCache cache;
  cache.max_len = max_len;
  for (const LayerShape& s : c.layers) {
    const size_t row = static_cast<size_t>(s.num_kv_heads) * static_cast<size_t>(c.head_dim);
    cache.k.emplace_back(static_cast<size_t>(max_len) * row, 0.0f);
    cache.v.emplace_back(static_cast<size_t>(max_len) * row, 0.0f);
  }
  const size_t half = static_cast<size_t>(c.head_dim / 2);
  cache.cos.assign(static_cast<size_t>(max_len) * half, 0.0f);
  cache.sin.assign(static_cast<size_t>(max_len) * half, 0.0f);
  FillRopeTables(cache.cos.data(), cache.sin.data(), max_len);
  return cache;
}

absl::Status Model::ForwardCached(const int32_t* tokens, int n, LoraAdapter* adapter,
                                  KvCache& cache) {
  const ModelConfig& c = config_;
  if (backend_->device() != Device::kDeviceCpu) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the KV cache is host-only so far; backend ", backend_->name(), " keeps device memory"));
  }
  if (n < 1) return absl::InvalidArgumentError("ForwardCached: no tokens");
  if (cache.k.size() != c.layers.size() || cache.cos.size() != static_cast<size_t>(cache.max_len) * (c.head_dim / 2)) {
    return absl::InvalidArgumentError("ForwardCached: the cache was made for another model");
  }
  const int end = cache.len + n;
  if (end > cache.max_len) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache full: ", cache.len, " + ", n,
                                                   " positions > its length ", cache.max_len));
  }
  if (c.sliding_window > 0 && end > c.sliding_window) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence length ", end, " exceeds the config's sliding_window ", c.sliding_window,
        ": sliding-window attention is not implemented"));
  }
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token ", tokens[i], " at position ",
                                                     cache.len + i, " is outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
    }
  }
  RETURN_IF_ERROR(UseAdapterPlan(adapter));
  RETURN_IF_ERROR(last_plan_.Validate(c, n));
  PlanActivations(1, n, last_plan_, LossHead::Lm());
  RETURN_IF_ERROR(ForwardTrunk(tokens, 1, n, /*training=*/false, /*will_backward=*/false, &cache));
  const LinearCall call{&weights_.lm_head, nullptr, &last_plan_.lm_head(), &act_.head_xa,
                        &act_.head_mask};
  LinearWithPlanForward(*backend_, act_.logits.data, act_.nf.data, call, n, last_plan_, false,
                        scr_.lora_tmp.data, scr_.lora_scratch.data);
  last_training_ = false;
  ReleaseGroup(kEdgeGroup);
  cache.len = end;
  return absl::OkStatus();
}

namespace {

// Attention of n new rows (positions p0 .. p0 + n - 1) over a cache holding
// keys and values of positions 0 .. p0 + n - 1 (the new ones written):
// out [n, NH*HD] = softmax(q kᵀ / sqrt(HD), causal) v, the sums in double.
void CachedAttention(float* out, const float* q, const float* k, const float* v, int n, int p0,
                     int NH, int KVH, int HD) {
  const int group = NH / KVH;
  const double scale = 1.0 / std::sqrt(static_cast<double>(HD));
  const int64_t kv_row = int64_t{KVH} * HD, q_row = int64_t{NH} * HD;
  std::vector<double> score(static_cast<size_t>(p0 + n));
  std::vector<double> acc(static_cast<size_t>(HD));
  for (int i = 0; i < n; ++i) {
    const int last = p0 + i;  // attends to 0..last
    for (int h = 0; h < NH; ++h) {
      const float* qi = q + i * q_row + int64_t{h} * HD;
      const int64_t koff = int64_t{h / group} * HD;
      double mx = -std::numeric_limits<double>::infinity();
      for (int j = 0; j <= last; ++j) {
        const float* kj = k + j * kv_row + koff;
        double dot = 0;
        for (int d = 0; d < HD; ++d) dot += static_cast<double>(qi[d]) * kj[d];
        score[static_cast<size_t>(j)] = dot * scale;
        mx = std::max(mx, score[static_cast<size_t>(j)]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int j = 0; j <= last; ++j) {
        const double p = std::exp(score[static_cast<size_t>(j)] - mx);
        sum += p;
        const float* vj = v + j * kv_row + koff;
        for (int d = 0; d < HD; ++d) acc[static_cast<size_t>(d)] += p * vj[d];
      }
      float* oi = out + i * q_row + int64_t{h} * HD;
      for (int d = 0; d < HD; ++d) oi[d] = static_cast<float>(acc[static_cast<size_t>(d)] / sum);
    }
  }
}

}  // namespace

absl::Status Model::CheckHead(const LossHead& head, int64_t N) const {
  if (head.kind == LossHead::Kind::kLossHeadLm) return absl::OkStatus();
  const int64_t V = config_.vocab_size;
  const int64_t J = static_cast<int64_t>(head.cols.size());
  if (head.cols.empty()) return absl::InvalidArgumentError("selected-rows head: no columns");
  if (head.targets.size() != head.rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("selected-rows head: ", head.rows.size(),
                                                   " rows but ", head.targets.size(),
                                                   " targets"));
  }
  for (size_t m = 0; m < head.rows.size(); ++m) {
    if (head.rows[m] < 0 || head.rows[m] >= N) {
      return absl::InvalidArgumentError(absl::StrCat("selected-rows head: row ", head.rows[m],
                                                     " is outside the batch's ", N, " rows"));
    }
    if (head.targets[m] != kIgnoreIndex && (head.targets[m] < 0 || head.targets[m] >= J)) {
      return absl::InvalidArgumentError(absl::StrCat("selected-rows head: target ",
                                                     head.targets[m], " of row ", m,
                                                     " is outside the ", J, " columns"));
    }
  }
  for (int32_t col : head.cols) {
    if (col < 0 || col >= V) {
      return absl::InvalidArgumentError(absl::StrCat("selected-rows head: column ", col,
                                                     " is outside the vocabulary"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LossStats> Model::Forward(const int32_t* tokens, const int32_t* targets, int B,
                                         int T, const AdapterPlan& plan, bool training,
                                         const LossHead& head) {
  const ModelConfig& c = config_;
  const bool selected = head.kind == LossHead::Kind::kLossHeadSelectedRows;
  if (B <= 0 || T <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("batch ", B, " x ", T, " is empty"));
  }
  if (c.sliding_window > 0 && T > c.sliding_window) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence length ", T, " exceeds the config's sliding_window ", c.sliding_window,
        ": the window would mask attention and sliding-window attention is not implemented "
        "(use a sequence length <= ", c.sliding_window, ")"));
  }
  if (T > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("sequence length ", T,
                                                   " exceeds max_position_embeddings ",
                                                   c.max_position_embeddings));
  }
  const int64_t N = int64_t{B} * T;
  for (int64_t i = 0; i < N; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token ", tokens[i], " at position ", i,
                                                     " is outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
    }
    if (targets && targets[i] != kIgnoreIndex && (targets[i] < 0 || targets[i] >= c.vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat("target ", targets[i], " at position ", i,
                                                     " is outside the vocabulary"));
    }
  }
  if (selected && targets != nullptr) {
    return absl::InvalidArgumentError(
        "the selected-rows head takes its targets from the head, not per token");
  }
  RETURN_IF_ERROR(CheckHead(head, N));
  RETURN_IF_ERROR(plan.Validate(c, N));
  PlanActivations(B, T, plan, head);
  if (&plan != &last_plan_) {
    last_plan_ = plan;  // views only; Backward reads them
    adapter_plan_cached_ = false;
  }
  const int V = c.vocab_size;
  const bool will_backward = training && (selected ? !head.targets.empty() : targets != nullptr);

  RETURN_IF_ERROR(ForwardTrunk(tokens, B, T, training, will_backward));
  LossStats stats;
  if (selected) {
    const SelectedRowsArgs args = HeadArgs(head, N);
    backend_->SelectedRowsHeadForward(args, act_.sel_logits.data, nullptr, &stats.loss_sum,
                                      &stats.tokens, scr_.head_scratch.data, act_.nf.data,
                                      weights_.lm_head.value, 0.0f);
    if (!last_plan_.lm_head().empty()) {
      // The lm_head entries add onto the selected logits; the loss is then
      // taken again (M x J values: negligible).
      SelectedHeadEntriesForward(head, training);
      stats = LossStats{};
      backend_->CrossEntropy(nullptr, &stats.loss_sum, &stats.tokens, act_.sel_logits.data,
                             head.targets.data(), args.num_rows, args.num_cols, kIgnoreIndex,
                             0.0f);
    }
  } else {
    const LinearCall call{&weights_.lm_head, nullptr, &last_plan_.lm_head(), &act_.head_xa,
                          &act_.head_mask};
    LinearWithPlanForward(*backend_, act_.logits.data, act_.nf.data, call, N, last_plan_,
                          training, scr_.lora_tmp.data, scr_.lora_scratch.data);
    if (targets) {
      backend_->CrossEntropy(nullptr, &stats.loss_sum, &stats.tokens, act_.logits.data, targets,
                             static_cast<int>(N), V, kIgnoreIndex, 0.0f);
    }
  }
  last_training_ = will_backward;
  if (last_training_) {
    edges_held_ = true;  // Backward starts with the head
  } else {
    ReleaseGroup(kEdgeGroup);
  }
  if (last_training_) {
    last_tokens_copy_.assign(tokens, tokens + N);
    if (selected) {
      last_targets_copy_.clear();
    } else {
      last_targets_copy_.assign(targets, targets + N);
    }
    last_head_ = head;
    last_B_ = B;
    last_T_ = T;
  }
  return stats;
}

SelectedRowsArgs Model::HeadArgs(const LossHead& head, int64_t N) const {
  SelectedRowsArgs args;
  args.n = static_cast<int>(N);
  args.C = config_.hidden_size;
  args.V = config_.vocab_size;
  args.num_rows = static_cast<int>(head.rows.size());
  args.num_cols = static_cast<int>(head.cols.size());
  args.rows = head.rows.data();
  args.cols = head.cols.data();
  args.targets = head.targets.data();
  args.ignore_index = kIgnoreIndex;
  return args;
}

namespace {

// The gate rows the selected rows read: gate row rows[m] / P.
std::vector<int32_t> GateRowsOf(const std::vector<int32_t>& rows, int rows_per_group) {
  std::vector<int32_t> idx(rows.size());
  for (size_t m = 0; m < rows.size(); ++m) idx[m] = rows[m] / rows_per_group;
  return idx;
}

}  // namespace

// lm_head entries under the selected-rows head, on the M selected rows of h
// (gathered into act_.sel_h) and the J selected columns (B_cat's rows and
// the gate rows gathered per entry):
//   sel_logits += mixture_e(drop_e(h[rows]))[:, cols]
// Dropout masks are drawn for the selected rows' global indices, so they are
// the masks the LM head would use on those rows.
void Model::SelectedHeadEntriesForward(const LossHead& head, bool training) {
  const AdapterPlan& plan = last_plan_;
  const int M = static_cast<int>(head.rows.size());
  const int C = config_.hidden_size;
  float* tmp = scr_.lora_tmp.data;
  backend_->GatherRows(act_.sel_h.data, act_.nf.data, head.rows.data(), M, C);
  for (size_t i = 0; i < plan.lm_head().size(); ++i) {
    const AdapterEntry& e = plan.lm_head()[i];
    const Tensor& mask = act_.head_mask[i];
    const float* xin = act_.sel_h.data;
    if (mask && training) {
      for (int m = 0; m < M; ++m) {
        backend_->DropoutMask(mask.data + int64_t{m} * C, C,
                              (plan.dropout_row_offset() + head.rows[m]) * int64_t{C},
                              e.dropout, plan.dropout_seed(), e.dropout_stream);
      }
      backend_->Mul(tmp, act_.sel_h.data, mask.data, int64_t{M} * C);
      xin = tmp;
    }
    backend_->LoraMixForward(SelectedEntryArgs(e, head), act_.sel_logits.data,
                             act_.head_xa[i].data, scr_.lora_scratch.data, xin);
  }
}

LoraOpArgs Model::SelectedEntryArgs(const AdapterEntry& e, const LossHead& head) {
  const int M = static_cast<int>(head.rows.size()), J = static_cast<int>(head.cols.size());
  LoraOpArgs args = EntryArgs(e, M, config_.hidden_size, J);
  backend_->GatherRows(scr_.sel_b.data, e.b.data, head.cols.data(), J, e.kr());
  args.b = scr_.sel_b.data;
  if (e.gate) {
    const std::vector<int32_t> idx = GateRowsOf(head.rows, e.rows_per_group);
    backend_->GatherRows(scr_.sel_gate.data, e.gate.data, idx.data(), M, e.num_experts);
    args.gate = scr_.sel_gate.data;
    args.rows_per_group = 1;
  }
  return args;
}

// Backward of SelectedHeadEntriesForward: gradients of the gathered B rows,
// gate rows and h rows are formed densely and scattered back by index.
void Model::SelectedHeadEntriesBackward(const LossHead& head) {
  const AdapterPlan& plan = last_plan_;
  const int M = static_cast<int>(head.rows.size()), J = static_cast<int>(head.cols.size());
  const int C = config_.hidden_size;
  const int64_t mc = int64_t{M} * C;
  float* tmp = scr_.lora_tmp.data;
  auto zero = [&](float* p, int64_t n) {
    backend_->Zero(p, n * static_cast<int64_t>(sizeof(float)));
  };
  zero(scr_.sel_dh.data, mc);
  for (size_t i = 0; i < plan.lm_head().size(); ++i) {
    const AdapterEntry& e = plan.lm_head()[i];
    const Tensor& mask = act_.head_mask[i];
    const LoraOpArgs args = SelectedEntryArgs(e, head);
    float* db = e.db ? scr_.sel_db.data : nullptr;
    float* dgate = e.dgate ? scr_.sel_dgate.data : nullptr;
    if (db) zero(db, int64_t{J} * e.kr());
    if (dgate) zero(dgate, int64_t{M} * e.num_experts);
    float* da = e.da ? e.da.data : nullptr;
    if (mask) {
      float* xd = tmp;
      float* dxd = tmp + mc;
      backend_->Mul(xd, act_.sel_h.data, mask.data, mc);
      zero(dxd, mc);
      backend_->LoraMixBackward(args, dxd, da, db, dgate, scr_.lora_scratch.data,
                                scr_.sel_dlogits.data, xd, act_.head_xa[i].data);
      backend_->MulAdd(scr_.sel_dh.data, dxd, mask.data, mc);
    } else {
      backend_->LoraMixBackward(args, scr_.sel_dh.data, da, db, dgate, scr_.lora_scratch.data,
                                scr_.sel_dlogits.data, act_.sel_h.data, act_.head_xa[i].data);
    }
    if (db) backend_->ScatterAddRows(e.db.data, db, head.cols.data(), J, e.kr());
    if (dgate) {
      const std::vector<int32_t> idx = GateRowsOf(head.rows, e.rows_per_group);
      backend_->ScatterAddRows(e.dgate.data, dgate, idx.data(), M, e.num_experts);
    }
  }
  backend_->ScatterAddRows(scr_.dn.data, scr_.sel_dh.data, head.rows.data(), M, C);
}

// Embedding, layers and the final norm: act_.nf holds the final hidden
// states. Leaves the edge group acquired (the head reads lm_head).
absl::Status Model::ForwardTrunk(const int32_t* tokens, int B, int T, bool training,
                                 bool will_backward, KvCache* cache) {
  const ModelConfig& c = config_;
  const int64_t N = int64_t{B} * T;
  const int C = c.hidden_size, HD = c.head_dim;
  const AdapterPlan& plan = last_plan_;
  float* tmp = scr_.lora_tmp.data;
  float* lora_scratch = scr_.lora_scratch.data;

  if (edges_held_) {  // a training Forward that was never followed by Backward
    ReleaseGroup(kEdgeGroup);
    edges_held_ = false;
  }
  RETURN_IF_ERROR(AcquireGroup(kEdgeGroup));
  PrefetchGroup(LayerGroup(0));
  backend_->EmbeddingForward(act_.layers.empty() ? act_.x_final.data : act_.layers[0].x.data,
                             tokens, weights_.embed.value, static_cast<int>(N));
  ReleaseGroup(kEdgeGroup);
  for (int l = 0; l < c.num_layers; ++l) {
    RETURN_IF_ERROR(AcquireGroup(LayerGroup(l)));
    PrefetchGroup(l + 1 < c.num_layers ? LayerGroup(l + 1) : kEdgeGroup);
    const LayerShape& s = c.layers[static_cast<size_t>(l)];
    LayerWeights& w = weights_.layers[static_cast<size_t>(l)];
    LayerActs& a = act_.layers[static_cast<size_t>(l)];
    float* out = l + 1 < c.num_layers ? act_.layers[static_cast<size_t>(l) + 1].x.data
                                      : act_.x_final.data;
    auto call = [&](Proj p, const Param* bias) {
      return LinearCall{w.proj(p), bias, &plan.entries(l, p), &a.lora_xa[static_cast<int>(p)],
                        &a.lora_mask[static_cast<int>(p)],
                        bf16_compute_ && !w.proj(p)->trainable()};
    };
    auto linear = [&](float* y, const float* x, Proj p, const Param* bias) {
      LinearWithPlanForward(*backend_, y, x, call(p, bias), N, plan, training, tmp, lora_scratch);
    };
    backend_->RmsNormForward(a.n1.data, a.rstd1.data, a.x.data, w.input_norm.value.data,
                             static_cast<int>(N), C, c.rms_norm_eps);
    // A group of projections on one input: fused, or one by one.
    auto group = [&](const float* x, std::initializer_list<Proj> ps,
                     std::initializer_list<const Param*> biases, std::initializer_list<float*> ys) {
      std::vector<LinearCall> calls;
      auto b = biases.begin();
      for (Proj p : ps) calls.push_back(call(p, *b++));
      const bool fuse = fuse_projections_ &&
                        std::all_of(calls.begin(), calls.end(), [](const LinearCall& lc) { return Fusable(lc); });
      if (fuse) {
        FusedForward(*backend_, x, calls, std::vector<float*>(ys), N);
        return;
      }
      auto y = ys.begin();
      b = biases.begin();
      for (Proj p : ps) linear(*y++, x, p, *b++);
    };
    group(a.n1.data, {Proj::kQ, Proj::kK, Proj::kV}, {&w.q_bias, &w.k_bias, &w.v_bias},
          {a.q.data, a.k.data, a.v.data});
    if (cache != nullptr) {
      // Positions cache->len ..: the tables from there; k and v appended.
      const int64_t off = int64_t{cache->len} * (HD / 2), row = int64_t{s.num_kv_heads} * HD;
      const float* cos = cache->cos.data() + off;
      const float* sin = cache->sin.data() + off;
      backend_->RopeForward(a.q.data, a.q.data, cos, sin, 1, T, s.num_heads, HD);
      backend_->RopeForward(a.k.data, a.k.data, cos, sin, 1, T, s.num_kv_heads, HD);
      float* kc = cache->k[static_cast<size_t>(l)].data();
      float* vc = cache->v[static_cast<size_t>(l)].data();
      std::memcpy(kc + cache->len * row, a.k.data, static_cast<size_t>(T * row) * sizeof(float));
      std::memcpy(vc + cache->len * row, a.v.data, static_cast<size_t>(T * row) * sizeof(float));
      CachedAttention(a.att.data, a.q.data, kc, vc, T, cache->len, s.num_heads, s.num_kv_heads,
                      HD);
    } else {
      backend_->RopeForward(a.q.data, a.q.data, act_.cos.data, act_.sin.data, B, T, s.num_heads,
                            HD);
      backend_->RopeForward(a.k.data, a.k.data, act_.cos.data, act_.sin.data, B, T,
                            s.num_kv_heads, HD);
      backend_->AttentionForward(a.att.data, a.attn_saved.data, a.q.data, a.k.data, a.v.data, B,
                                 T, s.num_heads, s.num_kv_heads, HD);
    }
    group(a.att.data, {Proj::kO}, {&w.o_bias}, {a.h.data});
    backend_->Add(a.h.data, a.h.data, a.x.data, N * C);
    backend_->RmsNormForward(a.n2.data, a.rstd2.data, a.h.data, w.post_norm.value.data,
                             static_cast<int>(N), C, c.rms_norm_eps);
    group(a.n2.data, {Proj::kGate, Proj::kUp}, {&w.gate_bias, &w.up_bias},
          {a.gate.data, a.up.data});
    backend_->SwiGluForward(a.act.data, a.gate.data, a.up.data, N * s.intermediate);
    group(a.act.data, {Proj::kDown}, {&w.down_bias}, {out});
    backend_->Add(out, out, a.h.data, N * C);
    ReleaseGroup(LayerGroup(l));
  }
  RETURN_IF_ERROR(AcquireGroup(kEdgeGroup));
  // With external frozen storage the embedding view moves; a tied head follows.
  if (c.tie_word_embeddings) weights_.lm_head.value.data = weights_.embed.value.data;
  if (will_backward && c.num_layers > 0) PrefetchGroup(LayerGroup(c.num_layers - 1));
  backend_->RmsNormForward(act_.nf.data, act_.rstdf.data, act_.x_final.data,
                           weights_.norm.value.data, static_cast<int>(N), C, c.rms_norm_eps);
  return absl::OkStatus();
}

absl::Status Model::Backward(float grad_scale) {
  if (!last_training_) {
    return absl::FailedPreconditionError("Backward needs a training Forward with targets first");
  }
  last_training_ = false;
  const ModelConfig& c = config_;
  const int B = last_B_, T = last_T_, C = c.hidden_size, HD = c.head_dim, V = c.vocab_size;
  const int64_t N = int64_t{B} * T;
  const AdapterPlan& plan = last_plan_;
  float* lora_scratch = scr_.lora_scratch.data;
  float* tmp = scr_.lora_tmp.data;
  float* dx = scr_.dx.data;
  float* dn = scr_.dn.data;
  auto zero_rows = [&](const Tensor& t, int64_t n_elems) {
    backend_->Zero(t.data, n_elems * static_cast<int64_t>(sizeof(float)));
  };

  // The loss head: d(final hidden states) into dn.
  double unused_sum = 0;
  int64_t unused_n = 0;
  if (last_head_.kind == LossHead::Kind::kLossHeadSelectedRows) {
    const SelectedRowsArgs args = HeadArgs(last_head_, N);
    backend_->CrossEntropy(scr_.sel_dlogits.data, &unused_sum, &unused_n, act_.sel_logits.data,
                           last_head_.targets.data(), args.num_rows, args.num_cols, kIgnoreIndex,
                           grad_scale);
    zero_rows(scr_.dn, N * C);
    backend_->SelectedRowsHeadBackward(args, dn, weights_.lm_head.grad.data,
                                       scr_.head_scratch.data, scr_.sel_dlogits.data,
                                       act_.nf.data, weights_.lm_head.value);
    if (!plan.lm_head().empty()) SelectedHeadEntriesBackward(last_head_);
  } else {
    backend_->CrossEntropy(scr_.dlogits.data, &unused_sum, &unused_n, act_.logits.data,
                           last_targets_copy_.data(), static_cast<int>(N), V, kIgnoreIndex,
                           grad_scale);
    zero_rows(scr_.dn, N * C);
    const LinearCall head{&weights_.lm_head, nullptr, &plan.lm_head(), &act_.head_xa,
                          &act_.head_mask};
    LinearWithPlanBackward(*backend_, dn, scr_.dlogits.data, act_.nf.data, head, N, tmp,
                           lora_scratch);
  }
  zero_rows(scr_.dx, N * C);
  backend_->RmsNormBackward(dx, weights_.norm.grad.data, dn, act_.x_final.data,
                            weights_.norm.value.data, act_.rstdf.data, static_cast<int>(N), C);
  ReleaseGroup(kEdgeGroup);
  edges_held_ = false;
  // A trainable embedding's gradient is only final after the embedding
  // backward at the very end, so the edge group is reported last.

  for (int l = c.num_layers - 1; l >= 0; --l) {
    RETURN_IF_ERROR(AcquireGroup(LayerGroup(l)));
    if (l > 0) PrefetchGroup(LayerGroup(l - 1));
    const LayerShape& s = c.layers[static_cast<size_t>(l)];
    LayerWeights& w = weights_.layers[static_cast<size_t>(l)];
    LayerActs& a = act_.layers[static_cast<size_t>(l)];
    const int64_t I = s.intermediate, q_out = int64_t{s.num_heads} * HD,
                  kv_out = int64_t{s.num_kv_heads} * HD;
    auto linear = [&](float* d_in, const float* dy, const float* x, Proj p, const Param* bias) {
      const LinearCall call{w.proj(p), bias, &plan.entries(l, p), &a.lora_xa[static_cast<int>(p)],
                            &a.lora_mask[static_cast<int>(p)],
                            bf16_compute_ && !w.proj(p)->trainable()};
      LinearWithPlanBackward(*backend_, d_in, dy, x, call, N, tmp, lora_scratch);
    };
    // A group of projections on one input x: d_in (may be null) is
    // overwritten with the sum of their input gradients; fused (one GEMM
    // with beta = 0) or one by one after zeroing d_in.
    auto group = [&](float* d_in, const float* x, std::initializer_list<Proj> ps,
                     std::initializer_list<const Param*> biases,
                     std::initializer_list<const float*> dys) {
      std::vector<LinearCall> calls;
      auto b = biases.begin();
      for (Proj p : ps) {
        calls.push_back(LinearCall{w.proj(p), *b++, &plan.entries(l, p),
                                   &a.lora_xa[static_cast<int>(p)],
                                   &a.lora_mask[static_cast<int>(p)],
                                   bf16_compute_ && !w.proj(p)->trainable()});
      }
      const bool fuse = fuse_projections_ &&
                        std::all_of(calls.begin(), calls.end(), [](const LinearCall& lc) { return Fusable(lc); });
      if (fuse) {
        FusedBackward(*backend_, d_in, calls, std::vector<const float*>(dys), x, N,
                      scr_.fused_g.data);
        return;
      }
      if (d_in != nullptr) {
        backend_->Zero(d_in, N * calls[0].w->value.dim(1) * static_cast<int64_t>(sizeof(float)));
      }
      auto dy = dys.begin();
      b = biases.begin();
      for (Proj p : ps) linear(d_in, *dy++, x, p, *b++);
    };
    // dx holds d(layer output). out = h + down(act).
    group(scr_.dact.data, a.act.data, {Proj::kDown}, {&w.down_bias}, {dx});
    zero_rows(scr_.dgate, N * I);
    zero_rows(scr_.dup, N * I);
    backend_->SwiGluBackward(scr_.dgate.data, scr_.dup.data, scr_.dact.data, a.gate.data,
                             a.up.data, N * I);
    group(dn, a.n2.data, {Proj::kGate, Proj::kUp}, {&w.gate_bias, &w.up_bias},
          {scr_.dgate.data, scr_.dup.data});
    // dh = d(out) (residual) + rmsnorm backward.
    backend_->RmsNormBackward(dx, w.post_norm.grad.data, dn, a.h.data, w.post_norm.value.data,
                              a.rstd2.data, static_cast<int>(N), C);
    // h = x + o(att).
    group(scr_.datt.data, a.att.data, {Proj::kO}, {&w.o_bias}, {dx});
    zero_rows(scr_.dq, N * q_out);
    zero_rows(scr_.dk, N * kv_out);
    zero_rows(scr_.dv, N * kv_out);
    backend_->AttentionBackward(scr_.dq.data, scr_.dk.data, scr_.dv.data, scr_.datt.data,
                                a.q.data, a.k.data, a.v.data, a.attn_saved.data, B, T,
                                s.num_heads, s.num_kv_heads, HD);
    // RoPE is a rotation: un-rotate dq and dk (datt is free scratch now).
    zero_rows(scr_.datt, N * q_out);
    backend_->RopeBackward(scr_.datt.data, scr_.dq.data, act_.cos.data, act_.sin.data, B, T,
                           s.num_heads, HD);
    std::swap(scr_.dq.data, scr_.datt.data);
    zero_rows(scr_.datt, N * kv_out);
    backend_->RopeBackward(scr_.datt.data, scr_.dk.data, act_.cos.data, act_.sin.data, B, T,
                           s.num_kv_heads, HD);
    std::swap(scr_.dk.data, scr_.datt.data);
    // Below layer 0 the input gradient only matters for a trainable embedding.
    const bool need_dx = l > 0 || weights_.embed.trainable();
    float* dn_or_null = need_dx || w.input_norm.trainable() ? dn : nullptr;
    group(dn_or_null, a.n1.data, {Proj::kQ, Proj::kK, Proj::kV},
          {&w.q_bias, &w.k_bias, &w.v_bias}, {scr_.dq.data, scr_.dk.data, scr_.dv.data});
    if (dn_or_null) {
      backend_->RmsNormBackward(dx, w.input_norm.grad.data, dn, a.x.data,
                                w.input_norm.value.data, a.rstd1.data, static_cast<int>(N), C);
    }
    ReleaseGroup(LayerGroup(l));
    RETURN_IF_ERROR(GradsReady(LayerGroup(l)));
  }
  if (weights_.embed.trainable()) {
    backend_->EmbeddingBackward(weights_.embed.grad.data, dx, last_tokens_copy_.data(),
                                static_cast<int>(N), C);
  }
  return GradsReady(kEdgeGroup);
}

absl::Status Model::ApplyAdapter(const LoraAdapter& adapter, float coefficient) {
  if (frozen_source_ != nullptr) {
    return absl::FailedPreconditionError("cannot merge into sharded frozen weights");
  }
  if (adapter.num_experts() != 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot merge a bank of ", adapter.num_experts(), " experts: its mixture needs a gate"));
  }
  if (adapter.num_layers() != config_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("adapter has ", adapter.num_layers(),
                                                   " layers, the model ", config_.num_layers));
  }
  if (adapter.lm_head() && config_.tie_word_embeddings) {
    return absl::FailedPreconditionError(
        "cannot merge a LoRA on lm_head into tied word embeddings: it would change the input "
        "embeddings too (untie them first)");
  }
  for (Param* p : weights_.all()) {
    if (p->value.dtype != DType::kDTypeF32) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot merge an adapter into ", DTypeName(p->value.dtype), " frozen weights (",
          p->name, "): load the model with frozen_dtype f32"));
    }
  }
  auto merge = [&](Param* w, const LoraModule& m) {
    // W[out,in] += coefficient · s · B[out,R] @ A[R,in] (s of this module;
    // ±1 · s is exact, so Merge/Unmerge are today's products).
    backend_->Matmul(w->value.data, m.b.data, m.a.data, m.out, m.in,
                     static_cast<int>(m.a.dim(0)), false, false, coefficient * m.scale, 1.0f);
  };
  for (int l = 0; l < config_.num_layers; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      const LoraModule* m = adapter.module(l, static_cast<Proj>(p));
      if (m) merge(weights_.layers[static_cast<size_t>(l)].proj(static_cast<Proj>(p)), *m);
    }
  }
  if (adapter.lm_head()) merge(&weights_.lm_head, *adapter.lm_head());
  return absl::OkStatus();
}

absl::Status Model::MergeAdapter(const LoraAdapter& adapter) { return ApplyAdapter(adapter, 1.0f); }
absl::Status Model::UnmergeAdapter(const LoraAdapter& adapter) {
  return ApplyAdapter(adapter, -1.0f);
}

}  // namespace sheaf
