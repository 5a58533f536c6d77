// Fuzz target: the tokenizer.json reader (core/data BpeTokenizer::Load), with
// the tokenizer_config.json beside it.
//
// The input is tokenizer.json, a line "@@@@", tokenizer_config.json, a line
// "@@@@", and a text. A tokenizer that loads encodes the text (and a few
// fixed strings); every id it returns must be < vocab_size, and decoding them
// must not fail.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/data/bpe_tokenizer.h"
#include "fuzz/fuzz_util.h"

namespace {

void Check(const sheaf::BpeTokenizer& tok, std::string_view text) {
  const std::vector<int32_t> ids = tok.Encode(text);
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) {
      fprintf(stderr, "Encode gave id %d outside [0, %d)\n", id, tok.vocab_size());
      abort();
    }
  }
  (void)tok.Decode(ids);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = sheaf::fuzz::SplitParts(sheaf::fuzz::AsView(data, size), 3);
  const std::string path = sheaf::fuzz::WriteScratch("tokenizer.json", parts[0]);
  if (parts.size() > 1) {
    sheaf::fuzz::WriteScratch("tokenizer_config.json", parts[1]);
  } else {
    sheaf::fuzz::RemoveScratch("tokenizer_config.json");
  }
  auto tok = sheaf::BpeTokenizer::Load(path);
  if (!tok.ok()) {
    sheaf::fuzz::Note(tok.status());
    return 0;
  }
  Check(**tok, "Hello world, it's 2024!\n\tÀ ça — 日本語 🙂");
  Check(**tok, "");
  if (parts.size() > 2) Check(**tok, parts[2]);
  (void)(*tok)->bos_id();
  (void)(*tok)->eos_id();
  return 0;
}
