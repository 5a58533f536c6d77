#include "base/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/open_beneath.h"
#include "base/status.h"

namespace sheaf {
namespace {

absl::Status ErrnoError(int error, std::string_view what, std::string_view path) {
  return absl::Status(absl::ErrnoToStatusCode(error),
                      absl::StrCat(absl::string_view(what.data(), what.size()), " ",
                                   absl::string_view(path.data(), path.size()), ": ",
                                   std::strerror(error)));
}

std::string ParentDirectory(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  return ReadFileToString(path, std::numeric_limits<size_t>::max());
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path, size_t max_bytes) {
  // Beneath the process's roots when the path lies in one (open_beneath.h);
  // regular files only, so a FIFO never blocks a reader.
  ASSIGN_OR_RETURN(const int fd, OpenForReading(path));
  struct stat st {};
  const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  auto too_large = [&] {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": larger than the limit of ", max_bytes, " bytes"));
  };
  if (regular && static_cast<uint64_t>(st.st_size) > max_bytes) return too_large();
  std::string data;
  if (regular) data.reserve(static_cast<size_t>(st.st_size));
  char buffer[1 << 16];
  while (true) {
    if (data.size() > max_bytes) return too_large();
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      ::close(fd);
      return ErrnoError(error, "cannot read", path);
    }
    data.append(buffer, static_cast<size_t>(n));
  }
  // Shrunk since it was opened: what was read mixes two versions of the
  // file. (Reading fewer bytes than st_size alone is no sign of that: sysfs
  // files report 4096 and hold less.)
  struct stat after {};
  const bool shrank = regular && ::fstat(fd, &after) == 0 && after.st_size < st.st_size;
  ::close(fd);
  if (shrank) {
    return absl::DataLossError(absl::StrCat("cannot read ", path, ": it shrank from ", st.st_size,
                                            " to ", after.st_size, " bytes while being read"));
  }
  return data;
}

int WriteFully(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // Linux writes at most ~2 GiB at once anyway; capping the chunk keeps the
    // short-write path the one that is always taken for huge buffers.
    const ssize_t n = ::write(fd, p, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return 0;
}

int PwriteFully(int fd, const void* data, size_t size, int64_t offset) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n =
        ::pwrite(fd, p, std::min<size_t>(size, size_t{1} << 30), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += n;
  }
  return 0;
}

absl::Status WriteAllToFd(int fd, const void* data, size_t size, const std::string& name) {
  const int error = WriteFully(fd, data, size);
  if (error != 0) return ErrnoError(error, "cannot write", name);
  return absl::OkStatus();
}

absl::Status SyncParentDirectory(const std::string& path) {
  const std::string dir = ParentDirectory(path);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open directory", dir);
  absl::Status status;
  if (::fsync(fd) != 0 && errno != EINVAL) status = ErrnoError(errno, "cannot fsync directory", dir);
  ::close(fd);
  return status;
}

std::string TemporaryPathFor(const std::string& path) {
  return absl::StrCat(path, ".tmp.", ::getpid());
}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(
    const std::string& path) {
  std::string tmp = TemporaryPathFor(path);
  int fd = -1;
  if (IsInsideOpenRoots(tmp)) {
    // Beneath the output root (open_beneath.h): no symlink leads it out.
    absl::StatusOr<int> opened = OpenInsideRoots(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (!opened.ok()) {
      return absl::Status(opened.status().code(),
                          absl::StrCat("cannot create ", opened.status().message()));
    }
    fd = *opened;
  } else {
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  }
  if (fd < 0) return ErrnoError(errno, "cannot create", tmp);
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, std::move(tmp), fd));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_path_.c_str());
}

absl::Status AtomicFileWriter::Append(const void* data, size_t size) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": write after Commit"));
  return WriteAllToFd(fd_, data, size, tmp_path_);
}

absl::Status AtomicFileWriter::WriteAt(int64_t offset, const void* data, size_t size) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": write after Commit"));
  const int error = PwriteFully(fd_, data, size, offset);
  if (error != 0) return ErrnoError(error, "cannot write", tmp_path_);
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": Commit called twice"));
  // The data must be on disk before the rename makes it visible under the
  // final name, or a crash could leave a complete-looking name with missing
  // contents.
  absl::Status status;
  if (::fsync(fd_) != 0) status = ErrnoError(errno, "cannot fsync", tmp_path_);
  // close() can report deferred write errors (NFS, quotas).
  if (::close(fd_) != 0 && status.ok()) status = ErrnoError(errno, "cannot close", tmp_path_);
  fd_ = -1;
  RETURN_IF_ERROR(status);  // the destructor removes the temporary file
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    return ErrnoError(errno, absl::StrCat("cannot rename ", tmp_path_, " to"), path_);
  }
  committed_ = true;
  return SyncParentDirectory(path_);
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> writer, AtomicFileWriter::Create(path));
  RETURN_IF_ERROR(writer->Append(contents));
  return writer->Commit();
}

}  // namespace sheaf
