// Downloading a job's artifacts over FetchArtifacts (proto/coordinator.proto):
// every file, or one file or directory of them, into a local directory.
//
// A file is written to `DEST/PATH.part` and renamed to `DEST/PATH` (after
// fsync) once its last chunk arrived, so a complete name always holds a
// complete file. A `.part` file left by an interrupted download is resumed
// from its current size: the stream is asked again from (PATH, size). A
// stream that breaks (UNAVAILABLE) is resumed the same way, a few times.
// Complete files already in DEST are downloaded again (an artifact of a
// running job, such as a checkpoint, can change without changing size).
//
// Paths the coordinator sends are checked to stay inside DEST.
#ifndef SHEAF_CLI_FETCH_H_
#define SHEAF_CLI_FETCH_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "cli/connection.h"

namespace sheaf::cli {

inline constexpr char kPartSuffix[] = ".part";

struct FetchedFile {
  // Relative to the artifact directory, '/'-separated.
  std::string path;
  int64_t size = 0;
  // Bytes that were already in the .part file (0 for a fresh download).
  int64_t resumed_from = 0;
};

struct FetchOptions {
  std::string job_id;
  std::string dest_dir;
  // One artifact file ("adapter/adapter_config.json") or a directory of
  // them ("adapter"); empty: everything.
  std::string path;
  // Bytes per chunk asked of the coordinator (0: its default).
  int32_t chunk_bytes = 0;
  // Called as each file completes.
  std::function<void(const FetchedFile&)> on_file;
  // Reconnections after a broken stream, and the wait before the first
  // (doubling after each).
  int max_retries = 5;
  absl::Duration retry_delay = absl::Milliseconds(500);
};

struct FetchResult {
  std::vector<FetchedFile> files;
  // Bytes that crossed the wire (less than the files' sizes when resumed).
  int64_t bytes_received = 0;
};

// kNotFound for an unknown job, a job without artifacts yet, or a `path`
// that names no artifact; kInternal for an unsafe path from the server or a
// local write error; other RPC errors as the coordinator sent them.
absl::StatusOr<FetchResult> FetchArtifacts(const Connection& connection,
                                           const FetchOptions& options);

// Streams the artifact `path` from byte `*offset` to its current end into
// `sink`, advancing `*offset`. kNotFound when the job has no such artifact
// (yet); kOutOfRange when the file is now shorter than `*offset`.
absl::Status ReadArtifactFrom(const Connection& connection, absl::string_view job_id,
                              absl::string_view path, int64_t* offset,
                              const std::function<void(absl::string_view)>& sink);

}  // namespace sheaf::cli

#endif  // SHEAF_CLI_FETCH_H_
