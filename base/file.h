// Whole-file reads and atomic writes: the one copy every package uses.
//
// An atomic write goes to `PATH.tmp.<pid>` in the same directory, is
// fsynced, renamed over PATH, and the directory is fsynced, so that after a
// crash PATH holds either the old contents or the new ones, never a prefix.
// The temporary name is part of the contract: core/checkpoint recognises
// `.tmp.<pid>` files whose writer died and removes them. Two writers of one
// PATH in one process at the same time are not supported (they share the
// temporary name).
//
// Errors name the file and the system's reason ("cannot open PATH: No such
// file or directory"); the code follows errno (NotFound, PermissionDenied,
// ...), DataLoss for a file that shrank while it was read.
// Thread-safety: the functions are safe from any thread; an
// AtomicFileWriter is used from one thread at a time.
#ifndef SHEAF_BASE_FILE_H_
#define SHEAF_BASE_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sheaf {

// The whole contents of `path`, read to its end. A regular file that shrank
// between open and the end of the read is DataLoss (truncated while being
// read).
absl::StatusOr<std::string> ReadFileToString(const std::string& path);
// The same, refusing a file of more than `max_bytes` (kInvalidArgument
// "PATH: larger than the limit of N bytes") before reading it all. Only
// regular files (and directories, which fail to read) are opened: a FIFO or
// device is kInvalidArgument "not a regular file" (base/open_beneath.h).
absl::StatusOr<std::string> ReadFileToString(const std::string& path, size_t max_bytes);

// Replaces `path` with `contents` atomically (see above).
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

// write(2) / pwrite(2) until all `size` bytes are written, retrying
// interrupted and short writes. Return 0 or the errno of the failure (for
// callers such as log tees that must not allocate a Status per write).
int WriteFully(int fd, const void* data, size_t size);
int PwriteFully(int fd, const void* data, size_t size, int64_t offset);

// The same as a Status: "cannot write NAME: <reason>".
absl::Status WriteAllToFd(int fd, const void* data, size_t size, const std::string& name);

// fsync of the directory holding `path`, which makes a rename into it
// durable. Filesystems that cannot sync directories (EINVAL) are accepted.
absl::Status SyncParentDirectory(const std::string& path);

// `path` + ".tmp." + this process's id.
std::string TemporaryPathFor(const std::string& path);

// A file written in pieces and published atomically: Create opens the
// temporary file, Append/WriteAt fill it, Commit makes it `path`. Destroying
// a writer that was not committed removes the temporary file, so a failed
// write leaves nothing behind.
class AtomicFileWriter {
 public:
  // Creates (truncates) TemporaryPathFor(path), mode 0644.
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> Create(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  // Appends at the end of what was written so far.
  absl::Status Append(const void* data, size_t size);
  absl::Status Append(std::string_view data) { return Append(data.data(), data.size()); }
  // Overwrites bytes already written (a header known only at the end).
  absl::Status WriteAt(int64_t offset, const void* data, size_t size);
  // fsync, close, rename onto path(), fsync of the directory. FailedPrecondition
  // when called twice; after a failure the temporary file is removed.
  absl::Status Commit();

  const std::string& path() const { return path_; }
  const std::string& temporary_path() const { return tmp_path_; }

 private:
  AtomicFileWriter(std::string path, std::string tmp_path, int fd)
      : path_(std::move(path)), tmp_path_(std::move(tmp_path)), fd_(fd) {}

  const std::string path_;
  const std::string tmp_path_;
  int fd_;  // -1 once closed
  bool committed_ = false;
};

}  // namespace sheaf

#endif  // SHEAF_BASE_FILE_H_
