// NF4: QLoRA's 4-bit NormalFloat, blockwise, with double quantisation of
// the block scales (Dettmers et al., "QLoRA", 2023).
//
// Quantisation of n floats, in blocks of kNf4BlockSize = 64 consecutive
// elements (the last block padded with zeros):
//   absmax_b = max |x_i| over the block; code_i = the index of the code value
//   nearest to x_i / absmax_b (an all-zero block codes 0.0); element 2k of a
//   block goes into the low nibble of byte k, 2k+1 into the high nibble.
// In memory (core/dtype.h, what the kernels read) each block is 32 bytes of
// codes followed by its fp32 absmax: 36 bytes.
//
// Double quantisation (storage: the NF4 file below): the block absmax values
// minus their mean are quantised to int8 in blocks of kNf4ScaleBlockSize =
// 256 absmax values, symmetric: q = round(127 · (a − mean) / s) with
// s = max |a − mean| over the 256; dequantised a' = q · s / 127 + mean. That
// takes the scale overhead from 32 bits to about 8.1 bits per 64 elements
// (4.127 bits per weight instead of 4.5). The in-memory layout then holds a'.
// (bitsandbytes quantises the absmax with its 8-bit dynamic map; this is the
// plain linear int8 form, chosen for a simple, exact reference.)
#ifndef SHEAF_CORE_QUANT_NF4_H_
#define SHEAF_CORE_QUANT_NF4_H_

#include <array>
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace sheaf::quant {

inline constexpr int64_t kNf4ScaleBlockSize = 256;

// QLoRA's 16 NF4 code values, ascending.
inline constexpr std::array<float, 16> kNf4Codes = {
    -1.0f,       -0.6961928f, -0.5250731f, -0.3949175f, -0.2844414f, -0.1847734f,
    -0.0910500f, 0.0f,        0.0795803f,  0.1609302f,  0.2461123f,  0.3379152f,
    0.4407098f,  0.5626170f,  0.7229568f,  1.0f};

inline int64_t Nf4Blocks(int64_t n) { return (n + kNf4BlockSize - 1) / kNf4BlockSize; }

// The index of the code nearest to v (v in [-1, 1]; ties go to the lower code).
int Nf4Code(float v);

// x[n] → out (DTypeBytes(kDTypeNF4, n) bytes, the in-memory layout).
void QuantizeNf4(const float* x, int64_t n, uint8_t* out);
// Elements [first, first + count) of an in-memory NF4 tensor → out[count].
void DequantizeNf4(const uint8_t* nf4, int64_t first, int64_t count, float* out);

// Double quantisation of a tensor's block scales.
struct Nf4DoubleQuant {
  float mean = 0;
  std::vector<float> scale;   // [ceil(blocks / 256)]: s of each group of 256
  std::vector<int8_t> q;      // [blocks]
};
Nf4DoubleQuant DoubleQuantize(const std::vector<float>& absmax);
std::vector<float> DoubleDequantize(const Nf4DoubleQuant& dq);

// The absmax values of an in-memory tensor of n elements, and setting them.
std::vector<float> Nf4Absmax(const uint8_t* nf4, int64_t n);
void SetNf4Absmax(uint8_t* nf4, int64_t n, const std::vector<float>& absmax);

// QuantizeNf4, then the block scales replaced by their double-quantised
// values (DoubleDequantize(DoubleQuantize(absmax))): the bytes an NF4 file
// written from QuantizeNf4(x) reads back as (ReadNf4File). What a model with
// frozen_dtype nf4 holds, so training sees exactly the stored artifact.
void QuantizeNf4DoubleQuant(const float* x, int64_t n, uint8_t* out);

}  // namespace sheaf::quant

#endif  // SHEAF_CORE_QUANT_NF4_H_
