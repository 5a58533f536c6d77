#include "core/data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/open_beneath.h"
#include "base/status.h"

namespace sheaf {
namespace {

// The format is little-endian and is read by plain loads from the mapping.
static_assert(std::endian::native == std::endian::little,
              "token files are read in place; a big-endian host would need "
              "byte swapping");

// On-disk header; see token_file.h for the meaning of each field.
struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t bytes_per_token;
  uint32_t vocab_size;
  uint32_t bos_id;
  uint32_t eos_id;
  uint32_t reserved;
  uint64_t num_docs;
  uint64_t num_tokens;
  uint64_t tokens_offset;
  uint64_t offsets_offset;
};
static_assert(sizeof(FileHeader) == kTokenFileHeaderBytes);

constexpr size_t kFlushBytes = size_t{1} << 20;

uint64_t RoundUp8(uint64_t n) { return (n + 7) / 8 * 8; }

int BytesPerToken(int32_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

absl::Status ErrnoError(int error, const std::string& what,
                        const std::string& path) {
  return absl::ErrnoToStatus(error, absl::StrCat(what, " ", path));
}

}  // namespace

// --- TokenFileWriter ---------------------------------------------------------

absl::StatusOr<std::unique_ptr<TokenFileWriter>> TokenFileWriter::Create(
    const std::string& path, int32_t vocab_size, int32_t bos_id,
    int32_t eos_id) {
  if (vocab_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("token file ", path, ": vocab_size must be positive, got ",
                     vocab_size));
  }
  for (int32_t id : {bos_id, eos_id}) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token file ", path, ": special token id ", id,
                       " outside [0, ", vocab_size, ")"));
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> file,
                   AtomicFileWriter::Create(path));
  auto writer = std::unique_ptr<TokenFileWriter>(new TokenFileWriter(
      path, std::move(file), vocab_size, bos_id, eos_id));
  // Room for the header, which is only known at Finish().
  const char zeros[kTokenFileHeaderBytes] = {};
  RETURN_IF_ERROR(writer->WriteBytes(zeros, sizeof(zeros)));
  return writer;
}

TokenFileWriter::TokenFileWriter(std::string path,
                                 std::unique_ptr<AtomicFileWriter> file,
                                 int32_t vocab_size, int32_t bos_id,
                                 int32_t eos_id)
    : path_(std::move(path)),
      file_(std::move(file)),
      vocab_size_(vocab_size),
      bos_id_(bos_id),
      eos_id_(eos_id),
      bytes_per_token_(BytesPerToken(vocab_size)),
      doc_offsets_{0} {
  buffer_.reserve(kFlushBytes + 4096);
}

// An unfinished writer's file_ removes its temporary file.
TokenFileWriter::~TokenFileWriter() = default;

absl::Status TokenFileWriter::FlushBuffer() {
  RETURN_IF_ERROR(file_->Append(buffer_.data(), buffer_.size()));
  buffer_.clear();
  return absl::OkStatus();
}

absl::Status TokenFileWriter::WriteBytes(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  buffer_.insert(buffer_.end(), p, p + size);
  if (buffer_.size() >= kFlushBytes) return FlushBuffer();
  return absl::OkStatus();
}

absl::Status TokenFileWriter::AddDocument(absl::Span<const int32_t> tokens) {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("token file ", path_, ": AddDocument after Finish"));
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token file ", path_, ": document ", num_docs(), " has no tokens"));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t id = tokens[i];
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token file ", path_, ": document ", num_docs(), " token ", i,
          " has id ", id, " outside [0, ", vocab_size_, ")"));
    }
    if (bytes_per_token_ == 2) {
      const uint16_t v = static_cast<uint16_t>(id);
      RETURN_IF_ERROR(WriteBytes(&v, sizeof(v)));
    } else {
      const uint32_t v = static_cast<uint32_t>(id);
      RETURN_IF_ERROR(WriteBytes(&v, sizeof(v)));
    }
  }
  doc_offsets_.push_back(doc_offsets_.back() + tokens.size());
  return absl::OkStatus();
}

absl::Status TokenFileWriter::Finish() {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("token file ", path_, ": Finish called twice"));
  }
  if (num_docs() == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("token file ", path_, ": no documents to write"));
  }
  const uint64_t tokens_end =
      kTokenFileHeaderBytes + doc_offsets_.back() * bytes_per_token_;
  const uint64_t offsets_offset = RoundUp8(tokens_end);
  const char zeros[8] = {};
  RETURN_IF_ERROR(WriteBytes(zeros, offsets_offset - tokens_end));
  RETURN_IF_ERROR(
      WriteBytes(doc_offsets_.data(), doc_offsets_.size() * sizeof(uint64_t)));
  RETURN_IF_ERROR(FlushBuffer());

  FileHeader header = {};
  std::memcpy(header.magic, kTokenFileMagic, sizeof(header.magic));
  header.version = kTokenFileVersion;
  header.bytes_per_token = static_cast<uint32_t>(bytes_per_token_);
  header.vocab_size = static_cast<uint32_t>(vocab_size_);
  header.bos_id = static_cast<uint32_t>(bos_id_);
  header.eos_id = static_cast<uint32_t>(eos_id_);
  header.num_docs = static_cast<uint64_t>(num_docs());
  header.num_tokens = doc_offsets_.back();
  header.tokens_offset = kTokenFileHeaderBytes;
  header.offsets_offset = offsets_offset;
  RETURN_IF_ERROR(file_->WriteAt(0, &header, sizeof(header)));
  finished_ = true;
  return file_->Commit();
}

absl::StatusOr<TokenizeStats> TokenizeToFile(
    absl::Span<const DocumentSource> sources, const Tokenizer& tokenizer,
    const std::string& out_path) {
  ASSIGN_OR_RETURN(
      std::unique_ptr<TokenFileWriter> writer,
      TokenFileWriter::Create(out_path, tokenizer.vocab_size(),
                              tokenizer.bos_id(), tokenizer.eos_id()));
  for (const DocumentSource& source : sources) {
    RETURN_IF_ERROR(ForEachDocument(source, [&](Document doc) {
      return writer->AddDocument(tokenizer.Encode(doc.text));
    }));
  }
  RETURN_IF_ERROR(writer->Finish());
  TokenizeStats stats;
  stats.num_docs = writer->num_docs();
  stats.num_tokens = writer->num_tokens();
  struct stat st;
  if (stat(out_path.c_str(), &st) == 0) stats.file_bytes = st.st_size;
  return stats;
}

// --- TokenFile ---------------------------------------------------------------

absl::StatusOr<std::unique_ptr<TokenFile>> TokenFile::Open(
    const std::string& path) {
  // Beneath the process's roots (base/open_beneath.h), regular files only.
  ASSIGN_OR_RETURN(const int fd, OpenForReading(path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int saved = errno;
    close(fd);
    return ErrnoError(saved, "cannot stat token file", path);
  }
  const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);
  auto corrupt = [&path](auto&&... why) {
    return absl::DataLossError(absl::StrCat("token file ", path, ": ", why...));
  };
  if (file_bytes < static_cast<uint64_t>(kTokenFileHeaderBytes)) {
    close(fd);
    return corrupt("file has ", file_bytes, " bytes, less than the ",
                   kTokenFileHeaderBytes, "-byte header (truncated?)");
  }
  void* map = mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int saved = errno;
  close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED)
    return ErrnoError(saved, "cannot mmap token file", path);

  auto file = std::unique_ptr<TokenFile>(new TokenFile());
  file->path_ = path;
  file->map_ = map;
  file->map_bytes_ = file_bytes;
  const auto* base = static_cast<const unsigned char*>(map);

  FileHeader h;
  std::memcpy(&h, base, sizeof(h));
  if (std::memcmp(h.magic, kTokenFileMagic, sizeof(h.magic)) != 0) {
    return corrupt("bad magic, not a .tok file");
  }
  if (h.version != kTokenFileVersion) {
    return corrupt("version ", h.version, ", this build reads version ",
                   kTokenFileVersion);
  }
  if (h.vocab_size == 0 || h.vocab_size > uint32_t{INT32_MAX}) {
    return corrupt("vocab_size ", h.vocab_size, " out of range");
  }
  const int expected_width = BytesPerToken(static_cast<int32_t>(h.vocab_size));
  if (h.bytes_per_token != static_cast<uint32_t>(expected_width)) {
    return corrupt("bytes_per_token ", h.bytes_per_token, " but vocab_size ",
                   h.vocab_size, " needs ", expected_width);
  }
  if (h.bos_id >= h.vocab_size || h.eos_id >= h.vocab_size) {
    return corrupt("bos_id ", h.bos_id, " / eos_id ", h.eos_id,
                   " not below vocab_size ", h.vocab_size);
  }
  if (h.tokens_offset != static_cast<uint64_t>(kTokenFileHeaderBytes)) {
    return corrupt("tokens_offset ", h.tokens_offset, ", expected ",
                   kTokenFileHeaderBytes);
  }
  // Bound the counts by the file size before multiplying, so that a lying
  // header cannot overflow the arithmetic below.
  if (h.num_docs == 0) return corrupt("no documents");
  if (h.num_tokens > file_bytes || h.num_docs > file_bytes) {
    return corrupt("num_docs ", h.num_docs, " / num_tokens ", h.num_tokens,
                   " impossible for a file of ", file_bytes, " bytes");
  }
  const uint64_t offsets_offset =
      RoundUp8(h.tokens_offset + h.num_tokens * h.bytes_per_token);
  if (h.offsets_offset != offsets_offset) {
    return corrupt("offsets_offset ", h.offsets_offset, ", expected ",
                   offsets_offset);
  }
  const uint64_t expected_bytes = offsets_offset + (h.num_docs + 1) * 8;
  if (file_bytes != expected_bytes) {
    return corrupt("file has ", file_bytes, " bytes, header implies ",
                   expected_bytes,
                   file_bytes < expected_bytes ? " (truncated)" : "");
  }
  file->tokens_ = base + h.tokens_offset;
  file->offsets_ = reinterpret_cast<const uint64_t*>(base + offsets_offset);
  file->num_docs_ = static_cast<int64_t>(h.num_docs);
  file->num_tokens_ = static_cast<int64_t>(h.num_tokens);
  file->vocab_size_ = static_cast<int32_t>(h.vocab_size);
  file->bos_id_ = static_cast<int32_t>(h.bos_id);
  file->eos_id_ = static_cast<int32_t>(h.eos_id);
  file->bytes_per_token_ = static_cast<int>(h.bytes_per_token);

  if (file->offsets_[0] != 0 || file->offsets_[h.num_docs] != h.num_tokens) {
    return corrupt("doc offsets must run from 0 to num_tokens ", h.num_tokens);
  }
  for (uint64_t d = 0; d < h.num_docs; ++d) {
    if (file->offsets_[d + 1] <= file->offsets_[d]) {
      return corrupt("doc offsets not strictly increasing at document ", d);
    }
  }
  // One pass over the tokens (memory bandwidth, milliseconds for tens of
  // millions) buys the guarantee that no id can index past an embedding.
  uint32_t max_id = 0;
  if (file->bytes_per_token_ == 2) {
    const auto* t = reinterpret_cast<const uint16_t*>(file->tokens_);
    for (uint64_t i = 0; i < h.num_tokens; ++i)
      max_id = std::max<uint32_t>(max_id, t[i]);
  } else {
    const auto* t = reinterpret_cast<const uint32_t*>(file->tokens_);
    for (uint64_t i = 0; i < h.num_tokens; ++i) max_id = std::max(max_id, t[i]);
  }
  if (max_id >= h.vocab_size) {
    return corrupt("token id ", max_id, " not below vocab_size ", h.vocab_size);
  }
  return file;
}

TokenFile::~TokenFile() {
  if (map_ != nullptr) munmap(map_, map_bytes_);
}

void TokenFile::CopyTokens(int64_t doc, int64_t begin, int64_t count,
                           int32_t* out) const {
  const uint64_t first = offsets_[doc] + static_cast<uint64_t>(begin);
  if (bytes_per_token_ == 2) {
    const auto* t = reinterpret_cast<const uint16_t*>(tokens_) + first;
    for (int64_t i = 0; i < count; ++i) out[i] = t[i];
  } else {
    const auto* t = reinterpret_cast<const uint32_t*>(tokens_) + first;
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<int32_t>(t[i]);
  }
}

}  // namespace sheaf
