// Helpers shared by the libFuzzer targets in fuzz/ (built by tools/fuzz.sh,
// not by Bazel: they need clang's -fsanitize=fuzzer).
//
// The readers under test take paths, so each input is written to files in a
// per-process scratch directory and the reader opens them as it would in a
// job: the open and size checks are fuzzed along with the parsing.
//
// Several readers read more than one file (a PEFT adapter directory, a
// tokenizer.json with its tokenizer_config.json, a RecBole .inter with its
// .user/.item). Their inputs are split on the line "@@@@": part i goes to
// file i; a missing part means a missing file.
#ifndef SHEAF_FUZZ_FUZZ_UTIL_H_
#define SHEAF_FUZZ_FUZZ_UTIL_H_

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace sheaf::fuzz {

// The scratch directory, created once per process (removed by nobody: it
// lives under $TMPDIR, which tools/fuzz.sh points at its own work folder).
inline const std::string& ScratchDir() {
  static const std::string dir = [] {
    const char* tmp = getenv("TMPDIR");
    std::string templ = std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/sheaf-fuzz-XXXXXX";
    if (mkdtemp(templ.data()) == nullptr) abort();
    return templ;
  }();
  return dir;
}

// Writes `bytes` to ScratchDir()/name and returns the path.
inline std::string WriteScratch(const std::string& name, std::string_view bytes) {
  const std::string path = ScratchDir() + "/" + name;
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) abort();
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) abort();
    done += static_cast<size_t>(n);
  }
  close(fd);
  return path;
}

inline void RemoveScratch(const std::string& name) {
  unlink((ScratchDir() + "/" + name).c_str());
}

// Splits on lines that are exactly "@@@@" (the separator line and its
// newline are dropped). At most `max_parts` parts; the last keeps the rest.
inline std::vector<std::string_view> SplitParts(std::string_view data, size_t max_parts) {
  constexpr std::string_view kSep = "\n@@@@\n";
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const size_t at = data.find(kSep);
    if (at == std::string_view::npos) break;
    parts.push_back(data.substr(0, at));
    data.remove_prefix(at + kSep.size());
  }
  parts.push_back(data);
  return parts;
}

// With SHEAF_FUZZ_VERBOSE set, prints why an input was refused (to check
// that seeds get past the format checks: tools/fuzz.sh smoke -v).
inline void Note(const absl::Status& status) {
  static const bool verbose = getenv("SHEAF_FUZZ_VERBOSE") != nullptr;
  if (verbose) fprintf(stderr, "refused: %s\n", status.ToString().c_str());
}

// Keeps a value computed from read bytes alive (so the reads happen).
inline void Sink(uint8_t v) { asm volatile("" : : "r"(v)); }

inline std::string_view AsView(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

}  // namespace sheaf::fuzz

#endif  // SHEAF_FUZZ_FUZZ_UTIL_H_
