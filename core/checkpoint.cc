#include "core/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "base/file.h"
#include "base/open_beneath.h"
#include "base/status.h"

namespace sheaf {
namespace {

// Integers and floats are copied to and from the file with memcpy, which is
// the little-endian encoding the format specifies only on a little-endian
// host. Every target we build for is; a big-endian port would byte-swap here.
static_assert(std::endian::native == std::endian::little,
              "checkpoint encoding assumes a little-endian host");

constexpr char kMagic[8] = {'S', 'H', 'E', 'A', 'F', 'C', 'K', 'P'};
constexpr char kEndMagic[4] = {'C', 'K', 'P', 'T'};
constexpr size_t kHeaderSize = 16;   // magic, version, entry count
constexpr size_t kTrailerSize = 16;  // u64 length, u32 crc, end magic
constexpr uint32_t kKindF32 = 0;
constexpr uint32_t kKindBytes = 1;
// No real tensor comes close; the cap bounds what a corrupt file can make the
// reader allocate.
constexpr uint32_t kMaxDims = 64;

constexpr std::string_view kFilePrefix = "ckpt-";
constexpr std::string_view kFileSuffix = ".sheafckpt";
constexpr std::string_view kTmpInfix = ".tmp.";

// absl here is built with its own string_view; std::string_view does not
// convert implicitly.
absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

// --- CRC-32C, slicing-by-8 ---------------------------------------------------
// Table k maps a byte to its CRC contribution k bytes further along the
// message, so eight bytes are folded with eight lookups instead of eight
// dependent shift/lookup rounds.
using CrcTables = std::array<std::array<uint32_t, 256>, 8>;

constexpr CrcTables MakeCrcTables() {
  CrcTables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    t[0][i] = c;
  }
  for (size_t k = 1; k < 8; ++k) {
    for (uint32_t i = 0; i < 256; ++i) {
      t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFu];
    }
  }
  return t;
}

constexpr CrcTables kCrcTables = MakeCrcTables();

// --- Little-endian field helpers -------------------------------------------
template <typename T>
void PutScalar(std::string* out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out->append(bytes, sizeof(T));
}

template <typename T>
T GetScalar(const std::byte* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

uint64_t PaddingTo8(uint64_t offset) { return (8 - offset % 8) % 8; }

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Element count of `shape`, or nullopt on a negative dimension or overflow.
std::optional<int64_t> NumElements(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return std::nullopt;
  }
  return n;
}

// The bytes of one entry that precede its data, padding included, for an
// entry starting at file offset `offset`.
std::string EntryHeader(std::string_view name, uint32_t kind,
                        absl::Span<const int64_t> shape, uint64_t data_size,
                        uint64_t offset) {
  std::string h;
  PutScalar<uint32_t>(&h, static_cast<uint32_t>(name.size()));
  h.append(name);
  PutScalar<uint32_t>(&h, kind);
  PutScalar<uint32_t>(&h, static_cast<uint32_t>(shape.size()));
  for (int64_t d : shape) PutScalar<int64_t>(&h, d);
  PutScalar<uint64_t>(&h, data_size);
  h.append(PaddingTo8(offset + h.size()), '\0');
  return h;
}

absl::Status ErrnoError(int err, std::string_view what,
                        const std::string& path) {
  return absl::ErrnoToStatus(err, absl::StrCat(Sv(what), " ", path));
}

// Buffers small writes, streams large ones, and keeps a running CRC and
// offset, so that a checkpoint is never assembled a second time in memory.
class FileSink {
 public:
  explicit FileSink(AtomicFileWriter* file) : file_(file) {}

  absl::Status Append(const void* data, size_t size) {
    crc_ = Crc32cExtend(crc_, data, size);
    offset_ += size;
    if (buffer_.size() + size <= kBufferSize) {
      buffer_.append(static_cast<const char*>(data), size);
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(Flush());
    return file_->Append(data, size);
  }
  absl::Status Append(std::string_view s) { return Append(s.data(), s.size()); }

  absl::Status Flush() {
    absl::Status s = file_->Append(buffer_.data(), buffer_.size());
    buffer_.clear();
    return s;
  }

  uint32_t crc() const { return crc_; }
  uint64_t offset() const { return offset_; }

 private:
  static constexpr size_t kBufferSize = size_t{1} << 20;

  AtomicFileWriter* file_;
  std::string buffer_;
  uint32_t crc_ = 0;
  uint64_t offset_ = 0;
};

// Parses "ckpt-<9+ digits>.sheafckpt" (and, with a ".tmp.<pid>" tail, its
// temporary files). Only names PathForStep() would produce are accepted, so
// that "ckpt-5.sheafckpt" and "ckpt-000000005.sheafckpt" cannot both claim
// step 5.
struct ParsedName {
  int64_t step = 0;
  std::optional<pid_t> tmp_pid;  // set for a temporary file
};

std::optional<int64_t> ParseDigits(std::string_view s) {
  if (s.empty() || s.size() > 18) return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

std::string StepDigits(int64_t step) { return absl::StrFormat("%09d", step); }

std::optional<ParsedName> ParseFileName(std::string_view name) {
  if (name.substr(0, kFilePrefix.size()) != kFilePrefix) return std::nullopt;
  name.remove_prefix(kFilePrefix.size());
  const size_t suffix = name.find(kFileSuffix);
  if (suffix == std::string_view::npos) return std::nullopt;
  const std::string_view digits = name.substr(0, suffix);
  const std::optional<int64_t> step = ParseDigits(digits);
  if (!step || StepDigits(*step) != digits) return std::nullopt;
  ParsedName parsed{*step, std::nullopt};
  std::string_view rest = name.substr(suffix + kFileSuffix.size());
  if (rest.empty()) return parsed;
  if (rest.substr(0, kTmpInfix.size()) != kTmpInfix) return std::nullopt;
  rest.remove_prefix(kTmpInfix.size());
  const std::optional<int64_t> pid = ParseDigits(rest);
  if (!pid || *pid > std::numeric_limits<pid_t>::max()) return std::nullopt;
  parsed.tmp_pid = static_cast<pid_t>(*pid);
  return parsed;
}

// A temporary file is stale when its writer is gone. Our own pid's files are
// in flight (Write() removes them on failure), and another live process may be
// writing right now.
bool WriterIsGone(pid_t pid) {
  if (pid == ::getpid()) return false;
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

absl::Status MakeDirs(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoError(errno, "cannot create checkpoint directory", prefix);
    }
  }
  return absl::OkStatus();
}

}  // namespace

uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  for (; size >= 8; p += 8, size -= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    word ^= c;
    c = kCrcTables[7][word & 0xFF] ^ kCrcTables[6][(word >> 8) & 0xFF] ^
        kCrcTables[5][(word >> 16) & 0xFF] ^
        kCrcTables[4][(word >> 24) & 0xFF] ^
        kCrcTables[3][(word >> 32) & 0xFF] ^
        kCrcTables[2][(word >> 40) & 0xFF] ^
        kCrcTables[1][(word >> 48) & 0xFF] ^ kCrcTables[0][word >> 56];
  }
  for (; size > 0; ++p, --size) c = (c >> 8) ^ kCrcTables[0][(c ^ *p) & 0xFF];
  return ~c;
}

// --- CheckpointWriter --------------------------------------------------------

absl::Status CheckpointWriter::CheckName(std::string_view name) const {
  if (name.empty()) {
    return absl::InvalidArgumentError("checkpoint entry name is empty");
  }
  if (name.size() > UINT32_MAX) {
    return absl::InvalidArgumentError("checkpoint entry name is too long");
  }
  if (names_.contains(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("duplicate checkpoint entry '", Sv(name), "'"));
  }
  return absl::OkStatus();
}

absl::Status CheckpointWriter::AddTensor(std::string_view name,
                                         absl::Span<const int64_t> shape,
                                         const float* data) {
  RETURN_IF_ERROR(CheckName(name));
  const std::optional<int64_t> numel = NumElements(shape);
  int64_t bytes = 0;
  if (!numel || shape.size() > kMaxDims ||
      __builtin_mul_overflow(*numel, int64_t{sizeof(float)}, &bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint tensor '", Sv(name), "' has invalid shape ",
                     ShapeString(shape)));
  }
  if (bytes > 0 && data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint tensor '", Sv(name), "' has null data"));
  }
  Entry e{std::string(name), kKindF32,
          std::vector<int64_t>(shape.begin(), shape.end()), std::string()};
  if (bytes > 0) {
    e.data.assign(reinterpret_cast<const char*>(data),
                  static_cast<size_t>(bytes));
  }
  names_.insert(e.name);
  entries_.push_back(std::move(e));
  return absl::OkStatus();
}

absl::Status CheckpointWriter::AddBytes(std::string_view name,
                                        std::string_view bytes) {
  RETURN_IF_ERROR(CheckName(name));
  Entry e{std::string(name),
          kKindBytes,
          {static_cast<int64_t>(bytes.size())},
          std::string(bytes)};
  names_.insert(e.name);
  entries_.push_back(std::move(e));
  return absl::OkStatus();
}

uint64_t CheckpointWriter::FileSize() const {
  uint64_t offset = kHeaderSize;
  for (const Entry& e : entries_) {
    offset +=
        EntryHeader(e.name, e.kind, e.shape, e.data.size(), offset).size();
    offset += e.data.size();
  }
  return offset + kTrailerSize;
}

absl::Status CheckpointWriter::Write(const std::string& path) const {
  // The temporary file is PATH.tmp.<pid> (base/file.h), the name List()
  // recognises as stale once its writer is gone.
  ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> file, AtomicFileWriter::Create(path));
  FileSink sink(file.get());
  std::string header(kMagic, sizeof(kMagic));
  PutScalar<uint32_t>(&header, kCheckpointVersion);
  PutScalar<uint32_t>(&header, static_cast<uint32_t>(entries_.size()));
  RETURN_IF_ERROR(sink.Append(header));
  for (const Entry& e : entries_) {
    RETURN_IF_ERROR(sink.Append(
        EntryHeader(e.name, e.kind, e.shape, e.data.size(), sink.offset())));
    RETURN_IF_ERROR(sink.Append(e.data));
  }
  const uint64_t length = sink.offset();
  const uint32_t crc = sink.crc();
  std::string trailer;
  PutScalar<uint64_t>(&trailer, length);
  PutScalar<uint32_t>(&trailer, crc);
  trailer.append(kEndMagic, sizeof(kEndMagic));
  RETURN_IF_ERROR(sink.Append(trailer));
  RETURN_IF_ERROR(sink.Flush());
  // fsync, rename, fsync of the directory; a failure removes the temporary.
  return file->Commit();
}

// --- Checkpoint --------------------------------------------------------------

absl::StatusOr<Checkpoint> Checkpoint::Read(const std::string& path) {
  // Beneath the process's roots (base/open_beneath.h), regular files only.
  ASSIGN_OR_RETURN(const int fd, OpenForReading(path));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(err, "cannot stat checkpoint", path);
  }
  Checkpoint ckpt;
  ckpt.path_ = path;
  ckpt.buffer_size_ = static_cast<uint64_t>(st.st_size);
  ckpt.buffer_ = std::make_unique_for_overwrite<std::byte[]>(
      static_cast<size_t>(ckpt.buffer_size_));
  uint64_t got = 0;
  while (got < ckpt.buffer_size_) {
    const ssize_t n = ::pread(fd, ckpt.buffer_.get() + got,
                              static_cast<size_t>(ckpt.buffer_size_ - got),
                              static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return ErrnoError(err, "cannot read checkpoint", path);
    }
    if (n == 0) break;  // the file shrank under us; caught as truncation
    got += static_cast<uint64_t>(n);
  }
  ::close(fd);
  ckpt.buffer_size_ = got;

  const std::byte* const base = ckpt.buffer_.get();
  const uint64_t size = ckpt.buffer_size_;
  auto data_loss = [&](std::string_view why) {
    return absl::DataLossError(
        absl::StrCat("checkpoint ", path, ": ", Sv(why)));
  };

  // Magic first: a file that is not a checkpoint at all deserves that
  // message rather than "truncated".
  const size_t magic_seen = static_cast<size_t>(std::min<uint64_t>(size, 8));
  if (std::memcmp(base, kMagic, magic_seen) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a sheaf checkpoint (starts with \"",
                     absl::CHexEscape(absl::string_view(
                         reinterpret_cast<const char*>(base), magic_seen)),
                     "\", expected \"SHEAFCKP\")"));
  }
  if (size < kHeaderSize) {
    return data_loss(
        absl::StrCat("truncated: ", size, " bytes, shorter than the header"));
  }
  const uint32_t version = GetScalar<uint32_t>(base + 8);
  if (version > kCheckpointVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", path, " has format version ", version,
                     "; this build reads versions up to ", kCheckpointVersion,
                     ". It was written by a newer sheaf."));
  }
  if (version == 0) return data_loss("invalid format version 0");
  if (size < kHeaderSize + kTrailerSize) {
    return data_loss(absl::StrCat("truncated: ", size,
                                  " bytes, too short for header and trailer"));
  }
  const std::byte* trailer = base + size - kTrailerSize;
  if (std::memcmp(trailer + 12, kEndMagic, sizeof(kEndMagic)) != 0) {
    return data_loss(
        absl::StrCat("truncated or corrupt: no end marker \"CKPT\" (file is ",
                     size, " bytes)"));
  }
  const uint64_t length = GetScalar<uint64_t>(trailer);
  if (length != size - kTrailerSize) {
    return data_loss(absl::StrCat("truncated or corrupt: trailer records ",
                                  length, " bytes of entries, file has ",
                                  size - kTrailerSize));
  }
  const uint32_t stored_crc = GetScalar<uint32_t>(trailer + 8);
  const uint32_t actual_crc = Crc32cExtend(0, base, length);
  if (stored_crc != actual_crc) {
    return absl::DataLossError(absl::StrFormat(
        "checksum mismatch in %s (stored crc32c %08x, computed %08x)", path,
        stored_crc, actual_crc));
  }

  // The checksum matched, so what follows guards against a buggy or hostile
  // writer rather than against bit rot: every read is bounds-checked.
  uint64_t pos = kHeaderSize;
  auto need = [&](uint64_t n, std::string_view what) -> absl::Status {
    if (n > length - pos) {
      return data_loss(absl::StrCat(Sv(what), " at offset ", pos,
                                    " runs past the end of the entries"));
    }
    return absl::OkStatus();
  };
  const uint32_t count = GetScalar<uint32_t>(base + 12);
  for (uint32_t i = 0; i < count; ++i) {
    Entry e;
    RETURN_IF_ERROR(need(4, "entry name length"));
    const uint32_t name_size = GetScalar<uint32_t>(base + pos);
    pos += 4;
    RETURN_IF_ERROR(need(name_size, "entry name"));
    e.name.assign(reinterpret_cast<const char*>(base + pos), name_size);
    pos += name_size;
    RETURN_IF_ERROR(need(8, absl::StrCat("header of entry '", e.name, "'")));
    e.kind = GetScalar<uint32_t>(base + pos);
    const uint32_t ndim = GetScalar<uint32_t>(base + pos + 4);
    pos += 8;
    if (e.kind != kKindF32 && e.kind != kKindBytes) {
      return data_loss(
          absl::StrCat("entry '", e.name, "' has unknown kind ", e.kind));
    }
    if (ndim > kMaxDims) {
      return data_loss(
          absl::StrCat("entry '", e.name, "' has ", ndim, " dimensions"));
    }
    RETURN_IF_ERROR(need(8 * uint64_t{ndim} + 8,
                         absl::StrCat("shape of entry '", e.name, "'")));
    for (uint32_t d = 0; d < ndim; ++d) {
      e.shape.push_back(GetScalar<int64_t>(base + pos));
      pos += 8;
    }
    e.size = GetScalar<uint64_t>(base + pos);
    pos += 8;
    const std::optional<int64_t> numel = NumElements(e.shape);
    const bool consistent =
        numel.has_value() &&
        (e.kind == kKindF32
             ? e.size / sizeof(float) == static_cast<uint64_t>(*numel) &&
                   e.size % sizeof(float) == 0
             : ndim == 1 && e.size == static_cast<uint64_t>(*numel));
    if (!consistent) {
      return data_loss(absl::StrCat("entry '", e.name, "' has ", e.size,
                                    " bytes, inconsistent with shape ",
                                    ShapeString(e.shape)));
    }
    RETURN_IF_ERROR(need(PaddingTo8(pos), "padding"));
    pos += PaddingTo8(pos);
    RETURN_IF_ERROR(need(e.size, absl::StrCat("data of entry '", e.name, "'")));
    e.offset = pos;
    pos += e.size;
    if (ckpt.index_.contains(e.name)) {
      return data_loss(absl::StrCat("duplicate entry '", e.name, "'"));
    }
    ckpt.index_.emplace(e.name, ckpt.entries_.size());
    ckpt.entries_.push_back(std::move(e));
  }
  if (pos != length) {
    return data_loss(
        absl::StrCat(length - pos, " unexplained bytes after the last entry"));
  }
  return ckpt;
}

bool Checkpoint::Has(std::string_view name) const {
  return index_.contains(name);
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const Entry& e : entries_) names.push_back(e.name);
  return names;
}

absl::StatusOr<const Checkpoint::Entry*> Checkpoint::Find(
    std::string_view name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint ", path_, " has no entry '", Sv(name), "'"));
  }
  return &entries_[it->second];
}

absl::StatusOr<const std::vector<int64_t>*> Checkpoint::ShapeOf(
    std::string_view name) const {
  ASSIGN_OR_RETURN(const Entry* e, Find(name));
  if (e->kind != kKindF32) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint entry '", e->name, "' in ", path_,
                     " holds raw bytes, not an f32 tensor"));
  }
  return &e->shape;
}

absl::StatusOr<std::vector<int64_t>> Checkpoint::TensorShape(
    std::string_view name) const {
  ASSIGN_OR_RETURN(const std::vector<int64_t>* shape, ShapeOf(name));
  return *shape;
}

absl::StatusOr<std::span<const float>> Checkpoint::Tensor(
    std::string_view name, absl::Span<const int64_t> expected_shape) const {
  ASSIGN_OR_RETURN(const std::vector<int64_t>* shape, ShapeOf(name));
  if (absl::Span<const int64_t>(*shape) != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint entry '", Sv(name), "' has shape ", ShapeString(*shape),
        ", expected ", ShapeString(expected_shape), " (", path_, ")"));
  }
  const Entry& e = entries_[index_.find(name)->second];
  return std::span<const float>(
      reinterpret_cast<const float*>(buffer_.get() + e.offset),
      static_cast<size_t>(e.size / sizeof(float)));
}

absl::StatusOr<std::string_view> Checkpoint::Bytes(
    std::string_view name) const {
  ASSIGN_OR_RETURN(const Entry* e, Find(name));
  if (e->kind != kKindBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint entry '", e->name, "' in ", path_,
                     " is an f32 tensor, not raw bytes"));
  }
  return std::string_view(
      reinterpret_cast<const char*>(buffer_.get() + e->offset),
      static_cast<size_t>(e->size));
}

// --- CheckpointDir -----------------------------------------------------------

CheckpointDir::CheckpointDir(std::string dir, int keep_last)
    : dir_(std::move(dir)), keep_last_(keep_last) {
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  if (dir_.empty()) dir_ = ".";
}

std::string CheckpointDir::PathForStep(int64_t step) const {
  return absl::StrCat(dir_, "/", Sv(kFilePrefix), StepDigits(step),
                      Sv(kFileSuffix));
}

absl::StatusOr<CheckpointDir::Listing> CheckpointDir::List() const {
  DIR* d = ::opendir(dir_.c_str());
  if (d == nullptr) {
    return ErrnoError(errno, "cannot list checkpoint directory", dir_);
  }
  Listing listing;
  while (const dirent* ent = ::readdir(d)) {
    const std::optional<ParsedName> parsed = ParseFileName(ent->d_name);
    if (!parsed) continue;
    const std::string path = absl::StrCat(dir_, "/", ent->d_name);
    if (!parsed->tmp_pid) {
      listing.checkpoints.emplace_back(parsed->step, path);
    } else if (WriterIsGone(*parsed->tmp_pid)) {
      listing.stale_tmp.push_back(path);
    }
  }
  ::closedir(d);
  std::sort(listing.checkpoints.begin(), listing.checkpoints.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  return listing;
}

void CheckpointDir::RemoveStaleTmp(const Listing& listing,
                                   std::vector<std::string>* warnings) const {
  for (const std::string& path : listing.stale_tmp) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT && warnings != nullptr) {
      warnings->push_back(
          ErrnoError(errno, "cannot remove stale temporary file", path)
              .ToString());
    }
  }
}

absl::Status CheckpointDir::Save(int64_t step,
                                 const CheckpointWriter& writer) const {
  if (step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint step must be >= 0, got ", step));
  }
  RETURN_IF_ERROR(MakeDirs(dir_));
  const std::string written = PathForStep(step);
  RETURN_IF_ERROR(writer.Write(written));
  if (keep_last_ <= 0) return absl::OkStatus();

  ASSIGN_OR_RETURN(const Listing listing, List());
  RemoveStaleTmp(listing, nullptr);
  // Newest first. The file just written counts as one of the keep_last (it
  // was fsynced a moment ago) but is never deleted, even if newer-numbered
  // checkpoints outrank it.
  int kept = 0;
  for (const auto& checkpoint : listing.checkpoints) {
    const std::string& path = checkpoint.second;
    if (path == written) {
      ++kept;
      continue;
    }
    if (kept < keep_last_) {
      const absl::Status valid = Checkpoint::Read(path).status();
      if (valid.ok()) {
        ++kept;
        continue;
      }
      // Only a file proven corrupt is deleted in place of a survivor. A read
      // that failed for another reason (EMFILE, EIO, permissions, a newer
      // format version) says nothing about the file, and deleting it could
      // throw away the only good copy.
      if (!absl::IsDataLoss(valid) && !absl::IsInvalidArgument(valid)) continue;
    }
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoError(errno, "cannot remove old checkpoint", path);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::pair<int64_t, Checkpoint>>>
CheckpointDir::LoadLatest(std::vector<std::string>* warnings) const {
  absl::StatusOr<Listing> listing = List();
  if (absl::IsNotFound(listing.status())) return std::nullopt;
  RETURN_IF_ERROR(listing.status());
  RemoveStaleTmp(*listing, warnings);
  for (const auto& [step, path] : listing->checkpoints) {
    absl::StatusOr<Checkpoint> ckpt = Checkpoint::Read(path);
    if (ckpt.ok()) {
      return std::make_optional(std::make_pair(step, *std::move(ckpt)));
    }
    if (warnings != nullptr) {
      warnings->push_back(absl::StrCat("skipping checkpoint ", path, ": ",
                                       ckpt.status().ToString()));
    }
  }
  return std::nullopt;
}

}  // namespace sheaf
