#include "core/quant/nf4_file.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/file.h"
#include "core/dtype.h"
#include "core/json.h"
#include "core/quant/nf4.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace sheaf::quant {
namespace {

// A safetensors file of raw little-endian buffers (core's writer takes
// floats only).
class RawWriter {
 public:
  void Add(const std::string& name, const char* dtype, int64_t numel, const void* data,
           int64_t bytes) {
    Json t = Json::Object();
    t.Set("dtype", dtype);
    Json shape = Json::Array();
    shape.Push(numel);
    t.Set("shape", std::move(shape));
    Json off = Json::Array();
    off.Push(static_cast<int64_t>(data_.size()));
    data_.append(static_cast<const char*>(data), static_cast<size_t>(bytes));
    off.Push(static_cast<int64_t>(data_.size()));
    t.Set("data_offsets", std::move(off));
    header_.Set(name, std::move(t));
  }
  absl::Status Write(const std::string& path, Json metadata) {
    Json h = Json::Object();
    h.Set("__metadata__", std::move(metadata));
    // Insertion order: metadata first, then the tensors.
    for (const std::string& k : keys_) h.Set(k, std::move(*header_.Find(k)));
    std::string text = h.Dump();
    while (text.size() % 8 != 0) text.push_back(' ');
    std::string file(8, '\0');
    const uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) file[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
    return WriteFileAtomically(path, file + text + data_);
  }
  void Track(const std::string& k) { keys_.push_back(k); }

 private:
  Json header_ = Json::Object();
  std::vector<std::string> keys_;
  std::string data_;
};

}  // namespace

int64_t Nf4Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Nf4Tensor QuantizeTensor(std::string name, std::vector<int64_t> shape, const float* x) {
  Nf4Tensor t{std::move(name), std::move(shape), {}};
  t.data.resize(static_cast<size_t>(DTypeBytes(DType::kDTypeNF4, t.numel())));
  QuantizeNf4(x, t.numel(), t.data.data());
  return t;
}

absl::Status WriteNf4File(const std::string& path, const std::vector<Nf4Tensor>& tensors) {
  RawWriter w;
  std::vector<std::string> names;
  for (const Nf4Tensor& t : tensors) {
    if (t.name.empty() || t.name.find(',') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("NF4 tensor name \"", t.name, "\" is empty or has a comma"));
    }
    const int64_t n = t.numel(), blocks = Nf4Blocks(n);
    if (static_cast<int64_t>(t.data.size()) != DTypeBytes(DType::kDTypeNF4, n)) {
      return absl::InvalidArgumentError(absl::StrCat(t.name, ": NF4 data does not fit its shape"));
    }
    names.push_back(t.name);
    const Nf4DoubleQuant dq = DoubleQuantize(Nf4Absmax(t.data.data(), n));
    std::vector<uint8_t> codes(static_cast<size_t>(blocks * kNf4BlockSize / 2));
    for (int64_t b = 0; b < blocks; ++b) {
      std::memcpy(codes.data() + b * kNf4BlockSize / 2, t.data.data() + b * kNf4BlockBytes,
                  kNf4BlockSize / 2);
    }
    auto add = [&](const std::string& suffix, const char* dtype, int64_t numel, const void* data,
                   int64_t bytes) {
      w.Add(t.name + suffix, dtype, numel, data, bytes);
      w.Track(t.name + suffix);
    };
    add(".shape", "I64", static_cast<int64_t>(t.shape.size()), t.shape.data(),
        static_cast<int64_t>(t.shape.size() * 8));
    add(".codes", "U8", static_cast<int64_t>(codes.size()), codes.data(),
        static_cast<int64_t>(codes.size()));
    add(".absmax_q", "I8", blocks, dq.q.data(), blocks);
    add(".absmax_scale", "F32", static_cast<int64_t>(dq.scale.size()), dq.scale.data(),
        static_cast<int64_t>(dq.scale.size() * 4));
    add(".absmax_mean", "F32", 1, &dq.mean, 4);
  }
  Json meta = Json::Object();
  meta.Set("format", kNf4FileFormat);
  meta.Set("version", "1");
  meta.Set("block_size", absl::StrCat(kNf4BlockSize));
  meta.Set("scale_block_size", absl::StrCat(kNf4ScaleBlockSize));
  meta.Set("tensors", absl::StrJoin(names, ","));
  return w.Write(path, std::move(meta));
}

absl::StatusOr<std::vector<Nf4Tensor>> ReadNf4File(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(path));
  const auto& meta = f->metadata();
  auto field = [&](const char* key) -> absl::StatusOr<std::string> {
    auto it = meta.find(key);
    if (it == meta.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": __metadata__.", key, " is missing (not an NF4 file?)"));
    }
    return it->second;
  };
  ASSIGN_OR_RETURN(std::string format, field("format"));
  ASSIGN_OR_RETURN(std::string version, field("version"));
  ASSIGN_OR_RETURN(std::string block, field("block_size"));
  ASSIGN_OR_RETURN(std::string scale_block, field("scale_block_size"));
  ASSIGN_OR_RETURN(std::string list, field("tensors"));
  if (format != kNf4FileFormat || version != "1" || block != absl::StrCat(kNf4BlockSize) ||
      scale_block != absl::StrCat(kNf4ScaleBlockSize)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": not a version-1 sheaf-nf4 file with blocks of 64 and 256 (format \"", format,
        "\", version ", version, ", block_size ", block, ", scale_block_size ", scale_block, ")"));
  }
  std::vector<Nf4Tensor> out;
  if (list.empty()) return out;
  const std::vector<std::string> names = absl::StrSplit(list, ',');
  for (const std::string& name : names) {
    auto part = [&](const std::string& suffix, SafetensorsDtype dtype,
                    int64_t want_bytes) -> absl::StatusOr<std::span<const std::byte>> {
      ASSIGN_OR_RETURN(const TensorInfo* info, f->FindOrError(name + suffix));
      if (info->dtype != dtype || info->shape.size() != 1) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": ", name, suffix, ": must be a 1-D ",
                                                       SafetensorsDtypeName(dtype), " tensor"));
      }
      if (want_bytes >= 0 && info->bytes() != want_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": ", name, suffix, ": holds ", info->bytes(), " bytes, the shape of ", name,
            " needs ", want_bytes));
      }
      return f->Bytes(*info);
    };
    Nf4Tensor t;
    t.name = name;
    ASSIGN_OR_RETURN(std::span<const std::byte> shape, part(".shape", SafetensorsDtype::kDtypeI64, -1));
    t.shape.resize(shape.size() / 8);
    std::memcpy(t.shape.data(), shape.data(), shape.size());
    for (int64_t d : t.shape) {
      if (d < 0 || d > (int64_t{1} << 40)) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": ", name, ".shape: bad dimension ", d));
      }
    }
    const int64_t n = t.numel(), blocks = Nf4Blocks(n);
    const int64_t groups = (blocks + kNf4ScaleBlockSize - 1) / kNf4ScaleBlockSize;
    ASSIGN_OR_RETURN(std::span<const std::byte> codes,
                     part(".codes", SafetensorsDtype::kDtypeU8, blocks * kNf4BlockSize / 2));
    ASSIGN_OR_RETURN(std::span<const std::byte> q, part(".absmax_q", SafetensorsDtype::kDtypeI8, blocks));
    ASSIGN_OR_RETURN(std::span<const std::byte> scale,
                     part(".absmax_scale", SafetensorsDtype::kDtypeF32, groups * 4));
    ASSIGN_OR_RETURN(std::span<const std::byte> mean, part(".absmax_mean", SafetensorsDtype::kDtypeF32, 4));
    Nf4DoubleQuant dq;
    std::memcpy(&dq.mean, mean.data(), 4);
    dq.scale.resize(static_cast<size_t>(groups));
    std::memcpy(dq.scale.data(), scale.data(), scale.size());
    dq.q.resize(static_cast<size_t>(blocks));
    std::memcpy(dq.q.data(), q.data(), q.size());
    const std::vector<float> absmax = DoubleDequantize(dq);
    t.data.resize(static_cast<size_t>(DTypeBytes(DType::kDTypeNF4, n)));
    for (int64_t b = 0; b < blocks; ++b) {
      std::memcpy(t.data.data() + b * kNf4BlockBytes, codes.data() + b * kNf4BlockSize / 2,
                  kNf4BlockSize / 2);
    }
    SetNf4Absmax(t.data.data(), n, absmax);
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace sheaf::quant
