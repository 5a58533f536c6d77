// The C ABI of libsheaf_spm.so, the only object that links Debian's
// libsentencepiece. sheaf's processes load it with dlopen(RTLD_LOCAL |
// RTLD_DEEPBIND) (sentencepiece_dl.cc): libsentencepiece carries and exports
// its own copy of protobuf-lite, and linked normally into a process that
// also has libprotobuf the two copies' symbols interpose and the process
// crashes in static initialisation. Loaded this way its symbols bind to its
// own copy first and none of them enter the process' global scope.
//
// Only plain C types cross this boundary (no std::string, no exceptions):
// buffers returned by encode/decode are malloc'd and released with
// sheaf_spm_free_buffer.
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

extern "C" {

__attribute__((visibility("default"))) int sheaf_spm_abi_version() { return 1; }

// A processor, or null with up to errlen - 1 bytes of the reason in err.
__attribute__((visibility("default"))) void* sheaf_spm_load(const char* path, char* err,
                                                            size_t errlen) {
  auto* sp = new (std::nothrow) sentencepiece::SentencePieceProcessor();
  if (sp == nullptr) return nullptr;
  const sentencepiece::util::Status st = sp->Load(std::string(path));
  if (!st.ok()) {
    const std::string m = st.ToString();
    if (errlen > 0) {
      const size_t n = m.size() < errlen - 1 ? m.size() : errlen - 1;
      std::memcpy(err, m.data(), n);
      err[n] = '\0';
    }
    delete sp;
    return nullptr;
  }
  return sp;
}

__attribute__((visibility("default"))) void sheaf_spm_release(void* p) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(p);
}

// pieces, bos, eos, pad (-1 when the model has none).
__attribute__((visibility("default"))) void sheaf_spm_info(void* p, int* out4) {
  const auto* sp = static_cast<const sentencepiece::SentencePieceProcessor*>(p);
  out4[0] = sp->GetPieceSize();
  out4[1] = sp->bos_id();
  out4[2] = sp->eos_id();
  out4[3] = sp->pad_id();
}

// 0 on success: *ids (malloc'd, *n of them) is EncodeAsIds(text).
__attribute__((visibility("default"))) int sheaf_spm_encode(void* p, const char* text, size_t len,
                                                            int** ids, size_t* n) {
  const auto* sp = static_cast<const sentencepiece::SentencePieceProcessor*>(p);
  std::vector<int> v;
  if (!sp->Encode(std::string(text, len), &v).ok()) return 1;
  *n = v.size();
  *ids = static_cast<int*>(std::malloc(v.size() * sizeof(int) + 1));
  if (*ids == nullptr) return 2;
  if (!v.empty()) std::memcpy(*ids, v.data(), v.size() * sizeof(int));
  return 0;
}

// 0 on success: *out (malloc'd, *len bytes) is DecodeIds(ids).
__attribute__((visibility("default"))) int sheaf_spm_decode(void* p, const int* ids, size_t n,
                                                            char** out, size_t* len) {
  const auto* sp = static_cast<const sentencepiece::SentencePieceProcessor*>(p);
  std::string s;
  if (!sp->Decode(std::vector<int>(ids, ids + n), &s).ok()) return 1;
  *len = s.size();
  *out = static_cast<char*>(std::malloc(s.size() + 1));
  if (*out == nullptr) return 2;
  std::memcpy(*out, s.data(), s.size());
  return 0;
}

__attribute__((visibility("default"))) void sheaf_spm_free_buffer(void* b) { std::free(b); }

}  // extern "C"
