// Element types and devices that tensors, arenas, loaders, backends and
// collectives share.
//
// Storage sizes: f32 4 bytes, bf16/f16 2 bytes, i32 4 bytes per element.
// NF4 (QLoRA's 4-bit NormalFloat) is stored in blocks of kNf4BlockSize = 64
// elements: 32 bytes of packed 4-bit codes (element 2i in the low nibble of
// byte i, 2i+1 in the high nibble) followed by one fp32 absmax scale, 36
// bytes a block; a tensor whose element count is not a multiple of 64 pads
// its last block. Only frozen weights may be NF4.
#ifndef SHEAF_CORE_DTYPE_H_
#define SHEAF_CORE_DTYPE_H_

#include <cstdint>

namespace sheaf {

enum class DType : uint8_t {
  kDTypeF32,
  kDTypeBF16,
  kDTypeF16,
  kDTypeI32,
  kDTypeNF4,
};

enum class Device : uint8_t { kDeviceCpu, kDeviceCuda };

inline constexpr int64_t kNf4BlockSize = 64;
inline constexpr int64_t kNf4BlockBytes = kNf4BlockSize / 2 + 4;

// "f32", "bf16", "f16", "i32", "nf4".
inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kDTypeF32: return "f32";
    case DType::kDTypeBF16: return "bf16";
    case DType::kDTypeF16: return "f16";
    case DType::kDTypeI32: return "i32";
    case DType::kDTypeNF4: return "nf4";
  }
  return "?";
}

// "cpu", "cuda".
inline const char* DeviceName(Device d) { return d == Device::kDeviceCpu ? "cpu" : "cuda"; }

// Bytes that `numel` elements of `t` occupy (NF4: whole blocks with scales).
inline int64_t DTypeBytes(DType t, int64_t numel) {
  switch (t) {
    case DType::kDTypeF32:
    case DType::kDTypeI32: return numel * 4;
    case DType::kDTypeBF16:
    case DType::kDTypeF16: return numel * 2;
    case DType::kDTypeNF4: return (numel + kNf4BlockSize - 1) / kNf4BlockSize * kNf4BlockBytes;
  }
  return 0;
}

}  // namespace sheaf

#endif  // SHEAF_CORE_DTYPE_H_
