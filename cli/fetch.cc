#include "cli/fetch.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/file.h"
#include "base/sha256.h"

namespace sheaf::cli {
namespace {

namespace fs = std::filesystem;

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Relative, '/'-separated, no empty, "." or ".." parts: stays inside DEST.
bool IsSafeRelativePath(absl::string_view path) {
  if (path.empty() || path.front() == '/' || path.find('\0') != absl::string_view::npos) {
    return false;
  }
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == "." || part == "..") return false;
  }
  return true;
}

// Size of a regular file, or -1 when there is none.
int64_t FileSize(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return -1;
  return st.st_size;
}

absl::Status WriteAll(int fd, absl::string_view data, int64_t offset, const std::string& path) {
  errno = PwriteFully(fd, data.data(), data.size(), offset);
  if (errno != 0) return Errno("writing", path);
  return absl::OkStatus();
}

// Which artifacts are wanted: all, one file, or the files under a directory.
// The server sends files in sorted order, so the files under a directory
// come together and PastEnd() can end the stream after them.
struct Selection {
  std::string exact;
  std::string prefix;  // "dir/"

  bool Wants(const std::string& path) const {
    if (!exact.empty()) return path == exact;
    return prefix.empty() || absl::StartsWith(path, prefix);
  }
  bool PastEnd(const std::string& path) const {
    if (!exact.empty()) return path > exact;
    return !prefix.empty() && path > prefix && !absl::StartsWith(path, prefix);
  }
};

class Fetcher {
 public:
  Fetcher(const Connection& connection, const FetchOptions& options)
      : connection_(connection), options_(options), dest_(options.dest_dir) {}

  absl::StatusOr<FetchResult> Run();

 private:
  // How one stream ended.
  struct Outcome {
    enum Kind { kDone, kRestart, kError } kind = kDone;
    absl::Status status;
    // Where to ask again (kRestart).
    std::string path;
    int64_t offset = 0;

    static Outcome Done() { return Outcome(); }
    static Outcome Error(absl::Status status) {
      Outcome outcome;
      outcome.kind = kError;
      outcome.status = std::move(status);
      return outcome;
    }
    static Outcome Restart(std::string path, int64_t offset) {
      Outcome outcome;
      outcome.kind = kRestart;
      outcome.path = std::move(path);
      outcome.offset = offset;
      return outcome;
    }
  };
  struct OpenFile {
    std::string path;
    int fd = -1;
    int64_t next = 0;
    int64_t resumed_from = 0;
    std::string sha256;  // the artifact's, from the stream; empty: unknown
  };

  Outcome Stream(const std::string& path, int64_t offset);
  // Takes one chunk; sets `*outcome` (and returns true) when the stream
  // should end here.
  bool Take(const proto::ArtifactChunk& chunk, Outcome* outcome);
  absl::Status Open(const proto::ArtifactChunk& chunk);
  absl::Status CompleteFile();
  void CloseOpen();
  std::string Local(const std::string& path) const { return (dest_ / path).string(); }

  const Connection& connection_;
  const FetchOptions& options_;
  const fs::path dest_;
  Selection selection_;
  FetchResult result_;
  std::optional<OpenFile> open_;
  // Files completed in this run (a resumed stream may start with one).
  std::set<std::string> done_;
  std::optional<std::pair<std::string, int64_t>> last_done_;
  // Files whose .part was tried once: no second resume (and no loop) after
  // the coordinator disagreed with it.
  std::set<std::string> resume_tried_;
  std::map<std::string, int64_t> first_offset_;
};

Fetcher::Outcome Fetcher::Stream(const std::string& path, int64_t offset) {
  std::unique_ptr<grpc::ClientContext> context = connection_.NewContext(/*unary=*/false);
  proto::FetchArtifactsRequest request;
  request.set_job_id(options_.job_id);
  request.set_path(path);
  request.set_offset(offset);
  request.set_chunk_bytes(options_.chunk_bytes);
  // Resuming our own .part: say what its first bytes are, so that the
  // coordinator refuses a stale one instead of letting us splice.
  if (offset > 0 && selection_.Wants(path) && done_.count(path) == 0) {
    const int part = open((Local(path) + kPartSuffix).c_str(), O_RDONLY | O_CLOEXEC);
    if (part >= 0) {
      absl::StatusOr<std::string> prefix = Sha256OfFd(part, offset);
      close(part);
      if (prefix.ok()) request.set_prefix_sha256(*prefix);
    }
  }
  std::unique_ptr<grpc::ClientReader<proto::ArtifactChunk>> reader =
      connection_.stub().FetchArtifacts(context.get(), request);
  proto::ArtifactChunk chunk;
  Outcome outcome;
  bool ended_early = false;
  while (reader->Read(&chunk)) {
    if (Take(chunk, &outcome)) {
      ended_early = true;
      break;
    }
  }
  if (ended_early) {
    context->TryCancel();
    (void)reader->Finish();  // CANCELLED, or OK when the stream was over.
    return outcome;
  }
  absl::Status status = FromGrpc(reader->Finish());
  if (!status.ok()) return Outcome::Error(status);
  if (open_.has_value()) {
    return Outcome::Error(
        absl::DataLossError(absl::StrCat("the stream ended inside ", open_->path)));
  }
  return Outcome::Done();
}

bool Fetcher::Take(const proto::ArtifactChunk& chunk, Outcome* outcome) {
  const std::string& path = chunk.path();
  if (!IsSafeRelativePath(path)) {
    *outcome = Outcome::Error(absl::InternalError(
        absl::StrCat("the coordinator sent an unsafe artifact path '", path, "'")));
    return true;
  }
  if (!chunk.job_id().empty() && chunk.job_id() != options_.job_id) {
    *outcome = Outcome::Error(absl::InternalError(absl::StrCat(
        "the coordinator sent artifacts of job ", chunk.job_id(), ", not ", options_.job_id)));
    return true;
  }
  if (!open_.has_value() || open_->path != path) {
    if (open_.has_value()) {
      *outcome = Outcome::Error(absl::DataLossError(
          absl::StrCat("the stream moved on from ", open_->path, " before its end")));
      return true;
    }
    // Not wanted (or already here): skip it, asking for its end rather than
    // receiving the whole file.
    if (done_.count(path) > 0 || !selection_.Wants(path)) {
      if (selection_.PastEnd(path)) {
        *outcome = Outcome::Done();
        return true;
      }
      if (chunk.eof()) return false;
      *outcome = Outcome::Restart(path, chunk.file_size());
      return true;
    }
    // A partial download from before: go on from its size.
    if (chunk.offset() == 0 && resume_tried_.insert(path).second) {
      const int64_t have = FileSize(Local(path) + kPartSuffix);
      if (have > 0 && have <= chunk.file_size()) {
        *outcome = Outcome::Restart(path, have);
        return true;
      }
    }
    if (absl::Status s = Open(chunk); !s.ok()) {
      if (absl::IsFailedPrecondition(s)) {
        // The .part is not what the resume point assumed: start over.
        *outcome = Outcome::Restart(path, 0);
      } else {
        *outcome = Outcome::Error(s);
      }
      return true;
    }
  }
  if (!chunk.sha256().empty()) open_->sha256 = chunk.sha256();
  if (chunk.offset() != open_->next) {
    *outcome = Outcome::Error(absl::DataLossError(absl::StrCat(
        "chunk of ", path, " at offset ", chunk.offset(), ", expected ", open_->next)));
    return true;
  }
  const std::string part = Local(path) + kPartSuffix;
  if (absl::Status s = WriteAll(open_->fd, chunk.data(), chunk.offset(), part); !s.ok()) {
    *outcome = Outcome::Error(s);
    return true;
  }
  open_->next += static_cast<int64_t>(chunk.data().size());
  result_.bytes_received += static_cast<int64_t>(chunk.data().size());
  if (!chunk.eof()) return false;
  if (absl::Status s = CompleteFile(); !s.ok()) {
    *outcome = Outcome::Error(s);
    return true;
  }
  if (!selection_.exact.empty()) {
    *outcome = Outcome::Done();
    return true;
  }
  return false;
}

absl::Status Fetcher::Open(const proto::ArtifactChunk& chunk) {
  const std::string final_path = Local(chunk.path());
  const std::string part = final_path + kPartSuffix;
  std::error_code error;
  fs::create_directories(fs::path(final_path).parent_path(), error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("creating the directory of ", final_path, ": ", error.message()));
  }
  OpenFile file;
  file.path = chunk.path();
  file.next = chunk.offset();
  // A stream resumed after a break reopens the file at a later offset; the
  // resume point worth reporting is the first one.
  file.resumed_from = first_offset_.emplace(file.path, chunk.offset()).first->second;
  if (chunk.offset() == 0) {
    file.fd = open(part.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (file.fd < 0) return Errno("creating", part);
  } else {
    // Resuming: the .part must still hold at least `offset` bytes; any more
    // are dropped (they are sent again).
    file.fd = open(part.c_str(), O_RDWR | O_CLOEXEC);
    struct stat st {};
    if (file.fd < 0 || fstat(file.fd, &st) != 0 || st.st_size < chunk.offset() ||
        ftruncate(file.fd, chunk.offset()) != 0) {
      if (file.fd >= 0) close(file.fd);
      return absl::FailedPreconditionError(absl::StrCat(part, " is not the partial file it was"));
    }
  }
  open_ = file;
  return absl::OkStatus();
}

absl::Status Fetcher::CompleteFile() {
  const std::string final_path = Local(open_->path);
  const std::string part = final_path + kPartSuffix;
  if (fsync(open_->fd) != 0) {
    absl::Status s = Errno("syncing", part);
    CloseOpen();
    return s;
  }
  // The whole file must be the artifact's before it takes the final name.
  if (!open_->sha256.empty()) {
    absl::StatusOr<std::string> got = Sha256OfFd(open_->fd);
    if (!got.ok() || *got != open_->sha256) {
      const std::string want = HexDigest(open_->sha256).substr(0, 16);
      CloseOpen();
      unlink(part.c_str());
      return absl::DataLossError(absl::StrCat(
          final_path, ": the downloaded bytes do not match the artifact's SHA-256 ", want,
          "...; removed the .part: fetch again"));
    }
  }
  if (close(open_->fd) != 0) {
    open_->fd = -1;
    return Errno("closing", part);
  }
  open_->fd = -1;
  if (rename(part.c_str(), final_path.c_str()) != 0) return Errno("renaming", part);
  // The rename itself survives a crash once the directory is synced.
  const int dir =
      open(fs::path(final_path).parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    fsync(dir);
    close(dir);
  }
  FetchedFile file{open_->path, open_->next, open_->resumed_from};
  done_.insert(file.path);
  last_done_ = std::make_pair(file.path, file.size);
  result_.files.push_back(file);
  open_.reset();
  if (options_.on_file) options_.on_file(file);
  return absl::OkStatus();
}

void Fetcher::CloseOpen() {
  if (open_.has_value() && open_->fd >= 0) close(open_->fd);
  open_.reset();
}

absl::StatusOr<FetchResult> Fetcher::Run() {
  std::error_code error;
  fs::create_directories(dest_, error);
  if (error) {
    return absl::InternalError(absl::StrCat("creating ", dest_.string(), ": ", error.message()));
  }
  std::string path(absl::StripSuffix(options_.path, "/"));
  if (!path.empty() && !IsSafeRelativePath(path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--path: must be relative to the job's artifacts, without '..': ", options_.path));
  }
  // A file name first; a directory when the coordinator knows no such file.
  selection_.exact = path;
  std::string from_path = path;
  int64_t from_offset = 0;
  if (!path.empty()) {
    resume_tried_.insert(path);
    from_offset = std::max<int64_t>(0, FileSize(Local(path) + kPartSuffix));
  }
  int retries = 0;
  absl::Duration delay = options_.retry_delay;
  while (true) {
    Outcome outcome = Stream(from_path, from_offset);
    if (outcome.kind == Outcome::kRestart) {
      CloseOpen();
      from_path = outcome.path;
      from_offset = outcome.offset;
      continue;
    }
    if (outcome.kind == Outcome::kDone) {
      if (!path.empty() && result_.files.empty()) {
        return absl::NotFoundError(
            absl::StrCat("job ", options_.job_id, " has no artifact '", path, "'"));
      }
      return result_;
    }
    const absl::Status& status = outcome.status;
    if (!selection_.exact.empty() && absl::IsNotFound(status) &&
        absl::StartsWith(status.message(), "path:")) {
      selection_.exact.clear();
      selection_.prefix = path + "/";
      from_path.clear();
      from_offset = 0;
      continue;
    }
    if ((absl::IsOutOfRange(status) ||
         (absl::IsFailedPrecondition(status) &&
          absl::StartsWith(status.message(), "prefix_sha256:"))) &&
        from_offset > 0) {
      // The .part is longer than the file is now, or not its prefix (a
      // stale one, of another job or version): download it afresh.
      CloseOpen();
      unlink((Local(from_path) + kPartSuffix).c_str());
      from_offset = 0;
      continue;
    }
    if (absl::IsUnavailable(status) && retries < options_.max_retries) {
      ++retries;
      std::this_thread::sleep_for(absl::ToChronoMilliseconds(delay));
      delay *= 2;
      if (open_.has_value()) {
        from_path = open_->path;
        from_offset = open_->next;
      } else if (last_done_.has_value()) {
        from_path = last_done_->first;
        from_offset = last_done_->second;
      }
      CloseOpen();
      continue;
    }
    CloseOpen();
    return status;
  }
}

}  // namespace

absl::StatusOr<FetchResult> FetchArtifacts(const Connection& connection,
                                           const FetchOptions& options) {
  Fetcher fetcher(connection, options);
  return fetcher.Run();
}

absl::Status ReadArtifactFrom(const Connection& connection, absl::string_view job_id,
                              absl::string_view path, int64_t* offset,
                              const std::function<void(absl::string_view)>& sink) {
  std::unique_ptr<grpc::ClientContext> context = connection.NewContext(/*unary=*/false);
  proto::FetchArtifactsRequest request;
  request.set_job_id(std::string(job_id));
  request.set_path(std::string(path));
  request.set_offset(*offset);
  std::unique_ptr<grpc::ClientReader<proto::ArtifactChunk>> reader =
      connection.stub().FetchArtifacts(context.get(), request);
  proto::ArtifactChunk chunk;
  while (reader->Read(&chunk)) {
    // The stream goes on with the next artifacts after this one's end.
    const bool ours = chunk.path() == path;
    if (ours && chunk.offset() != *offset) {
      context->TryCancel();
      (void)reader->Finish();
      return absl::DataLossError(
          absl::StrCat("chunk of ", path, " at offset ", chunk.offset(), ", expected ", *offset));
    }
    if (ours) {
      sink(chunk.data());
      *offset += static_cast<int64_t>(chunk.data().size());
    }
    if (!ours || chunk.eof()) {
      context->TryCancel();
      (void)reader->Finish();  // CANCELLED, or OK when the stream was over.
      return absl::OkStatus();
    }
  }
  return FromGrpc(reader->Finish());
}

}  // namespace sheaf::cli
