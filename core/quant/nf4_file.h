// The NF4 file: frozen weights quantised to NF4 with double-quantised block
// scales (core/quant/nf4.h), stored as a safetensors file so any safetensors
// reader can open it:
//   __metadata__: format "sheaf-nf4", version "1", block_size "64",
//                 scale_block_size "256", tensors "<name>,<name>,..."
//   per tensor <name> of shape S with n = prod(S) elements, B = ceil(n/64):
//     <name>.shape          I64 [ndim]        S
//     <name>.codes          U8  [B*32]        4-bit codes, two per byte
//     <name>.absmax_q       I8  [B]           int8 block scales
//     <name>.absmax_scale   F32 [ceil(B/256)] s per group of 256 scales
//     <name>.absmax_mean    F32 [1]           the scales' mean
// Read checks every size against the shape, so a truncated file, a shape
// that claims more (or fewer) elements than its codes, or a missing part is
// an error naming the file and the tensor.
#ifndef SHEAF_CORE_QUANT_NF4_FILE_H_
#define SHEAF_CORE_QUANT_NF4_FILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sheaf::quant {

inline constexpr const char* kNf4FileFormat = "sheaf-nf4";

// One tensor in the in-memory NF4 layout (core/dtype.h).
struct Nf4Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // DTypeBytes(kDTypeNF4, numel)
  int64_t numel() const;
};

// Quantises x (shape `shape`) into an Nf4Tensor.
Nf4Tensor QuantizeTensor(std::string name, std::vector<int64_t> shape, const float* x);

// Writes the tensors with double-quantised scales (atomic).
absl::Status WriteNf4File(const std::string& path, const std::vector<Nf4Tensor>& tensors);
// Reads them back; the scales are the double-quantised ones, dequantised.
absl::StatusOr<std::vector<Nf4Tensor>> ReadNf4File(const std::string& path);

}  // namespace sheaf::quant

#endif  // SHEAF_CORE_QUANT_NF4_FILE_H_
