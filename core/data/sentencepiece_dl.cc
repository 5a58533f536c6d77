// spm::Processor through libsheaf_spm.so (sentencepiece_shim.cc), loaded
// with dlopen(RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND) so that the protobuf
// copy inside Debian's libsentencepiece never meets the process' libprotobuf.
//
// Where the shim is looked for, first hit wins:
//   $SHEAF_SENTENCEPIECE_SHIM (a path)
//   beside the executable (an installed sheaf: bin/libsheaf_spm.so)
//   EXE.runfiles/sheaf/core/data/ and $RUNFILES_DIR, $TEST_SRCDIR (bazel)
//   EXE/../../core/data/ (bazel-bin/cli/sheaf, bazel-bin/worker/sheaf-worker)
//   the dynamic loader's own search (LD_LIBRARY_PATH, ld.so.cache)
#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "core/data/sentencepiece_impl.h"

namespace sheaf::spm {
namespace {

constexpr const char* kShimName = "libsheaf_spm.so";

struct Shim {
  void* handle = nullptr;
  std::string error;
  int (*abi_version)() = nullptr;
  void* (*load)(const char*, char*, size_t) = nullptr;
  void (*release)(void*) = nullptr;
  void (*info)(void*, int*) = nullptr;
  int (*encode)(void*, const char*, size_t, int**, size_t*) = nullptr;
  int (*decode)(void*, const int*, size_t, char**, size_t*) = nullptr;
  void (*free_buffer)(void*) = nullptr;
};

std::vector<std::string> Candidates() {
  namespace fs = std::filesystem;
  std::vector<std::string> c;
  if (const char* e = std::getenv("SHEAF_SENTENCEPIECE_SHIM"); e != nullptr && *e) c.push_back(e);
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    c.push_back((exe.parent_path() / kShimName).string());
    c.push_back(exe.string() + ".runfiles/sheaf/core/data/" + kShimName);
  }
  for (const char* var : {"RUNFILES_DIR", "TEST_SRCDIR"}) {
    if (const char* e = std::getenv(var); e != nullptr && *e) {
      c.push_back(std::string(e) + "/sheaf/core/data/" + kShimName);
    }
  }
  if (!ec) c.push_back((exe.parent_path().parent_path() / "core/data" / kShimName).string());
  return c;
}

template <typename F>
bool Sym(void* h, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(h, name));
  return *out != nullptr;
}

const Shim& GetShim() {
  static const Shim* shim = [] {
    auto* s = new Shim();
    const int flags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
    std::string tried;
    for (const std::string& path : Candidates()) {
      std::error_code ec;
      if (!std::filesystem::is_regular_file(path, ec)) {
        tried += " " + path;
        continue;
      }
      s->handle = dlopen(path.c_str(), flags);
      if (s->handle == nullptr) {
        s->error = "cannot load " + path + ": " + dlerror();
        return s;
      }
      break;
    }
    if (s->handle == nullptr) {
      s->handle = dlopen(kShimName, flags);  // the loader's search path
      if (s->handle == nullptr) {
        s->error = std::string("SentencePiece support (") + kShimName +
                   ") not found; looked at" + tried +
                   " and the loader's path; set SHEAF_SENTENCEPIECE_SHIM to its path";
        return s;
      }
    }
    if (!Sym(s->handle, "sheaf_spm_abi_version", &s->abi_version) || s->abi_version() != 1 ||
        !Sym(s->handle, "sheaf_spm_load", &s->load) || !Sym(s->handle, "sheaf_spm_release", &s->release) ||
        !Sym(s->handle, "sheaf_spm_info", &s->info) || !Sym(s->handle, "sheaf_spm_encode", &s->encode) ||
        !Sym(s->handle, "sheaf_spm_decode", &s->decode) ||
        !Sym(s->handle, "sheaf_spm_free_buffer", &s->free_buffer)) {
      s->error = std::string(kShimName) + " is not the shim of this sheaf (ABI 1)";
      s->handle = nullptr;
    }
    return s;
  }();
  return *shim;
}

class DlProcessor final : public Processor {
 public:
  DlProcessor(const Shim& shim, void* p) : shim_(shim), p_(p) { shim_.info(p_, info_); }
  ~DlProcessor() override { shim_.release(p_); }
  std::vector<int> Encode(std::string_view text) const override {
    int* ids = nullptr;
    size_t n = 0;
    if (shim_.encode(p_, text.data(), text.size(), &ids, &n) != 0) return {};
    std::vector<int> out(ids, ids + n);
    shim_.free_buffer(ids);
    return out;
  }
  std::string Decode(const std::vector<int>& ids) const override {
    char* s = nullptr;
    size_t n = 0;
    if (shim_.decode(p_, ids.data(), ids.size(), &s, &n) != 0) return {};
    std::string out(s, n);
    shim_.free_buffer(s);
    return out;
  }
  int PieceSize() const override { return info_[0]; }
  int BosId() const override { return info_[1]; }
  int EosId() const override { return info_[2]; }
  int PadId() const override { return info_[3]; }

 private:
  const Shim& shim_;
  void* p_;
  int info_[4] = {0, -1, -1, -1};
};

}  // namespace

std::unique_ptr<Processor> Processor::Load(const std::string& path, std::string* error) {
  const Shim& shim = GetShim();
  if (shim.handle == nullptr) {
    *error = shim.error;
    return nullptr;
  }
  char err[512] = {0};
  void* p = shim.load(path.c_str(), err, sizeof(err));
  if (p == nullptr) {
    *error = err;
    return nullptr;
  }
  return std::make_unique<DlProcessor>(shim, p);
}

}  // namespace sheaf::spm
