#include "core/arith/arith.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "core/backend.h"
#include "core/json.h"
#include "core/lora.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;

bool IsFloat(SafetensorsDtype d) {
  return d == SafetensorsDtype::kDtypeF32 || d == SafetensorsDtype::kDtypeBF16 ||
         d == SafetensorsDtype::kDtypeF16 || d == SafetensorsDtype::kDtypeF64;
}

// The header of the output: BASE's tensors in BASE's order and dtypes,
// contiguous, padded with spaces to an 8-byte boundary.
std::string OutputHeader(const std::vector<const TensorInfo*>& tensors) {
  std::string h = "{\"__metadata__\":{\"format\":\"pt\"}";
  int64_t offset = 0;
  for (const TensorInfo* t : tensors) {
    absl::StrAppend(&h, ",", Json(t->name).Dump(), ":{\"dtype\":\"", SafetensorsDtypeName(t->dtype),
                    "\",\"shape\":[");
    for (size_t i = 0; i < t->shape.size(); ++i) absl::StrAppend(&h, i ? "," : "", t->shape[i]);
    absl::StrAppend(&h, "],\"data_offsets\":[", offset, ",", offset + t->bytes(), "]}");
    offset += t->bytes();
  }
  h += "}";
  while ((h.size() + 8) % 8 != 0) h += ' ';
  return h;
}

// fp32 values -> bytes of `dtype` (a float dtype).
void Encode(std::span<const float> v, SafetensorsDtype dtype, std::vector<std::byte>* out) {
  out->resize(v.size() * static_cast<size_t>(SafetensorsDtypeSize(dtype)));
  switch (dtype) {
    case SafetensorsDtype::kDtypeF32:
      std::memcpy(out->data(), v.data(), v.size() * sizeof(float));
      break;
    case SafetensorsDtype::kDtypeBF16:
    case SafetensorsDtype::kDtypeF16:
      for (size_t i = 0; i < v.size(); ++i) {
        const uint16_t bits = dtype == SafetensorsDtype::kDtypeBF16 ? F32ToBf16(v[i]) : F32ToF16(v[i]);
        std::memcpy(out->data() + 2 * i, &bits, 2);
      }
      break;
    default:  // F64
      for (size_t i = 0; i < v.size(); ++i) {
        const double d = v[i];
        std::memcpy(out->data() + 8 * i, &d, 8);
      }
  }
}

struct OpenTerm {
  const ArithTerm* term;
  std::string label;  // "term 2 (runs/x)" in errors
  const SafetensorsModel* model = nullptr;
  const SafetensorsModel* ref = nullptr;
  std::unique_ptr<LoraAdapter> adapter;
};

}  // namespace

absl::Status ModelArithmetic(const std::string& base, const std::vector<ArithTerm>& terms,
                             const std::string& out_dir, ArithStats* stats) {
  ArithStats local;
  ArithStats& st = stats ? *stats : local;
  st = {};
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsModel> base_model, SafetensorsModel::Open(base));
  const bool base_is_dir = fs::is_directory(base);
  std::vector<std::unique_ptr<SafetensorsModel>> owned;
  std::map<std::string, const SafetensorsModel*> by_path;  // each file opened once
  auto open = [&](const std::string& path) -> absl::StatusOr<const SafetensorsModel*> {
    if (path.empty() || path == base) return base_model.get();
    if (auto it = by_path.find(path); it != by_path.end()) return it->second;
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsModel> m, SafetensorsModel::Open(path));
    owned.push_back(std::move(m));
    by_path[path] = owned.back().get();
    return owned.back().get();
  };
  std::vector<OpenTerm> open_terms;
  std::unique_ptr<ModelConfig> config;
  // Adapter modules by the HF tensor name they change: (term, module).
  std::map<std::string, std::vector<std::pair<size_t, const LoraModule*>>> modules_of;
  for (size_t i = 0; i < terms.size(); ++i) {
    const ArithTerm& t = terms[i];
    OpenTerm ot;
    ot.term = &t;
    ot.label = absl::StrCat("term ", i + 1, " (", t.path, ")");
    if (!std::isfinite(t.lambda)) {
      return absl::InvalidArgumentError(absl::StrCat(ot.label, ": lambda must be finite, got ", t.lambda));
    }
    if (t.kind == ArithTerm::Kind::kArithTermModel) {
      ASSIGN_OR_RETURN(ot.model, open(t.path));
      ASSIGN_OR_RETURN(ot.ref, open(t.ref));
      // Every tensor of the term must be one of BASE's, or it would be dropped.
      for (const SafetensorsModel* m : {ot.model, ot.ref}) {
        for (const TensorInfo* info : m->tensors()) {
          if (base_model->Find(info->name) == nullptr) {
            return absl::InvalidArgumentError(absl::StrCat(
                ot.label, ": tensor ", info->name, " is not in the base ", base,
                " (the models have different architectures)"));
          }
        }
      }
    } else {
      if (!base_is_dir) {
        return absl::InvalidArgumentError(absl::StrCat(
            ot.label, ": an adapter term needs the base as a model dir (its config.json)"));
      }
      if (!config) {
        ASSIGN_OR_RETURN(ModelConfig c, LoadModelConfig(base));
        config = std::make_unique<ModelConfig>(c);
      }
      ASSIGN_OR_RETURN(ot.adapter, LoraAdapter::LoadPeft(t.path, *config));
      if (ot.adapter->num_experts() != 1) {
        return absl::InvalidArgumentError(absl::StrCat(ot.label, ": a bank has no single ΔW"));
      }
      for (int l = 0; l < ot.adapter->num_layers(); ++l) {
        for (int p = 0; p < kNumProj; ++p) {
          if (const LoraModule* m = ot.adapter->module(l, static_cast<Proj>(p))) {
            modules_of[LoraAdapter::ModuleName(l, static_cast<Proj>(p)) + ".weight"].push_back({i, m});
          }
        }
      }
      if (const LoraModule* m = ot.adapter->lm_head()) {
        if (base_model->Find("lm_head.weight") == nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(
              ot.label, ": a LoRA on lm_head, but the base ties lm_head to the embeddings "
              "(merging it would change the input embeddings too)"));
        }
        modules_of["lm_head.weight"].push_back({i, m});
      }
    }
    open_terms.push_back(std::move(ot));
  }
  for (const auto& [name, list] : modules_of) {
    const TensorInfo* info = base_model->Find(name);
    if (info == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(open_terms[list[0].first].label, ": module ", name,
                                                     " has no tensor in the base ", base));
    }
  }

  Backend* backend = DefaultBackend();
  if (backend == nullptr && !modules_of.empty()) {
    return absl::FailedPreconditionError("no compute backend is linked (link //ops/cpu:ops)");
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  const std::string out_path = out_dir + "/model.safetensors";
  const std::string tmp = TemporaryPathFor(out_path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::PermissionDeniedError(absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  auto fail = [&](absl::Status s) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };
  const std::vector<const TensorInfo*>& tensors = base_model->tensors();
  const std::string header = OutputHeader(tensors);
  const uint64_t header_len = header.size();
  unsigned char len_bytes[8];
  for (int b = 0; b < 8; ++b) len_bytes[b] = static_cast<unsigned char>(header_len >> (8 * b));
  if (absl::Status s = WriteAllToFd(fd, len_bytes, 8, tmp); !s.ok()) return fail(s);
  if (absl::Status s = WriteAllToFd(fd, header.data(), header.size(), tmp); !s.ok()) return fail(s);

  std::vector<float> acc, m, r;
  std::vector<std::byte> bytes;
  for (const TensorInfo* info : tensors) {
    ++st.tensors;
    st.elements += info->numel();
    if (!IsFloat(info->dtype)) {
      std::span<const std::byte> raw = base_model->FileFor(info->name)->Bytes(*info);
      if (absl::Status s = WriteAllToFd(fd, raw.data(), raw.size(), tmp); !s.ok()) return fail(s);
      continue;
    }
    const size_t n = static_cast<size_t>(info->numel());
    acc.resize(n);
    if (absl::Status s = base_model->ReadF32(info->name, info->shape, acc.data()); !s.ok()) return fail(s);
    auto modules = modules_of.find(info->name);
    for (size_t i = 0; i < open_terms.size(); ++i) {
      const OpenTerm& ot = open_terms[i];
      const float lambda = static_cast<float>(ot.term->lambda);
      if (ot.term->kind == ArithTerm::Kind::kArithTermAdapter) {
        if (modules == modules_of.end()) continue;
        for (const auto& [term, mod] : modules->second) {
          if (term != i) continue;
          if (info->shape.size() != 2 || info->shape[0] != mod->out || info->shape[1] != mod->in) {
            return fail(absl::InvalidArgumentError(absl::StrCat(
                ot.label, ": module ", mod->name, " is [", mod->out, ", ", mod->in, "] but tensor ",
                info->name, " of the base is ", ShapeToString(info->shape))));
          }
          // W += λ · s · B·A, the product Model::ApplyAdapter computes.
          backend->Matmul(acc.data(), mod->b.data, mod->a.data, mod->out, mod->in,
                          static_cast<int>(mod->a.dim(0)), false, false, lambda * mod->scale, 1.0f);
          ++st.adapted_modules;
        }
        continue;
      }
      for (const SafetensorsModel* src : {ot.model, ot.ref}) {
        const TensorInfo* ti = src->Find(info->name);
        const std::string& which = src == ot.model ? ot.term->path : (ot.term->ref.empty() ? base : ot.term->ref);
        if (ti == nullptr) {
          return fail(absl::NotFoundError(absl::StrCat(ot.label, ": tensor ", info->name,
                                                       " of the base is missing in ", which)));
        }
        if (ti->shape != info->shape) {
          return fail(absl::InvalidArgumentError(absl::StrCat(
              ot.label, ": tensor ", info->name, " is ", ShapeToString(ti->shape), " in ", which,
              " but ", ShapeToString(info->shape), " in the base")));
        }
      }
      m.resize(n);
      r.resize(n);
      if (absl::Status s = ot.model->ReadF32(info->name, info->shape, m.data()); !s.ok()) return fail(s);
      if (absl::Status s = ot.ref->ReadF32(info->name, info->shape, r.data()); !s.ok()) return fail(s);
      for (size_t k = 0; k < n; ++k) acc[k] += lambda * (m[k] - r[k]);
    }
    Encode(acc, info->dtype, &bytes);
    if (absl::Status s = WriteAllToFd(fd, bytes.data(), bytes.size(), tmp); !s.ok()) return fail(s);
  }
  if (::fsync(fd) != 0) return fail(absl::DataLossError(absl::StrCat("fsync ", tmp, ": ", std::strerror(errno))));
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    return absl::DataLossError(absl::StrCat("close ", tmp, ": ", std::strerror(errno)));
  }
  if (::rename(tmp.c_str(), out_path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return absl::PermissionDeniedError(absl::StrCat("rename ", tmp, " -> ", out_path, ": ", std::strerror(errno)));
  }
  RETURN_IF_ERROR(SyncParentDirectory(out_path));
  if (base_is_dir && fs::exists(base + "/config.json")) {
    ASSIGN_OR_RETURN(std::string cfg, ReadFileToString(base + "/config.json"));
    RETURN_IF_ERROR(WriteFileAtomically(out_dir + "/config.json", cfg));
  }
  return absl::OkStatus();
}

}  // namespace sheaf
