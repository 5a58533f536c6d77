#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/open_beneath.h"
#include "base/status.h"
#include "core/json.h"

namespace sheaf {

// The format is little-endian and we read it with plain loads.
static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

namespace {

// Same limit as the reference implementation: a larger header is not a real
// checkpoint, and parsing it would only burn memory.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

constexpr char kMetadataKey[] = "__metadata__";

// Debian's absl has its own absl::string_view, not std::string_view.
absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }

// Conversions fan out over OpenMP only above this many elements: smaller
// tensors finish before the threads would wake.
constexpr int64_t kParallelElements = int64_t{1} << 20;

uint32_t FloatBits(float f) { return std::bit_cast<uint32_t>(f); }
float BitsFloat(uint32_t u) { return std::bit_cast<float>(u); }

// Reads element i of type T from possibly unaligned little-endian bytes.
template <typename T>
T LoadAt(const std::byte* p, int64_t i) {
  T v;
  std::memcpy(&v, p + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
  return v;
}

// out[k] = fp32(element first + k) for k in [0, count).
void ConvertToF32(SafetensorsDtype dtype, const std::byte* src, int64_t first,
                  int64_t count, float* out) {
  switch (dtype) {
    case SafetensorsDtype::kDtypeF32:
      std::memcpy(out, src + first * 4, static_cast<size_t>(count) * 4);
      return;
    case SafetensorsDtype::kDtypeBF16:
#pragma omp parallel for schedule(static) if (count > kParallelElements)
      for (int64_t k = 0; k < count; ++k) {
        out[k] = Bf16ToF32(LoadAt<uint16_t>(src, first + k));
      }
      return;
    case SafetensorsDtype::kDtypeF16:
#pragma omp parallel for schedule(static) if (count > kParallelElements)
      for (int64_t k = 0; k < count; ++k) {
        out[k] = F16ToF32(LoadAt<uint16_t>(src, first + k));
      }
      return;
    case SafetensorsDtype::kDtypeF64:
#pragma omp parallel for schedule(static) if (count > kParallelElements)
      for (int64_t k = 0; k < count; ++k) {
        out[k] = static_cast<float>(LoadAt<double>(src, first + k));
      }
      return;
    default:
      return;  // callers check IsFloatDtype first
  }
}

bool IsFloatDtype(SafetensorsDtype dtype) {
  return dtype == SafetensorsDtype::kDtypeF32 ||
         dtype == SafetensorsDtype::kDtypeF16 ||
         dtype == SafetensorsDtype::kDtypeBF16 ||
         dtype == SafetensorsDtype::kDtypeF64;
}

// Short rendering of a JSON value for error messages: a hostile header must
// not turn into a megabyte-long Status.
std::string Snippet(const Json& value) {
  std::string s = value.Dump();
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

absl::Status ErrnoError(int error_number, std::string_view what) {
  return absl::ErrnoToStatus(error_number, ToAbsl(what));
}

}  // namespace

// ---------------------------------------------------------------------------
// Dtypes and conversions

const char* SafetensorsDtypeName(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::kDtypeF64: return "F64";
    case SafetensorsDtype::kDtypeF32: return "F32";
    case SafetensorsDtype::kDtypeF16: return "F16";
    case SafetensorsDtype::kDtypeBF16: return "BF16";
    case SafetensorsDtype::kDtypeI64: return "I64";
    case SafetensorsDtype::kDtypeI32: return "I32";
    case SafetensorsDtype::kDtypeI16: return "I16";
    case SafetensorsDtype::kDtypeI8: return "I8";
    case SafetensorsDtype::kDtypeU8: return "U8";
    case SafetensorsDtype::kDtypeBool: return "BOOL";
  }
  return "?";
}

int64_t SafetensorsDtypeSize(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::kDtypeF64:
    case SafetensorsDtype::kDtypeI64:
      return 8;
    case SafetensorsDtype::kDtypeF32:
    case SafetensorsDtype::kDtypeI32:
      return 4;
    case SafetensorsDtype::kDtypeF16:
    case SafetensorsDtype::kDtypeBF16:
    case SafetensorsDtype::kDtypeI16:
      return 2;
    case SafetensorsDtype::kDtypeI8:
    case SafetensorsDtype::kDtypeU8:
    case SafetensorsDtype::kDtypeBool:
      return 1;
  }
  return 0;
}

bool ParseSafetensorsDtype(std::string_view name, SafetensorsDtype* dtype) {
  static constexpr SafetensorsDtype kAll[] = {
      SafetensorsDtype::kDtypeF64,  SafetensorsDtype::kDtypeF32,
      SafetensorsDtype::kDtypeF16,  SafetensorsDtype::kDtypeBF16,
      SafetensorsDtype::kDtypeI64,  SafetensorsDtype::kDtypeI32,
      SafetensorsDtype::kDtypeI16,  SafetensorsDtype::kDtypeI8,
      SafetensorsDtype::kDtypeU8,   SafetensorsDtype::kDtypeBool};
  for (SafetensorsDtype d : kAll) {
    if (name == SafetensorsDtypeName(d)) {
      *dtype = d;
      return true;
    }
  }
  return false;
}

float Bf16ToF32(uint16_t bits) { return BitsFloat(uint32_t{bits} << 16); }

uint16_t F32ToBf16(float value) {
  const uint32_t u = FloatBits(value);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
    // NaN: truncating could clear every mantissa bit left and make it Inf.
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  }
  // Round to nearest even: add 0x7FFF plus the lowest kept bit, truncate.
  const uint32_t rounded = u + 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

// The two fp16 conversions use float arithmetic to do the rounding and the
// subnormal handling without branches (the scheme of Maratyszcza's FP16
// library), so the loops above vectorise. They are checked against the
// compiler's _Float16 on all 2^16 inputs in the test.
float F16ToF32(uint16_t h) {
  const uint32_t w = uint32_t{h} << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  // Normal fp16: move exponent and mantissa into place, rebias by 2^-112.
  constexpr uint32_t kExpOffset = 0xE0u << 23;
  const float normalized = BitsFloat((two_w >> 4) + kExpOffset) * 0x1.0p-112f;
  // Subnormal fp16: the mantissa is an integer m, value m * 2^-24, built as
  // (0.5 + m * 2^-24) - 0.5 which is exact.
  constexpr uint32_t kMagicMask = 126u << 23;
  const float denormalized = BitsFloat((two_w >> 17) | kMagicMask) - 0.5f;
  constexpr uint32_t kDenormalizedCutoff = 1u << 27;
  const uint32_t result =
      sign | (two_w < kDenormalizedCutoff ? FloatBits(denormalized)
                                          : FloatBits(normalized));
  return BitsFloat(result);
}

uint16_t F32ToF16(float f) {
  // Scaling up then down rounds the float at fp16's precision, and sends
  // values past fp16's range to infinity.
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = FloatBits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = BitsFloat((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = FloatBits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) |
                               (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

std::string ShapeToString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated at Open not to overflow
  return n;
}

// ---------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) {
    munmap(const_cast<std::byte*>(map_), map_size_);
  }
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  // Beneath the process's roots (base/open_beneath.h), regular files only.
  ASSIGN_OR_RETURN(const int fd, OpenForReading(path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return ErrnoError(e, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::DataLossError(absl::StrCat(
        path, ": file is truncated: ", size,
        " bytes, shorter than the 8-byte header length"));
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  // The mapping keeps the file alive; the descriptor is no longer needed.
  ::close(fd);
  if (map == MAP_FAILED) {
    return ErrnoError(mmap_errno, absl::StrCat("cannot mmap ", path));
  }
  file->map_ = static_cast<const std::byte*>(map);
  file->map_size_ = size;

  uint64_t header_len;
  std::memcpy(&header_len, file->map_, 8);
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": header length ", header_len, " exceeds the limit of ",
        kMaxHeaderBytes, " bytes (not a safetensors file?)"));
  }
  if (header_len > size - 8) {
    return absl::DataLossError(absl::StrCat(
        path, ": header length ", header_len,
        " runs past the end of the file (", size, " bytes): truncated?"));
  }
  file->data_ = file->map_ + 8 + header_len;
  file->data_size_ = static_cast<int64_t>(size - 8 - header_len);
  RETURN_IF_ERROR(file->ParseHeader(std::string_view(
      reinterpret_cast<const char*>(file->map_ + 8), header_len)));
  return file;
}

absl::Status SafetensorsFile::ParseHeader(std::string_view header) {
  const auto invalid = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", parts...));
  };
  absl::StatusOr<Json> parsed = Json::Parse(header);
  if (!parsed.ok()) {
    return invalid("header is not valid JSON: ", parsed.status().message());
  }
  if (!parsed->is_object()) {
    return invalid("header is a JSON ", Json::TypeName(parsed->type()),
                   ", expected an object");
  }
  tensors_.reserve(parsed->size());
  for (const auto& [name, entry] : parsed->items()) {
    if (name == kMetadataKey) {
      if (!entry.is_object()) {
        return invalid("__metadata__ is a ", Json::TypeName(entry.type()),
                       ", expected an object of strings");
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return invalid("__metadata__ value for '", key, "' is a ",
                         Json::TypeName(value.type()), ", expected a string");
        }
        metadata_.emplace(key, value.as_string());
      }
      continue;
    }
    TensorInfo info;
    info.name = name;
    if (!entry.is_object()) {
      return invalid("tensor '", name, "': entry is a ",
                     Json::TypeName(entry.type()), ", expected an object");
    }
    const Json* dtype = entry.Find("dtype");
    if (dtype == nullptr || !dtype->is_string()) {
      return invalid("tensor '", name, "': missing string field \"dtype\"");
    }
    if (!ParseSafetensorsDtype(dtype->as_string(), &info.dtype)) {
      return invalid("tensor '", name, "': unknown dtype '",
                     dtype->as_string(),
                     "' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
    }
    const Json* shape = entry.Find("shape");
    if (shape == nullptr || !shape->is_array()) {
      return invalid("tensor '", name, "': missing array field \"shape\"");
    }
    int64_t numel = 1;
    for (size_t i = 0; i < shape->size(); ++i) {
      const Json& d = (*shape)[i];
      if (!d.is_int64()) {
        return invalid("tensor '", name, "': shape[", i, "] is ", Snippet(d),
                       ", expected an integer");
      }
      if (d.as_int64() < 0) {
        return invalid("tensor '", name, "': negative dimension shape[", i,
                       "] = ", d.as_int64());
      }
      if (__builtin_mul_overflow(numel, d.as_int64(), &numel)) {
        return invalid("tensor '", name, "': shape ", Snippet(*shape),
                       " has more than 2^63 elements");
      }
      info.shape.push_back(d.as_int64());
    }
    const Json* offsets = entry.Find("data_offsets");
    if (offsets == nullptr || !offsets->is_array() || offsets->size() != 2 ||
        !(*offsets)[0].is_int64() || !(*offsets)[1].is_int64()) {
      return invalid("tensor '", name,
                     "': data_offsets must be two integers [begin, end], got ",
                     offsets == nullptr ? "nothing" : Snippet(*offsets));
    }
    info.begin = (*offsets)[0].as_int64();
    info.end = (*offsets)[1].as_int64();
    if (info.begin < 0 || info.end < 0) {
      return invalid("tensor '", name, "': negative data_offsets [",
                     info.begin, ", ", info.end, "]");
    }
    if (info.begin > info.end) {
      return invalid("tensor '", name, "': data_offsets begin ", info.begin,
                     " > end ", info.end);
    }
    if (info.end > data_size_) {
      return absl::DataLossError(absl::StrCat(
          path_, ": tensor '", name, "': data_offsets end ", info.end,
          " is past the end of the data buffer (", data_size_,
          " bytes): file truncated?"));
    }
    int64_t want_bytes;
    if (__builtin_mul_overflow(numel, SafetensorsDtypeSize(info.dtype),
                               &want_bytes) ||
        want_bytes != info.bytes()) {
      return invalid("tensor '", name, "': byte length ", info.bytes(),
                     " (data_offsets [", info.begin, ", ", info.end,
                     "]) != ", numel, " elements (shape ",
                     ShapeToString(info.shape), ") * ",
                     SafetensorsDtypeSize(info.dtype), " bytes of ",
                     SafetensorsDtypeName(info.dtype));
    }
    index_.emplace(name, tensors_.size());
    tensors_.push_back(std::move(info));
  }

  // The tensors must tile [0, data_size_) exactly. Sorting by (begin, end)
  // puts empty tensors before a non-empty one at the same offset, so they
  // count as touching, not overlapping.
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(tensors_.size());
  for (const TensorInfo& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) {
              return std::pair(a->begin, a->end) < std::pair(b->begin, b->end);
            });
  int64_t covered = 0;               // [0, covered) is tiled so far
  const TensorInfo* last = nullptr;  // the tensor ending at `covered`
  for (const TensorInfo* t : by_offset) {
    if (t->begin < covered) {
      return invalid("tensors '", last->name, "' [", last->begin, ", ",
                     last->end, ") and '", t->name, "' [", t->begin, ", ",
                     t->end, ") overlap");
    }
    if (t->begin > covered) {
      return invalid("hole in the data buffer: bytes [", covered, ", ",
                     t->begin, ") belong to no tensor");
    }
    if (t->end > covered || last == nullptr) {
      covered = t->end;
      last = t;
    }
  }
  if (covered != data_size_) {
    return invalid("hole in the data buffer: bytes [", covered, ", ",
                   data_size_, ") after the last tensor belong to no tensor");
  }
  return absl::OkStatus();
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  const auto it = index_.find(ToAbsl(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

// OutOfRange unless [first_element, first_element + count) lies inside the
// tensor; written to be overflow-free (first <= numel, then count <= numel - first).
absl::Status CheckElementRange(const std::string& path, std::string_view name,
                               int64_t numel, int64_t first_element, int64_t count) {
  if (first_element < 0 || count < 0 || first_element > numel ||
      count > numel - first_element) {
    return absl::OutOfRangeError(absl::StrCat(
        path, ": tensor '", ToAbsl(name), "': cannot read ", count,
        " elements starting at element ", first_element, ", it has ", numel,
        " elements"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<const TensorInfo*> SafetensorsFile::FindOrError(
    std::string_view name) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path_, ": no tensor named '", ToAbsl(name), "'"));
  }
  return info;
}

absl::Status SafetensorsFile::Read(std::string_view name,
                                   std::span<const int64_t> expected_shape,
                                   DType dtype, void* out) const {
  ASSIGN_OR_RETURN(const TensorInfo* info, FindOrError(name));
  if (!std::equal(info->shape.begin(), info->shape.end(),
                  expected_shape.begin(), expected_shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": tensor '", ToAbsl(name), "' has shape ",
        ShapeToString(info->shape), ", expected ",
        ShapeToString(expected_shape)));
  }
  return ReadRange(name, 0, info->numel(), dtype, out);
}

absl::Status SafetensorsFile::ReadRange(std::string_view name,
                                        int64_t first_element, int64_t count,
                                        DType dtype, void* out) const {
  if (dtype == DType::kDTypeF32) {
    return ReadF32Range(name, first_element, count, static_cast<float*>(out));
  }
  if (dtype != DType::kDTypeBF16) {
    return absl::UnimplementedError(absl::StrCat(
        path_, ": tensor '", ToAbsl(name), "': reading into ", DTypeName(dtype),
        " storage is not supported (f32 or bf16)"));
  }
  ASSIGN_OR_RETURN(const TensorInfo* info, FindOrError(name));
  if (info->dtype != SafetensorsDtype::kDtypeBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": tensor '", ToAbsl(name), "' has dtype ",
        SafetensorsDtypeName(info->dtype),
        "; bf16 storage reads BF16 tensors only (it never narrows on load)"));
  }
  RETURN_IF_ERROR(CheckElementRange(path_, name, info->numel(), first_element, count));
  if (count == 0) return absl::OkStatus();
  std::memcpy(out, data_ + info->begin + DTypeBytes(dtype, first_element),
              static_cast<size_t>(DTypeBytes(dtype, count)));
  return absl::OkStatus();
}

std::span<const std::byte> SafetensorsFile::Bytes(
    const TensorInfo& info) const {
  return {data_ + info.begin, static_cast<size_t>(info.bytes())};
}

absl::Status SafetensorsFile::ReadF32(std::string_view name,
                                      std::span<const int64_t> expected_shape,
                                      float* out) const {
  return Read(name, expected_shape, DType::kDTypeF32, out);
}

absl::Status SafetensorsFile::ReadF32Range(std::string_view name,
                                           int64_t first_element,
                                           int64_t count, float* out) const {
  ASSIGN_OR_RETURN(const TensorInfo* info, FindOrError(name));
  if (!IsFloatDtype(info->dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": tensor '", ToAbsl(name), "' has dtype ",
        SafetensorsDtypeName(info->dtype),
        "; reading as fp32 needs F32, F16, BF16 or F64"));
  }
  RETURN_IF_ERROR(CheckElementRange(path_, name, info->numel(), first_element, count));
  if (count == 0) return absl::OkStatus();
  ConvertToF32(info->dtype, data_ + info->begin, first_element, count, out);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// SafetensorsModel

namespace {

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

absl::Status SafetensorsModel::AddFile(std::unique_ptr<SafetensorsFile> file) {
  const size_t file_index = files_.size();
  for (const TensorInfo& t : file->tensors()) {
    const auto [it, inserted] = file_of_.emplace(t.name, file_index);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(
          path_, ": tensor '", t.name, "' is in both ",
          files_[it->second]->path(), " and ", file->path()));
    }
    tensors_.push_back(&t);
  }
  files_.push_back(std::move(file));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SafetensorsModel>> SafetensorsModel::Open(
    const std::string& path) {
  std::unique_ptr<SafetensorsModel> model(new SafetensorsModel());
  model->path_ = path;
  if (IsRegularFile(path)) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                     SafetensorsFile::Open(path));
    RETURN_IF_ERROR(model->AddFile(std::move(file)));
    return model;
  }
  // transformers' order: a single file wins over an index.
  const std::string single = path + "/model.safetensors";
  if (IsRegularFile(single)) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                     SafetensorsFile::Open(single));
    RETURN_IF_ERROR(model->AddFile(std::move(file)));
    return model;
  }
  const std::string index_path = path + "/model.safetensors.index.json";
  if (!IsRegularFile(index_path)) {
    return absl::NotFoundError(absl::StrCat(
        path, ": no model.safetensors or model.safetensors.index.json"));
  }
  const auto invalid = [&](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": ", parts...));
  };
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
  absl::StatusOr<Json> index = Json::Parse(text);
  if (!index.ok()) return invalid(index.status().message());
  const Json* weight_map = index->Find("weight_map");
  if (weight_map == nullptr || !weight_map->is_object()) {
    return invalid("missing object field \"weight_map\"");
  }
  // Shards in first-mention order, each opened once.
  std::vector<std::string> shards;
  absl::flat_hash_map<std::string, size_t> shard_index;
  for (const auto& [tensor, shard] : weight_map->items()) {
    if (!shard.is_string()) {
      return invalid("weight_map['", tensor, "'] is a ",
                     Json::TypeName(shard.type()), ", expected a file name");
    }
    const std::string& name = shard.as_string();
    const std::filesystem::path p(name);
    const bool escapes =
        std::any_of(p.begin(), p.end(), [](const auto& c) { return c == ".."; });
    if (name.empty() || p.is_absolute() || escapes) {
      return invalid("weight_map['", tensor, "'] = '", name,
                     "': shard must be a relative path inside the directory");
    }
    if (shard_index.emplace(name, shards.size()).second) {
      shards.push_back(name);
    }
  }
  for (const std::string& shard : shards) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                     SafetensorsFile::Open(path + "/" + shard));
    RETURN_IF_ERROR(model->AddFile(std::move(file)));
  }
  for (const auto& [tensor, shard] : weight_map->items()) {
    const SafetensorsFile* holder = model->FileFor(tensor);
    const SafetensorsFile* named =
        model->files_[shard_index.at(shard.as_string())].get();
    if (holder != named) {
      return absl::DataLossError(absl::StrCat(
          index_path, ": weight_map puts tensor '", tensor, "' in ",
          shard.as_string(), ", which has no such tensor",
          holder == nullptr ? "" : absl::StrCat(" (it is in ", holder->path(),
                                                ")")));
    }
  }
  return model;
}

const SafetensorsFile* SafetensorsModel::FileFor(std::string_view name) const {
  const auto it = file_of_.find(ToAbsl(name));
  return it == file_of_.end() ? nullptr : files_[it->second].get();
}

const TensorInfo* SafetensorsModel::Find(std::string_view name) const {
  const SafetensorsFile* file = FileFor(name);
  return file == nullptr ? nullptr : file->Find(name);
}

absl::Status SafetensorsModel::NotFound(std::string_view name) const {
  return absl::NotFoundError(absl::StrCat(
      path_, ": no tensor named '", ToAbsl(name), "' (", tensors_.size(),
      " tensors in ", files_.size(), " file(s))"));
}

absl::Status SafetensorsModel::Read(std::string_view name,
                                    std::span<const int64_t> expected_shape,
                                    DType dtype, void* out) const {
  const SafetensorsFile* file = FileFor(name);
  if (file == nullptr) return NotFound(name);
  return file->Read(name, expected_shape, dtype, out);
}

absl::Status SafetensorsModel::ReadRange(std::string_view name,
                                         int64_t first_element, int64_t count,
                                         DType dtype, void* out) const {
  const SafetensorsFile* file = FileFor(name);
  if (file == nullptr) return NotFound(name);
  return file->ReadRange(name, first_element, count, dtype, out);
}

absl::Status SafetensorsModel::ReadF32(std::string_view name,
                                       std::span<const int64_t> expected_shape,
                                       float* out) const {
  const SafetensorsFile* file = FileFor(name);
  if (file == nullptr) return NotFound(name);
  return file->ReadF32(name, expected_shape, out);
}

absl::Status SafetensorsModel::ReadF32Range(std::string_view name,
                                            int64_t first_element,
                                            int64_t count, float* out) const {
  const SafetensorsFile* file = FileFor(name);
  if (file == nullptr) return NotFound(name);
  return file->ReadF32Range(name, first_element, count, out);
}

// ---------------------------------------------------------------------------
// SafetensorsWriter

void SafetensorsWriter::Add(std::string name, std::span<const int64_t> shape,
                            const float* data, SafetensorsDtype dtype) {
  entries_.push_back(Entry{std::move(name),
                           std::vector<int64_t>(shape.begin(), shape.end()),
                           data, dtype});
}

namespace {

// Writes count elements of `data` as `dtype`, converting through a bounded
// buffer so that a bf16 save of a large model needs no full-size copy.
absl::Status WriteConverted(AtomicFileWriter& file, const float* data, int64_t count,
                            SafetensorsDtype dtype) {
  if (count == 0) return absl::OkStatus();
  if (dtype == SafetensorsDtype::kDtypeF32) {
    return file.Append(data, static_cast<size_t>(count) * sizeof(float));
  }
  constexpr int64_t kChunk = int64_t{1} << 20;
  std::vector<uint16_t> buf(static_cast<size_t>(std::min(count, kChunk)));
  for (int64_t start = 0; start < count; start += kChunk) {
    const int64_t n = std::min(kChunk, count - start);
    for (int64_t k = 0; k < n; ++k) {
      buf[static_cast<size_t>(k)] = dtype == SafetensorsDtype::kDtypeBF16
                                        ? F32ToBf16(data[start + k])
                                        : F32ToF16(data[start + k]);
    }
    RETURN_IF_ERROR(file.Append(buf.data(), static_cast<size_t>(n) * sizeof(uint16_t)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SafetensorsWriter::Write(
    const std::string& path,
    const std::map<std::string, std::string>& metadata) const {
  const auto invalid = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", parts...));
  };
  // Validate and lay out the header before touching the disk.
  Json header = Json::Object();
  if (!metadata.empty()) {
    Json meta = Json::Object();
    for (const auto& [key, value] : metadata) meta.Set(key, value);
    header.Set(kMetadataKey, std::move(meta));
  }
  std::vector<int64_t> numels;
  numels.reserve(entries_.size());
  int64_t offset = 0;
  for (const Entry& e : entries_) {
    if (e.name == kMetadataKey || header.Find(e.name) != nullptr) {
      return invalid("tensor name '", e.name,
                     "' is reserved or added twice");
    }
    if (e.dtype != SafetensorsDtype::kDtypeF32 &&
        e.dtype != SafetensorsDtype::kDtypeBF16 &&
        e.dtype != SafetensorsDtype::kDtypeF16) {
      return invalid("tensor '", e.name, "': cannot write fp32 data as ",
                     SafetensorsDtypeName(e.dtype));
    }
    int64_t numel = 1;
    Json shape = Json::Array();
    for (int64_t d : e.shape) {
      if (d < 0 || __builtin_mul_overflow(numel, d, &numel)) {
        return invalid("tensor '", e.name, "': invalid shape ",
                       ShapeToString(e.shape));
      }
      shape.Push(d);
    }
    if (numel > 0 && e.data == nullptr) {
      return invalid("tensor '", e.name, "': data is null");
    }
    const int64_t bytes = numel * SafetensorsDtypeSize(e.dtype);
    Json entry = Json::Object();
    entry.Set("dtype", SafetensorsDtypeName(e.dtype));
    entry.Set("shape", std::move(shape));
    entry.Set("data_offsets", Json::Array().Push(offset).Push(offset + bytes));
    header.Set(e.name, std::move(entry));
    numels.push_back(numel);
    offset += bytes;
  }
  std::string header_text = header.Dump();
  // Pad so the data buffer starts 8-byte aligned (8 + N is a multiple of 8),
  // letting readers of our files use aligned loads.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_len = header_text.size();

  ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> file, AtomicFileWriter::Create(path));
  RETURN_IF_ERROR(file->Append(&header_len, sizeof(header_len)));
  RETURN_IF_ERROR(file->Append(header_text));
  for (size_t i = 0; i < entries_.size(); ++i) {
    RETURN_IF_ERROR(WriteConverted(*file, entries_[i].data, numels[i], entries_[i].dtype));
  }
  // fsync, rename, fsync of the directory; a failure removes the temporary.
  return file->Commit();
}

}  // namespace sheaf
