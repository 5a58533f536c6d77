#include "worker/log_tee.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "base/file.h"

namespace sheaf::worker {
namespace {

std::atomic<bool> g_active{false};

absl::Status ErrnoStatus(int error, const std::string& what) {
  return absl::Status(absl::ErrnoToStatusCode(error),
                      absl::StrCat(what, ": ", std::strerror(error)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<StderrTee>> StderrTee::Start(const std::string& path) {
  bool expected = false;
  if (!g_active.compare_exchange_strong(expected, true)) {
    return absl::FailedPreconditionError("stderr is already copied to a file");
  }
  std::unique_ptr<StderrTee> tee(new StderrTee());
  tee->path_ = path;
  tee->stopped_ = true;  // until fully started: the destructor must not undo
  auto fail = [&](int error, const std::string& what) {
    if (tee->file_ >= 0) ::close(tee->file_);
    if (tee->saved_stderr_ >= 0) ::close(tee->saved_stderr_);
    g_active = false;
    return ErrnoStatus(error, what);
  };
  tee->file_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (tee->file_ < 0) return fail(errno, path);
  tee->saved_stderr_ = ::fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
  if (tee->saved_stderr_ < 0) return fail(errno, "dup(stderr)");
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return fail(errno, "pipe");
  std::fflush(stderr);
  std::cerr.flush();
  if (::dup2(fds[1], STDERR_FILENO) < 0) {
    const int error = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    return fail(error, "dup2");
  }
  ::close(fds[1]);  // fd 2 is now the only write end
  tee->pipe_read_ = fds[0];
  tee->stopped_ = false;
  tee->thread_ = std::thread([t = tee.get()] { t->Copy(); });
  return tee;
}

void StderrTee::Copy() {
  char buf[8192];
  while (true) {
    const ssize_t n = ::read(pipe_read_, buf, sizeof(buf));
    if (n == 0) return;  // every write end is closed: Stop()
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    WriteFully(saved_stderr_, buf, static_cast<size_t>(n));
    if (file_errno_ == 0) file_errno_ = WriteFully(file_, buf, static_cast<size_t>(n));
  }
}

absl::Status StderrTee::Stop() {
  if (stopped_) return absl::OkStatus();
  stopped_ = true;
  std::fflush(stderr);
  std::cerr.flush();
  // Closes the pipe's last write end (fd 2 was it): the copy thread reads
  // what is left, then end of file.
  ::dup2(saved_stderr_, STDERR_FILENO);
  thread_.join();
  ::close(pipe_read_);
  ::close(saved_stderr_);
  absl::Status status = absl::OkStatus();
  if (file_errno_ != 0) status = ErrnoStatus(file_errno_, path_);
  if (::fsync(file_) != 0 && status.ok()) status = ErrnoStatus(errno, path_);
  if (::close(file_) != 0 && status.ok()) status = ErrnoStatus(errno, path_);
  g_active = false;
  return status;
}

StderrTee::~StderrTee() { Stop().IgnoreError(); }

}  // namespace sheaf::worker
