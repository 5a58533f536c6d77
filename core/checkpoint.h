// Self-describing checkpoint files and a directory of them.
//
// A checkpoint is a flat list of named entries: fp32 tensors (adapter params,
// optimizer moments) and raw byte strings (optimizer step, data-loader
// position, RNG state, config text). Nothing in the format knows about
// training; the trainer decides the names.
//
// File layout, version 1. All integers little-endian; offsets are from the
// start of the file.
//
//   offset  size       field
//   0       8          magic "SHEAFCKP"
//   8       4          u32 version (= 1)
//   12      4          u32 entry count N
//   16      ...        N entries, back to back:
//                        u32  name length L
//                        L    name bytes (UTF-8 by convention, not checked)
//                        u32  kind: 0 = f32 tensor, 1 = raw bytes
//                        u32  ndim D
//                        8·D  i64 shape[D]  (raw bytes: D = 1, shape = {B})
//                        u64  byte length B (f32: 4 · Π shape; bytes: B)
//                        0-7  zero padding up to the next multiple of 8
//                        B    data (f32 little-endian for kind 0)
//   T       8          trailer: u64 T = length of everything before it
//   T+8     4          u32 CRC-32C (Castagnoli) of bytes [0, T)
//   T+12    4          end magic "CKPT"; the file is exactly T + 16 bytes
//
// The padding makes every tensor start 8-byte aligned in the file, so a
// reader that loads the file into an aligned buffer hands out float spans
// without copying. The trailer sits at the end so that a truncated file
// (a full disk, a killed copy) is recognised before anything else is
// trusted: its last bytes are not "CKPT" or T no longer matches the size.
// The version is checked before the trailer, because a future version may
// change the trailer itself.
//
// Files are written atomically (temporary file, fsync, rename, fsync of the
// directory), so a crash leaves either the old file or the new one, plus at
// worst a stray "<path>.tmp.<pid>".
#ifndef SHEAF_CORE_CHECKPOINT_H_
#define SHEAF_CORE_CHECKPOINT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace sheaf {

inline constexpr uint32_t kCheckpointVersion = 1;

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) as in iSCSI and ext4;
// Crc32c("123456789") == 0xE3069283. Extend chains: Crc32cExtend(Crc32c(a),
// b) == Crc32c(a + b).
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t size);
inline uint32_t Crc32c(std::string_view data) {
  return Crc32cExtend(0, data.data(), data.size());
}

// Builds a checkpoint in memory, then writes it in one go.
//
// Add*() copy their data, so the caller may keep training while (or after)
// the writer holds a snapshot. Entries are written in the order added. Not
// thread-safe.
class CheckpointWriter {
 public:
  // Shapes are absl::Span so that call sites can pass `{rows, cols}`.
  // InvalidArgument for an empty or duplicate name, a negative dimension or
  // an element count that overflows.
  absl::Status AddTensor(std::string_view name, absl::Span<const int64_t> shape,
                         const float* data);
  // InvalidArgument for an empty or duplicate name.
  absl::Status AddBytes(std::string_view name, std::string_view bytes);

  // Writes the file atomically: `<path>.tmp.<pid>`, fsync, rename over
  // `path`, fsync of the directory. On failure the temporary file is removed
  // and `path` is untouched. Errors carry the errno-derived code
  // (NotFound for a missing directory, PermissionDenied, ResourceExhausted
  // for a full disk, ...) and name the path.
  absl::Status Write(const std::string& path) const;

  // Bytes Write() will produce.
  uint64_t FileSize() const;

 private:
  struct Entry {
    std::string name;
    uint32_t kind;
    std::vector<int64_t> shape;
    std::string data;
  };
  absl::Status CheckName(std::string_view name) const;

  std::vector<Entry> entries_;
  std::set<std::string, std::less<>> names_;
};

// A checkpoint file read and validated in full. Move-only; the tensor spans it
// hands out point into its buffer and stay valid while it lives (also across
// moves).
class Checkpoint {
 public:
  // Reads and validates `path`:
  //   NotFound / PermissionDenied / ... : the file cannot be read;
  //   InvalidArgument: not a sheaf checkpoint (bad magic);
  //   FailedPrecondition: written by a newer format version (names it);
  //   DataLoss: truncated, trailer mismatch, "checksum mismatch in <path>",
  //             or entries that run out of bounds or contradict their shape.
  static absl::StatusOr<Checkpoint> Read(const std::string& path);

  Checkpoint(Checkpoint&&) = default;
  Checkpoint& operator=(Checkpoint&&) = default;

  bool Has(std::string_view name) const;
  // Entry names in file order.
  std::vector<std::string> Names() const;

  // The tensor `name`, which must have exactly `expected_shape`.
  // NotFound if absent; InvalidArgument naming the entry if it is not a
  // tensor or its shape differs (both shapes in the message).
  absl::StatusOr<std::span<const float>> Tensor(
      std::string_view name, absl::Span<const int64_t> expected_shape) const;
  // The stored shape of tensor `name`, for callers that size their buffers
  // from the file. NotFound / InvalidArgument as above.
  absl::StatusOr<std::vector<int64_t>> TensorShape(std::string_view name) const;
  // The raw bytes `name`. NotFound if absent; InvalidArgument if a tensor.
  absl::StatusOr<std::string_view> Bytes(std::string_view name) const;

  const std::string& path() const { return path_; }

 private:
  struct Entry {
    std::string name;
    uint32_t kind;
    std::vector<int64_t> shape;
    uint64_t offset;  // of the data within buffer_
    uint64_t size;    // bytes
  };
  Checkpoint() = default;
  // NotFound if absent.
  absl::StatusOr<const Entry*> Find(std::string_view name) const;
  // NotFound if absent; InvalidArgument if not a tensor.
  absl::StatusOr<const std::vector<int64_t>*> ShapeOf(
      std::string_view name) const;

  std::string path_;
  // new[]-allocated, hence aligned for any scalar type; the format aligns
  // tensor data to 8 within the file. std::byte storage may hold the floats
  // handed out (implicit object creation), which char storage may not.
  std::unique_ptr<std::byte[]> buffer_;
  uint64_t buffer_size_ = 0;
  std::vector<Entry> entries_;  // file order
  // name → entries_ index; std::less<> allows lookup by string_view.
  std::map<std::string, size_t, std::less<>> index_;
};

// A directory of checkpoints named ckpt-<step>.sheafckpt, the step
// zero-padded to 9 digits so that names sort by step.
//
// "Newest" means highest step, not latest mtime: after a resume the step is
// what identifies progress. Files that do not match the name pattern are
// never touched, except stray "<checkpoint name>.tmp.<pid>" files left by a
// crashed writer, which are removed when that process no longer exists.
//
// Not thread-safe; one process writes a directory. Another process may
// LoadLatest() concurrently (e.g. an evaluator): a checkpoint pruned under it
// is reported as a warning and skipped.
class CheckpointDir {
 public:
  // keep_last <= 0 keeps every checkpoint.
  CheckpointDir(std::string dir, int keep_last);

  // Writes `writer` as the checkpoint for `step` (creating the directory if
  // needed), then deletes every checkpoint except the newest keep_last valid
  // ones. The file just written counts as one of them and is never deleted,
  // even when higher-numbered checkpoints outrank it. Corrupt checkpoints
  // (DataLoss, InvalidArgument from Checkpoint::Read) are deleted: they could
  // only ever be skipped. A file that fails to read for any other reason
  // (I/O error, permissions, newer format version) is left alone, since that
  // proves nothing about its contents. InvalidArgument for step < 0; errors
  // from Write(); a failed deletion is an error too, since ignoring it would
  // silently fill the disk.
  absl::Status Save(int64_t step, const CheckpointWriter& writer) const;

  // Loads the newest valid checkpoint. A newer file that fails to read
  // (corrupt, truncated, vanished) adds a warning naming the file and the
  // reason, and the previous one is tried. Returns nullopt when there is no
  // valid checkpoint, including when the directory does not exist yet.
  // Errors only when the directory cannot be listed. `warnings` may be null.
  absl::StatusOr<std::optional<std::pair<int64_t, Checkpoint>>> LoadLatest(
      std::vector<std::string>* warnings) const;

  // dir/ckpt-<step, 9 digits>.sheafckpt
  std::string PathForStep(int64_t step) const;
  const std::string& dir() const { return dir_; }

 private:
  struct Listing {
    std::vector<std::pair<int64_t, std::string>> checkpoints;  // newest first
    std::vector<std::string> stale_tmp;  // tmp files of dead processes
  };
  // NotFound when the directory does not exist.
  absl::StatusOr<Listing> List() const;
  void RemoveStaleTmp(const Listing& listing,
                      std::vector<std::string>* warnings) const;

  std::string dir_;
  int keep_last_;
};

}  // namespace sheaf

#endif  // SHEAF_CORE_CHECKPOINT_H_
