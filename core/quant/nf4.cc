#include "core/quant/nf4.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace sheaf::quant {
namespace {

constexpr int64_t kCodeBytes = kNf4BlockSize / 2;

// Midpoints between adjacent codes: v > mid[i] means code i+1 or above.
constexpr std::array<float, 15> Midpoints() {
  std::array<float, 15> m{};
  for (int i = 0; i < 15; ++i) m[i] = 0.5f * (kNf4Codes[i] + kNf4Codes[i + 1]);
  return m;
}
constexpr std::array<float, 15> kMid = Midpoints();

float LoadF32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}

}  // namespace

int Nf4Code(float v) {
  int c = 0;
  while (c < 15 && v > kMid[c]) ++c;
  return c;
}

void QuantizeNf4(const float* x, int64_t n, uint8_t* out) {
  const int64_t blocks = Nf4Blocks(n);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t first = b * kNf4BlockSize, len = std::min(kNf4BlockSize, n - first);
    float absmax = 0;
    for (int64_t i = 0; i < len; ++i) absmax = std::max(absmax, std::fabs(x[first + i]));
    uint8_t* block = out + b * kNf4BlockBytes;
    std::memset(block, 0, kCodeBytes);
    for (int64_t i = 0; i < kNf4BlockSize; ++i) {
      const int code = Nf4Code(i < len && absmax > 0 ? x[first + i] / absmax : 0.0f);
      block[i / 2] |= static_cast<uint8_t>(i % 2 == 0 ? code : code << 4);
    }
    std::memcpy(block + kCodeBytes, &absmax, 4);
  }
}

void DequantizeNf4(const uint8_t* nf4, int64_t first, int64_t count, float* out) {
  int64_t i = 0;
  while (i < count) {
    const int64_t e = first + i, b = e / kNf4BlockSize, in_block = e % kNf4BlockSize;
    const uint8_t* block = nf4 + b * kNf4BlockBytes;
    const float absmax = LoadF32(block + kCodeBytes);
    const int64_t len = std::min(kNf4BlockSize - in_block, count - i);
    for (int64_t j = 0; j < len; ++j) {
      const int64_t k = in_block + j;
      const int code = (block[k / 2] >> ((k % 2) * 4)) & 0xf;
      out[i + j] = kNf4Codes[static_cast<size_t>(code)] * absmax;
    }
    i += len;
  }
}

Nf4DoubleQuant DoubleQuantize(const std::vector<float>& absmax) {
  Nf4DoubleQuant dq;
  double sum = 0;
  for (float a : absmax) sum += a;
  dq.mean = absmax.empty() ? 0.0f : static_cast<float>(sum / static_cast<double>(absmax.size()));
  const int64_t n = static_cast<int64_t>(absmax.size());
  dq.q.resize(absmax.size());
  for (int64_t g = 0; g * kNf4ScaleBlockSize < n; ++g) {
    const int64_t first = g * kNf4ScaleBlockSize, len = std::min(kNf4ScaleBlockSize, n - first);
    float s = 0;
    for (int64_t i = 0; i < len; ++i) s = std::max(s, std::fabs(absmax[first + i] - dq.mean));
    dq.scale.push_back(s);
    for (int64_t i = 0; i < len; ++i) {
      const float v = s > 0 ? 127.0f * (absmax[first + i] - dq.mean) / s : 0.0f;
      dq.q[static_cast<size_t>(first + i)] =
          static_cast<int8_t>(std::clamp(std::lround(v), -127L, 127L));
    }
  }
  return dq;
}

std::vector<float> DoubleDequantize(const Nf4DoubleQuant& dq) {
  std::vector<float> a(dq.q.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const float s = dq.scale[i / static_cast<size_t>(kNf4ScaleBlockSize)];
    a[i] = static_cast<float>(dq.q[i]) * s / 127.0f + dq.mean;
  }
  return a;
}

std::vector<float> Nf4Absmax(const uint8_t* nf4, int64_t n) {
  std::vector<float> a(static_cast<size_t>(Nf4Blocks(n)));
  for (size_t b = 0; b < a.size(); ++b) a[b] = LoadF32(nf4 + b * kNf4BlockBytes + kCodeBytes);
  return a;
}

void SetNf4Absmax(uint8_t* nf4, int64_t n, const std::vector<float>& absmax) {
  for (int64_t b = 0; b < Nf4Blocks(n); ++b) {
    std::memcpy(nf4 + b * kNf4BlockBytes + kCodeBytes, &absmax[static_cast<size_t>(b)], 4);
  }
}

void QuantizeNf4DoubleQuant(const float* x, int64_t n, uint8_t* out) {
  QuantizeNf4(x, n, out);
  SetNf4Absmax(out, n, DoubleDequantize(DoubleQuantize(Nf4Absmax(out, n))));
}

}  // namespace sheaf::quant
