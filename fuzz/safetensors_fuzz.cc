// Fuzz target: the safetensors header reader (core/safetensors).
//
// The input is a whole .safetensors file. An accepted file must keep the
// promise of SafetensorsFile::Open: every tensor it lists lies inside the
// data buffer, so reading each one (whole when small, else a short range)
// touches only mapped bytes.
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/safetensors.h"
#include "fuzz/fuzz_util.h"

namespace {

bool IsFloat(sheaf::SafetensorsDtype d) {
  using D = sheaf::SafetensorsDtype;
  return d == D::kDtypeF32 || d == D::kDtypeF16 || d == D::kDtypeBF16 || d == D::kDtypeF64;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      sheaf::fuzz::WriteScratch("model.safetensors", sheaf::fuzz::AsView(data, size));
  auto file = sheaf::SafetensorsFile::Open(path);
  if (!file.ok()) {
    sheaf::fuzz::Note(file.status());
    return 0;
  }
  const sheaf::SafetensorsFile& f = **file;
  uint8_t sink = 0;
  for (const sheaf::TensorInfo& t : f.tensors()) {
    if (f.Find(t.name) != &t) abort();
    const std::span<const std::byte> bytes = f.Bytes(t);
    if (static_cast<int64_t>(bytes.size()) != t.bytes()) abort();
    for (std::byte b : bytes) sink ^= static_cast<uint8_t>(b);
    if (!IsFloat(t.dtype)) continue;
    const int64_t n = t.numel();
    if (n <= 4096) {
      std::vector<float> out(static_cast<size_t>(n));
      if (!f.ReadF32(t.name, t.shape, out.data()).ok()) abort();
    }
    const int64_t count = n < 16 ? n : 16;
    std::vector<float> range(static_cast<size_t>(count));
    if (!f.ReadF32Range(t.name, n - count, count, range.data()).ok()) abort();
    // Out-of-range requests are errors, not reads.
    float one;
    if (f.ReadF32Range(t.name, n, 1, &one).ok()) abort();
    if (f.ReadF32Range(t.name, -1, 1, &one).ok()) abort();
  }
  (void)f.metadata();
  sheaf::fuzz::Sink(sink);
  return 0;
}
