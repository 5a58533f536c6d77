// Reading and writing the safetensors format (Hugging Face).
//
// Layout of a .safetensors file:
//   bytes [0, 8)        N, the header length: unsigned 64-bit little-endian.
//   bytes [8, 8+N)      the header: UTF-8 JSON, an object mapping
//                         tensor name -> {"dtype": "F32",
//                                         "shape": [d0, d1, ...],
//                                         "data_offsets": [begin, end]}
//                       plus an optional "__metadata__": {string: string}.
//                       Writers pad it with trailing spaces so that the data
//                       starts 8-byte aligned.
//   bytes [8+N, EOF)    the data buffer. Offsets are relative to its start;
//                       each tensor is row-major, little-endian, and the
//                       tensors tile the buffer exactly (no gaps, no overlap).
// There is no magic number or version: the header length plus a header that
// parses and tiles the buffer is the whole format check, which is why the
// reader validates every field.
//
// Dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL. Anything else (F8_*, U16..)
// is rejected at Open with the dtype and tensor named.
#ifndef SHEAF_CORE_SAFETENSORS_H_
#define SHEAF_CORE_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace sheaf {

enum class SafetensorsDtype {
  kDtypeF64,
  kDtypeF32,
  kDtypeF16,
  kDtypeBF16,
  kDtypeI64,
  kDtypeI32,
  kDtypeI16,
  kDtypeI8,
  kDtypeU8,
  kDtypeBool,
};
// The header spelling ("F32", "BF16", ...).
const char* SafetensorsDtypeName(SafetensorsDtype dtype);
// Bytes per element.
int64_t SafetensorsDtypeSize(SafetensorsDtype dtype);
// Parses a header spelling; false when unknown.
bool ParseSafetensorsDtype(std::string_view name, SafetensorsDtype* dtype);

// Element conversions used by the reader and writer, exposed for tests and
// for kernels that keep bf16/fp16 copies. To-narrow conversions round to
// nearest, ties to even; NaN stays NaN (quiet), overflow becomes infinity.
float Bf16ToF32(uint16_t bits);
uint16_t F32ToBf16(float value);
float F16ToF32(uint16_t bits);
uint16_t F32ToF16(float value);

// "[2, 3]": shapes in error messages.
std::string ShapeToString(std::span<const int64_t> shape);

// One tensor's header entry, validated.
struct TensorInfo {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kDtypeF32;
  std::vector<int64_t> shape;  // empty for a scalar (numel 1)
  int64_t begin = 0;           // byte offsets into the data buffer
  int64_t end = 0;

  int64_t numel() const;
  int64_t bytes() const { return end - begin; }
};

// One .safetensors file, memory-mapped read-only (tensor data is never copied
// wholesale; reads touch only the pages they need).
//
// Lifecycle: Open validates the header completely, so every TensorInfo it
// exposes is consistent with the file size. The mapping lives as long as the
// object. Thread-safety: immutable after Open; all methods are const and safe
// to call concurrently.
//
// Caveat of mmap: if another process truncates the file while it is mapped,
// touching the lost pages raises SIGBUS. Checkpoints we write are replaced by
// rename, never truncated in place, so our own files are safe.
class SafetensorsFile {
 public:
  // Errors (each names the file and the problem):
  //   NotFound / PermissionDenied / ...: the file cannot be opened (errno).
  //   DataLoss: the file is shorter than its 8-byte length prefix, the header
  //     length runs past the end of the file, or a tensor's data_offsets run
  //     past the end of the data buffer (a truncated file).
  //   InvalidArgument: header over 100 MB, header not valid JSON or not an
  //     object, bad __metadata__, unknown dtype, shape not non-negative
  //     integers, data_offsets not two non-negative integers or begin > end,
  //     byte length != numel * dtype size, overlapping tensors, bytes of the
  //     buffer that belong to no tensor.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // In header order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;
  // Find, or NotFound naming the file and the tensor.
  absl::StatusOr<const TensorInfo*> FindOrError(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  // The raw little-endian bytes of `info`, which must come from this file.
  std::span<const std::byte> Bytes(const TensorInfo& info) const;

  // Converts tensor `name` (F32, F16, BF16 or F64) to fp32 into
  // out[0, numel). Errors: NotFound (no such tensor), InvalidArgument (shape
  // differs from `expected_shape`: names the tensor and both shapes; or the
  // dtype is not a float type).
  absl::Status ReadF32(std::string_view name,
                       std::span<const int64_t> expected_shape,
                       float* out) const;
  // Converts elements [first_element, first_element + count) of tensor `name`
  // in row-major order, touching only those bytes: how a process loads its
  // shard of a weight. Errors: NotFound, InvalidArgument (dtype), OutOfRange
  // (range not inside [0, numel)).
  absl::Status ReadF32Range(std::string_view name, int64_t first_element,
                            int64_t count, float* out) const;

  // Reads tensor `name` into storage of `dtype` (out holds DTypeBytes(dtype,
  // numel) bytes): f32 converts as ReadF32 does; bf16 copies the bytes of a
  // BF16 tensor as they are (no widening, and no silent narrowing: another
  // file dtype is InvalidArgument). Other dtypes are Unimplemented (NF4
  // comes with its quantiser; its ranges will be whole 64-element blocks).
  // Errors otherwise as ReadF32.
  absl::Status Read(std::string_view name,
                    std::span<const int64_t> expected_shape, DType dtype,
                    void* out) const;
  // Elements [first_element, first_element + count) in `dtype` storage
  // (row-major; out receives DTypeBytes(dtype, count) bytes).
  absl::Status ReadRange(std::string_view name, int64_t first_element,
                         int64_t count, DType dtype, void* out) const;

 private:
  SafetensorsFile() = default;
  absl::Status ParseHeader(std::string_view header);

  std::string path_;
  const std::byte* map_ = nullptr;  // whole file
  size_t map_size_ = 0;
  const std::byte* data_ = nullptr;  // start of the data buffer inside map_
  int64_t data_size_ = 0;
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;  // name -> tensors_ index
  std::map<std::string, std::string> metadata_;
};

// All the weights of a model directory, possibly sharded:
//   dir/model.safetensors, or
//   dir/model.safetensors.index.json ({"weight_map": {tensor: shard file}})
//   plus the shard files it names (relative to dir).
// Lookups go by tensor name across shards. Thread-safety as SafetensorsFile.
class SafetensorsModel {
 public:
  // `path` is a model directory as above, or a single .safetensors file.
  // Errors: NotFound (neither file exists); InvalidArgument (index not JSON,
  // weight_map missing or not {string: string}, a shard path that is absolute
  // or contains "..", a tensor present in two shards); DataLoss (the index
  // maps a tensor to a shard that does not contain it); and any error of
  // SafetensorsFile::Open for a shard.
  static absl::StatusOr<std::unique_ptr<SafetensorsModel>> Open(
      const std::string& path);

  // Every tensor of every shard: shards in first-mention order, each in header
  // order.
  const std::vector<const TensorInfo*>& tensors() const { return tensors_; }
  const TensorInfo* Find(std::string_view name) const;
  // The shard holding `name`, or nullptr.
  const SafetensorsFile* FileFor(std::string_view name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const {
    return files_;
  }

  // As SafetensorsFile's, looked up across shards.
  absl::Status ReadF32(std::string_view name,
                       std::span<const int64_t> expected_shape,
                       float* out) const;
  absl::Status ReadF32Range(std::string_view name, int64_t first_element,
                            int64_t count, float* out) const;
  absl::Status Read(std::string_view name,
                    std::span<const int64_t> expected_shape, DType dtype,
                    void* out) const;
  absl::Status ReadRange(std::string_view name, int64_t first_element,
                         int64_t count, DType dtype, void* out) const;

 private:
  SafetensorsModel() = default;
  absl::Status AddFile(std::unique_ptr<SafetensorsFile> file);
  absl::Status NotFound(std::string_view name) const;

  std::string path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<const TensorInfo*> tensors_;
  // name -> index into files_
  absl::flat_hash_map<std::string, size_t> file_of_;
};

// Builds a .safetensors file from fp32 arrays.
//
// Lifecycle: Add every tensor, then Write (once or more). Add keeps the
// `data` pointer, not a copy, so that saving a model does not double its
// memory: the arrays must stay alive and unchanged until Write returns.
// Not thread-safe.
class SafetensorsWriter {
 public:
  // Queues a tensor, stored as `dtype`: kDtypeF32 (bit-exact), kDtypeBF16 or
  // kDtypeF16 (round to nearest even). Errors (a duplicate or reserved name,
  // a negative dimension, a null `data` for a non-empty tensor, another
  // dtype) are reported by Write, so call sites stay one line.
  void Add(std::string name, std::span<const int64_t> shape, const float* data,
           SafetensorsDtype dtype = SafetensorsDtype::kDtypeF32);

  // Writes the tensors in the order added, with `metadata` as __metadata__
  // (omitted when empty). Atomic: writes `path.tmp.<pid>`, fsyncs it, renames
  // it over `path` and fsyncs the directory, so readers see the old file or
  // the complete new one, even after a crash. Errors: InvalidArgument (see
  // Add); errno-derived codes for I/O failures, naming the file.
  absl::Status Write(const std::string& path,
                     const std::map<std::string, std::string>& metadata =
                         {}) const;

  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string name;
    std::vector<int64_t> shape;
    const float* data;
    SafetensorsDtype dtype;
  };
  std::vector<Entry> entries_;
};

}  // namespace sheaf

#endif  // SHEAF_CORE_SAFETENSORS_H_
