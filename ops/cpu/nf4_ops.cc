#include "ops/cpu/nf4_ops.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/quant/nf4.h"
#include "ops/cpu/ops.h"

namespace sheaf::ops {
namespace {

// As the bf16 path: about 256 KiB of fp32 rows per tile, at least 16 rows.
int TileRows(int in) { return std::max(16, (1 << 16) / std::max(1, in)); }

float* TileBuffer(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(static_cast<size_t>(floats));
  return buffer.data();
}

void AddBiasColumns(float* dbias, const float* dy, int n, int out) {
  for (int c = 0; c < out; ++c) {
    double s = 0;
    for (int i = 0; i < n; ++i) s += dy[static_cast<int64_t>(i) * out + c];
    dbias[c] += static_cast<float>(s);
  }
}

}  // namespace

void LinearForwardNf4(float* y, const float* x, const uint8_t* w_nf4, const float* bias, int n,
                      int in, int out) {
  float beta = 0.0f;
  if (bias != nullptr) {
    for (int i = 0; i < n; ++i) std::memcpy(y + static_cast<int64_t>(i) * out, bias, sizeof(float) * out);
    beta = 1.0f;
  }
  const int tile = TileRows(in);
  float* w = TileBuffer(static_cast<int64_t>(tile) * in);
  for (int r0 = 0; r0 < out; r0 += tile) {
    const int rows = std::min(tile, out - r0);
    quant::DequantizeNf4(w_nf4, static_cast<int64_t>(r0) * in, static_cast<int64_t>(rows) * in, w);
    Gemm(false, true, n, rows, in, 1.0f, x, in, w, in, beta, y + r0, out);
  }
}

void LinearBackwardNf4(float* dx, float* dbias, const float* dy, const uint8_t* w_nf4, int n,
                       int in, int out) {
  if (dx != nullptr) {
    const int tile = TileRows(in);
    float* w = TileBuffer(static_cast<int64_t>(tile) * in);
    for (int r0 = 0; r0 < out; r0 += tile) {
      const int rows = std::min(tile, out - r0);
      quant::DequantizeNf4(w_nf4, static_cast<int64_t>(r0) * in, static_cast<int64_t>(rows) * in, w);
      Gemm(false, false, n, in, rows, 1.0f, dy + r0, out, w, in, 1.0f, dx, in);
    }
  }
  if (dbias != nullptr) AddBiasColumns(dbias, dy, n, out);
}

}  // namespace sheaf::ops
