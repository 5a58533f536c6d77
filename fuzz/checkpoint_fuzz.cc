// Fuzz target: the checkpoint reader (core/checkpoint Checkpoint::Read).
//
// The input is a whole checkpoint file (the CRC is part of it, so most
// mutations stop there; the seed corpus and tools/fuzz.sh's -only_ascii=0
// keep valid trailers around). An accepted file hands out every entry: each
// tensor's span has Π shape floats inside the buffer, each byte string too.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/checkpoint.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      sheaf::fuzz::WriteScratch("ckpt.sheafckpt", sheaf::fuzz::AsView(data, size));
  auto ckpt = sheaf::Checkpoint::Read(path);
  if (!ckpt.ok()) {
    sheaf::fuzz::Note(ckpt.status());
    return 0;
  }
  float fsink = 0;
  char csink = 0;
  for (const std::string& name : ckpt->Names()) {
    if (!ckpt->Has(name)) abort();
    auto shape = ckpt->TensorShape(name);
    if (shape.ok()) {
      int64_t numel = 1;
      for (int64_t d : *shape) numel *= d;
      auto t = ckpt->Tensor(name, *shape);
      if (!t.ok() || static_cast<int64_t>(t->size()) != numel) abort();
      for (float v : *t) fsink += v;
    } else {
      auto b = ckpt->Bytes(name);
      if (!b.ok()) abort();
      for (char c : *b) csink ^= c;
    }
  }
  sheaf::fuzz::Sink(static_cast<uint8_t>(csink) ^ static_cast<uint8_t>(fsink != fsink));
  return 0;
}
