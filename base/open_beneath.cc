#include "base/open_beneath.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <algorithm>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;

constexpr int kMaxSymlinks = 40;

absl::Status Errno(int error, absl::string_view root_name,
                   absl::string_view relative, absl::string_view what) {
  return absl::Status(absl::ErrnoToStatusCode(error),
                      absl::StrCat(root_name, ": ", relative.empty() ? "." : relative,
                                   ": ", what, std::strerror(error)));
}

absl::Status Outside(absl::string_view root_name, absl::string_view relative) {
  return absl::PermissionDeniedError(
      absl::StrCat(root_name, ": ", relative.empty() ? "." : relative,
                   ": a symlink leads outside the root"));
}

// Closes the descriptors of the walk's directory stack.
struct FdStack {
  std::vector<int> fds;
  ~FdStack() {
    for (int fd : fds) ::close(fd);
  }
};

void PushComponents(absl::string_view path, std::deque<std::string>* todo) {
  std::vector<std::string> parts = absl::StrSplit(path, '/', absl::SkipEmpty());
  todo->insert(todo->begin(), parts.begin(), parts.end());
}

// The component walk (see the header).
absl::StatusOr<int> Walk(int root_fd, const std::string& root_path,
                         absl::string_view root_name, absl::string_view relative,
                         int flags, int mode) {
  FdStack stack;
  const int root = ::fcntl(root_fd, F_DUPFD_CLOEXEC, 0);
  if (root < 0) return Errno(errno, root_name, "", "cannot open: ");
  stack.fds.push_back(root);
  std::deque<std::string> todo;
  PushComponents(relative, &todo);
  int links = 0, retries = 0;
  if (todo.empty()) {
    const int fd = ::openat(root, ".", (flags & ~O_CREAT) | O_CLOEXEC);
    if (fd < 0) return Errno(errno, root_name, relative, "cannot open: ");
    return fd;
  }
  while (!todo.empty()) {
    const std::string part = std::move(todo.front());
    todo.pop_front();
    if (part == ".") continue;
    if (part == "..") {
      if (stack.fds.size() == 1) return Outside(root_name, relative);
      ::close(stack.fds.back());
      stack.fds.pop_back();
      continue;
    }
    const int dir = stack.fds.back();
    const bool last = todo.empty();
    char target[PATH_MAX];
    const ssize_t n = ::readlinkat(dir, part.c_str(), target, sizeof(target));
    if (n >= 0) {
      if (++links > kMaxSymlinks) {
        return Errno(ELOOP, root_name, relative, "cannot open: ");
      }
      const std::string link(target, static_cast<size_t>(n));
      if (!link.empty() && link[0] == '/') {
        // Absolute: only a target inside the root's own path.
        const fs::path rel = fs::path(link).lexically_normal().lexically_relative(root_path);
        if (rel.empty() || *rel.begin() == "..") return Outside(root_name, relative);
        while (stack.fds.size() > 1) {
          ::close(stack.fds.back());
          stack.fds.pop_back();
        }
        if (rel != ".") PushComponents(rel.string(), &todo);
      } else {
        PushComponents(link, &todo);
      }
      continue;
    }
    if (errno != EINVAL && errno != ENOENT) {
      return Errno(errno, root_name, relative, "cannot open: ");
    }
    if (errno == ENOENT && !(last && (flags & O_CREAT))) {
      return Errno(ENOENT, root_name, relative, "cannot open: ");
    }
    if (!last) {
      const int fd = ::openat(dir, part.c_str(),
                              O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) {
        // Swapped for a symlink since readlinkat: look at it again.
        if ((errno == ENOTDIR || errno == ELOOP) && ++retries < 8) {
          todo.push_front(part);
          continue;
        }
        return Errno(errno, root_name, relative, "cannot open: ");
      }
      stack.fds.push_back(fd);
      continue;
    }
    const int fd = ::openat(dir, part.c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
      if (errno == ELOOP && ++retries < 8) {
        todo.push_front(part);
        continue;
      }
      return Errno(errno, root_name, relative, "cannot open: ");
    }
    return fd;
  }
  // The path ended in `..` or a symlink to a directory above: open it.
  const int fd = ::openat(stack.fds.back(), ".", (flags & ~O_CREAT) | O_CLOEXEC);
  if (fd < 0) return Errno(errno, root_name, relative, "cannot open: ");
  return fd;
}

// openat2 with RESOLVE_BENEATH; ENOSYS when the kernel lacks it.
int OpenAt2(int root_fd, const std::string& relative, int flags, int mode) {
  struct open_how how;
  std::memset(&how, 0, sizeof(how));
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.mode = (flags & O_CREAT) ? static_cast<uint64_t>(mode) : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  const std::string path = relative.empty() ? "." : relative;
  return static_cast<int>(::syscall(SYS_openat2, root_fd, path.c_str(), &how, sizeof(how)));
}

// Refuses what is neither a regular file nor a directory, and clears the
// O_NONBLOCK that the open added.
absl::StatusOr<int> CheckKind(int fd, absl::string_view name, int flags) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::Status(absl::ErrnoToStatusCode(error),
                        absl::StrCat(name, ": cannot stat: ", std::strerror(error)));
  }
  if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": not a regular file (a FIFO, device or socket)"));
  }
  if (!(flags & O_NONBLOCK)) {
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl >= 0) ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  }
  return fd;
}

struct RootEntry {
  std::string name;
  std::string path;  // canonical, no trailing slash
  int fd = -1;
};

std::atomic<bool> have_openat2{true};

std::shared_mutex roots_mu;
std::vector<std::shared_ptr<const RootEntry>>* roots = nullptr;  // never freed

}  // namespace

absl::StatusOr<int> OpenBeneath(int root_fd, const std::string& root_path,
                                absl::string_view root_name,
                                absl::string_view relative, int flags, int mode) {
  if (relative.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(root_name, ": the path holds a NUL byte"));
  }
  if (!relative.empty() && relative[0] == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(root_name, ": ", relative, ": not relative to the root"));
  }
  const int open_flags = flags | O_NONBLOCK;
  if (have_openat2.load(std::memory_order_relaxed)) {
    const int fd = OpenAt2(root_fd, std::string(relative), open_flags, mode);
    if (fd >= 0) return CheckKind(fd, absl::StrCat(root_name, ": ", relative), flags);
    const int error = errno;
    if (error == ENOSYS || error == EPERM /* seccomp */) {
      have_openat2.store(false, std::memory_order_relaxed);
    } else if (error != EXDEV && error != ELOOP) {
      // EXDEV: an escape, or an absolute symlink: the walk tells which.
      return Errno(error, root_name, relative, "cannot open: ");
    }
  }
  absl::StatusOr<int> fd = Walk(root_fd, root_path, root_name, relative, open_flags, mode);
  if (!fd.ok()) return fd.status();
  return CheckKind(*fd, absl::StrCat(root_name, ": ", relative), flags);
}

absl::Status SetOpenRoots(const std::vector<OpenRoot>& wanted) {
  auto fresh = std::make_unique<std::vector<std::shared_ptr<const RootEntry>>>();
  for (const OpenRoot& r : wanted) {
    std::error_code error;
    const fs::path canonical = fs::canonical(r.path, error);
    if (error || !fs::is_directory(canonical, error)) {
      return absl::InvalidArgumentError(
          absl::StrCat(r.name, " ", r.path, ": not an existing directory"));
    }
    const int fd = ::open(canonical.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(r.name, " ", r.path, ": cannot open: ", std::strerror(errno)));
    }
    auto entry = std::make_shared<RootEntry>();
    entry->name = r.name;
    entry->path = canonical.string();
    entry->fd = fd;
    fresh->push_back(std::move(entry));
  }
  std::unique_lock lock(roots_mu);
  // Old entries' descriptors stay open: an open racing with this call may
  // still use them (a handful of fds per process lifetime).
  delete roots;
  roots = fresh.release();
  return absl::OkStatus();
}

void ClearOpenRoots() {
  std::unique_lock lock(roots_mu);
  delete roots;
  roots = nullptr;
}

namespace {

// The innermost root holding `path` lexically, and the rest of the path.
std::shared_ptr<const RootEntry> FindRoot(const std::string& path, fs::path* relative_out) {
  std::error_code error;
  const fs::path absolute = fs::absolute(path, error).lexically_normal();
  std::shared_ptr<const RootEntry> best;
  fs::path relative;
  {
    std::shared_lock lock(roots_mu);
    if (roots != nullptr && !error) {
      for (const auto& root : *roots) {
        const fs::path rel = absolute.lexically_relative(root->path);
        if (rel.empty() || *rel.begin() == "..") continue;
        if (!best || root->path.size() > best->path.size()) {
          best = root;
          relative = rel;
        }
      }
    }
  }
  if (relative_out != nullptr) *relative_out = relative;
  return best;
}

}  // namespace

void SetUseOpenat2ForTesting(bool use) { have_openat2.store(use); }

bool IsInsideOpenRoots(const std::string& path) { return FindRoot(path, nullptr) != nullptr; }

absl::StatusOr<int> OpenInsideRoots(const std::string& path, int flags, int mode) {
  fs::path relative;
  const std::shared_ptr<const RootEntry> best = FindRoot(path, &relative);
  if (best) {
    const std::string rel = relative == "." ? std::string() : relative.string();
    return OpenBeneath(best->fd, best->path, best->name, rel, flags, mode);
  }
  const int fd = ::open(path.c_str(), flags | O_NONBLOCK | O_CLOEXEC, mode);
  if (fd < 0) {
    return absl::Status(absl::ErrnoToStatusCode(errno),
                        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  return CheckKind(fd, path, flags);
}

absl::StatusOr<int> OpenForReading(const std::string& path) {
  return OpenInsideRoots(path, O_RDONLY);
}

namespace {

absl::Status ListInto(const std::string& dir, int depth, std::vector<std::string>* files) {
  constexpr int kMaxDepth = 64;
  if (depth > kMaxDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": more than ", kMaxDepth, " levels of folders"));
  }
  absl::StatusOr<int> fd = OpenInsideRoots(dir, O_RDONLY | O_DIRECTORY);
  if (!fd.ok()) return fd.status();
  DIR* d = ::fdopendir(*fd);
  if (d == nullptr) {
    const int error = errno;
    ::close(*fd);
    return absl::Status(absl::ErrnoToStatusCode(error),
                        absl::StrCat("cannot list folder ", dir, ": ", std::strerror(error)));
  }
  std::vector<std::string> subdirs;
  absl::Status status;
  for (;;) {
    errno = 0;
    const dirent* e = ::readdir(d);
    if (e == nullptr) {
      if (errno != 0) {
        status = absl::Status(absl::ErrnoToStatusCode(errno),
                              absl::StrCat("cannot list folder ", dir, ": ", std::strerror(errno)));
      }
      break;
    }
    const std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;  // also "." and ".."
    unsigned char type = e->d_type;
    if (type == DT_UNKNOWN) {
      struct stat st;
      if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
      type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : S_ISLNK(st.st_mode) ? DT_LNK : DT_UNKNOWN;
    }
    if (type == DT_DIR) {
      subdirs.push_back(name);
    } else if (type == DT_REG) {
      files->push_back(absl::StrCat(dir, "/", name));
    } else if (type == DT_LNK) {
      // Where it leads is only looked at to skip directory links; the open
      // of a file link decides whether it stays inside.
      struct stat st;
      if (::fstatat(::dirfd(d), e->d_name, &st, 0) == 0 && S_ISREG(st.st_mode)) {
        files->push_back(absl::StrCat(dir, "/", name));
      }
    }
  }
  ::closedir(d);  // closes *fd
  if (!status.ok()) return status;
  for (const std::string& sub : subdirs) {
    absl::Status s = ListInto(absl::StrCat(dir, "/", sub), depth + 1, files);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ListFilesInsideRoots(const std::string& dir) {
  std::string root = dir;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  std::vector<std::string> files;
  absl::Status s = ListInto(root, 0, &files);
  if (!s.ok()) return s;
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace sheaf
