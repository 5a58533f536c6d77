#include "core/prune/pruning_map.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "core/json.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace sheaf::prune {
namespace {

std::string MlpKey(int l) { return absl::StrCat("model.layers.", l, ".mlp.kept_channels"); }
std::string KvKey(int l) { return absl::StrCat("model.layers.", l, ".self_attn.kept_kv_heads"); }
std::string HeadsKey(int l) { return absl::StrCat("model.layers.", l, ".self_attn.kept_heads"); }

std::vector<int32_t> Iota(int n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = i;
  return v;
}

absl::Status CheckIndices(const std::vector<int32_t>& v, int limit, const std::string& what) {
  if (v.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": keeps nothing"));
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] < 0 || v[i] >= limit) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": index ", v[i], " at position ", i, " is outside [0, ", limit, ")"));
    }
    if (i > 0 && v[i] <= v[i - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": indices must be strictly ascending (position ", i, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<int32_t> HeadsOfGroups(const std::vector<int32_t>& kv_heads, const LayerShape& s) {
  const int per_group = s.num_heads / s.num_kv_heads;
  std::vector<int32_t> heads;
  for (int32_t g : kv_heads) {
    for (int j = 0; j < per_group; ++j) heads.push_back(g * per_group + j);
  }
  return heads;
}

PruningMap IdentityMap(const ModelConfig& config) {
  PruningMap m;
  m.original = config;
  for (const LayerShape& s : config.layers) {
    m.layers.push_back({Iota(s.intermediate), Iota(s.num_kv_heads), Iota(s.num_heads)});
  }
  return m;
}

ModelConfig PruningMap::PrunedConfig() const {
  ModelConfig c = original;
  for (size_t l = 0; l < layers.size() && l < c.layers.size(); ++l) {
    c.layers[l] = {static_cast<int>(layers[l].heads.size()),
                   static_cast<int>(layers[l].kv_heads.size()),
                   static_cast<int>(layers[l].mlp.size())};
  }
  return c;
}

bool PruningMap::LayerIntact(int l) const {
  const LayerShape& s = original.layers[static_cast<size_t>(l)];
  const LayerKept& k = layers[static_cast<size_t>(l)];
  return static_cast<int>(k.mlp.size()) == s.intermediate &&
         static_cast<int>(k.heads.size()) == s.num_heads;
}

absl::Status PruningMap::Validate() const {
  RETURN_IF_ERROR(original.Validate());
  if (static_cast<int>(layers.size()) != original.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("the map has ", layers.size(),
                                                   " layers, the model ", original.num_layers));
  }
  for (int l = 0; l < original.num_layers; ++l) {
    const LayerShape& s = original.layers[static_cast<size_t>(l)];
    const LayerKept& k = layers[static_cast<size_t>(l)];
    RETURN_IF_ERROR(CheckIndices(k.mlp, s.intermediate, MlpKey(l)));
    RETURN_IF_ERROR(CheckIndices(k.kv_heads, s.num_kv_heads, KvKey(l)));
    RETURN_IF_ERROR(CheckIndices(k.heads, s.num_heads, HeadsKey(l)));
    if (k.heads != HeadsOfGroups(k.kv_heads, s)) {
      return absl::InvalidArgumentError(absl::StrCat(
          HeadsKey(l), ": must be exactly the query heads of the kept KV groups (",
          s.num_heads / s.num_kv_heads, " per group)"));
    }
  }
  return absl::OkStatus();
}

// The safetensors writer of core/ writes floats only; indices are written
// here as I32 with the same framing (8-byte little-endian header length,
// JSON header, data).
absl::Status SavePruningMap(const PruningMap& map, const std::string& path) {
  RETURN_IF_ERROR(map.Validate());
  Json header = Json::Object();
  Json meta = Json::Object();
  meta.Set("format", kPruningMapFormat);
  meta.Set("version", "1");
  meta.Set("original_config", map.original.ToJson());
  meta.Set("ratio", absl::StrCat(map.ratio));
  meta.Set("method", map.method);
  header.Set("__metadata__", std::move(meta));
  std::string data;
  auto add = [&](const std::string& name, const std::vector<int32_t>& v) {
    Json t = Json::Object();
    t.Set("dtype", "I32");
    Json shape = Json::Array();
    shape.Push(static_cast<int64_t>(v.size()));
    t.Set("shape", std::move(shape));
    Json off = Json::Array();
    off.Push(static_cast<int64_t>(data.size()));
    data.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int32_t));
    off.Push(static_cast<int64_t>(data.size()));
    t.Set("data_offsets", std::move(off));
    header.Set(name, std::move(t));
  };
  for (int l = 0; l < map.original.num_layers; ++l) {
    const LayerKept& k = map.layers[static_cast<size_t>(l)];
    add(MlpKey(l), k.mlp);
    add(KvKey(l), k.kv_heads);
    add(HeadsKey(l), k.heads);
  }
  std::string h = header.Dump();
  while (h.size() % 8 != 0) h.push_back(' ');  // align the data buffer
  std::string file(8, '\0');
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) file[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  file += h;
  file += data;
  return WriteFileAtomically(path, file);
}

absl::StatusOr<PruningMap> LoadPruningMap(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(path));
  const auto& meta = f->metadata();
  auto field = [&](const char* key) -> absl::StatusOr<std::string> {
    auto it = meta.find(key);
    if (it == meta.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": __metadata__.", key, " is missing (not a pruning map?)"));
    }
    return it->second;
  };
  ASSIGN_OR_RETURN(std::string format, field("format"));
  if (format != kPruningMapFormat) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": __metadata__.format is \"", format,
                                                   "\", expected \"", kPruningMapFormat, "\""));
  }
  ASSIGN_OR_RETURN(std::string version, field("version"));
  if (version != "1") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": __metadata__.version ", version, " is not supported (1 is)"));
  }
  ASSIGN_OR_RETURN(std::string config_text, field("original_config"));
  PruningMap map;
  ASSIGN_OR_RETURN(map.original,
                   ParseModelConfig(config_text, path + ": __metadata__.original_config"));
  if (auto it = meta.find("method"); it != meta.end()) map.method = it->second;
  if (auto it = meta.find("ratio"); it != meta.end()) map.ratio = std::atof(it->second.c_str());
  auto read = [&](const std::string& name) -> absl::StatusOr<std::vector<int32_t>> {
    ASSIGN_OR_RETURN(const TensorInfo* info, f->FindOrError(name));
    if (info->dtype != SafetensorsDtype::kDtypeI32 || info->shape.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", name, ": must be a 1-D I32 tensor"));
    }
    std::vector<int32_t> v(static_cast<size_t>(info->numel()));
    std::span<const std::byte> bytes = f->Bytes(*info);
    std::memcpy(v.data(), bytes.data(), bytes.size());
    return v;
  };
  for (int l = 0; l < map.original.num_layers; ++l) {
    LayerKept k;
    ASSIGN_OR_RETURN(k.mlp, read(MlpKey(l)));
    ASSIGN_OR_RETURN(k.kv_heads, read(KvKey(l)));
    ASSIGN_OR_RETURN(k.heads, read(HeadsKey(l)));
    map.layers.push_back(std::move(k));
  }
  absl::Status st = map.Validate();
  if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", st.message()));
  return map;
}

}  // namespace sheaf::prune
