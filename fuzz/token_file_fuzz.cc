// Fuzz target: the .tok reader (core/data TokenFile::Open).
//
// The input is a whole .tok file. An accepted file must keep Open's promise
// (every document inside the file, every id < vocab_size): each document is
// copied out and its ids checked.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/data/token_file.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = sheaf::fuzz::WriteScratch("corpus.tok", sheaf::fuzz::AsView(data, size));
  auto file = sheaf::TokenFile::Open(path);
  if (!file.ok()) {
    sheaf::fuzz::Note(file.status());
    return 0;
  }
  const sheaf::TokenFile& f = **file;
  int64_t total = 0;
  std::vector<int32_t> out;
  for (int64_t d = 0; d < f.num_docs(); ++d) {
    const int64_t n = f.doc_size(d);
    if (n <= 0) abort();
    total += n;
    out.resize(static_cast<size_t>(n));
    f.CopyTokens(d, 0, n, out.data());
    for (int32_t id : out) {
      if (id < 0 || id >= f.vocab_size()) {
        fprintf(stderr, "token %d outside [0, %d)\n", id, f.vocab_size());
        abort();
      }
    }
  }
  if (total != f.num_tokens()) abort();
  if (f.bos_id() < 0 || f.bos_id() >= f.vocab_size()) abort();
  if (f.eos_id() < 0 || f.eos_id() >= f.vocab_size()) abort();
  return 0;
}
