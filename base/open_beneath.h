// Opening a file beneath a root directory, so that no symlink (or a
// directory swapped for one after a check) leads a job's reads or writes
// out of the roots it was given (issue 9, item 2).
//
// PathPolicy (path_policy.h) checks a spec's paths when a job is submitted
// and leased, but a check is not an open: a file symlink inside a data
// folder, or a directory exchanged for a symlink between the check and the
// open, used to be followed. Here the open itself resolves beneath the
// root's directory descriptor:
//
//   * openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) where the kernel has
//     it (Linux >= 5.6);
//   * else, and for absolute symlinks (which RESOLVE_BENEATH refuses
//     outright), a walk of one component at a time with openat(O_NOFOLLOW)
//     from the root's descriptor: a symlink is read with readlinkat and its
//     target spliced into the rest of the path, `..` pops back to the
//     directory the walk came from and never above the root, and an
//     absolute target must lie (lexically) inside the root's path.
//
// Symlinks that stay inside the root are followed; one that leads out is
// kPermissionDenied "ROOT_NAME: REL: a symlink leads outside the root".
// Errors name the path relative to the root and never a resolved outside
// path (a link's target is not printed).
//
// Only regular files and directories are opened: a FIFO, device or socket
// is kInvalidArgument "not a regular file" (opened with O_NONBLOCK first,
// so a FIFO never blocks the caller).
//
// Process-wide roots: the worker (and the coordinator) register their roots
// once with SetOpenRoots; OpenInsideRoots then opens every path that lies
// lexically inside a registered root beneath that root, and any other path
// as open(2) does. base/file's ReadFileToString and the data, model and
// checkpoint readers open through it, so registering the roots is all a
// process needs to do.
//
// Thread-safety: SetOpenRoots before other threads open files (it may be
// called again; opens racing with it see the old or the new roots); the
// rest is reentrant.
#ifndef SHEAF_BASE_OPEN_BENEATH_H_
#define SHEAF_BASE_OPEN_BENEATH_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sheaf {

// Opens `relative` (a relative path; "" or "." is the root itself) beneath
// the directory `root_fd`, whose absolute path is `root_path` (for absolute
// symlinks) and which errors call `root_name`. `flags` as for open(2)
// (O_CREAT allowed for the last component; O_NOFOLLOW and O_CLOEXEC are
// added). Returns the new descriptor, owned by the caller.
absl::StatusOr<int> OpenBeneath(int root_fd, const std::string& root_path,
                                absl::string_view root_name,
                                absl::string_view relative, int flags,
                                int mode = 0644);

struct OpenRoot {
  std::string name;  // "data root"
  std::string path;  // an existing directory; canonicalised when set
};

// Replaces the process's roots. kInvalidArgument naming a root that is not
// an existing directory (the roots before the call stay in force).
absl::Status SetOpenRoots(const std::vector<OpenRoot>& roots);
// Clears them (tests).
void ClearOpenRoots();

// open(2) of `path`, beneath the innermost registered root that holds it
// lexically (after making it absolute against the working directory and
// folding `.`/`..`); other paths are opened as they are, but still only
// regular files and directories.
absl::StatusOr<int> OpenInsideRoots(const std::string& path, int flags,
                                    int mode = 0644);

// Whether `path` lies lexically inside a registered root.
bool IsInsideOpenRoots(const std::string& path);

// Tests: make OpenBeneath use the component walk only (as on a kernel
// without openat2), or openat2 again.
void SetUseOpenat2ForTesting(bool use);

// OpenInsideRoots(path, O_RDONLY).
absl::StatusOr<int> OpenForReading(const std::string& path);

// The regular files below the directory `dir` (recursively; names that
// start with "." are skipped, files and folders alike), as `dir` + "/" +
// relative path, sorted. Each directory is opened with OpenInsideRoots and
// listed through its descriptor, so a folder exchanged for a symlink out of
// the root (renameat2) is refused instead of listed: no name from outside
// the roots is ever returned. Symlinks to directories are not followed (a
// cycle would never end); symlinks to files are returned like files (their
// open, through OpenInsideRoots, judges where they lead). Errors name the
// directory (relative to its root inside one); more than 64 levels of
// folders is kInvalidArgument.
absl::StatusOr<std::vector<std::string>> ListFilesInsideRoots(const std::string& dir);

}  // namespace sheaf

#endif  // SHEAF_BASE_OPEN_BENEATH_H_
