#include "core/quant/nf4.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/quant/nf4_file.h"
#include "gtest/gtest.h"

namespace sheaf::quant {
namespace {

std::vector<float> Normal(int64_t n, uint64_t seed, float std = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, std);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

// Written from QLoRA's definition, independently of nf4.cc: absmax per block
// of 64, the code with the smallest |x/absmax - code| (the first on a tie),
// low nibble first, then the fp32 absmax.
std::vector<uint8_t> ReferenceQuantize(const std::vector<float>& x) {
  const float codes[16] = {-1.0f, -0.6961928f, -0.5250731f, -0.3949175f, -0.2844414f,
                           -0.1847734f, -0.0910500f, 0.0f, 0.0795803f, 0.1609302f,
                           0.2461123f, 0.3379152f, 0.4407098f, 0.5626170f, 0.7229568f, 1.0f};
  const size_t blocks = (x.size() + 63) / 64;
  std::vector<uint8_t> out(blocks * 36, 0);
  for (size_t b = 0; b < blocks; ++b) {
    float m = 0;
    for (size_t i = b * 64; i < std::min(x.size(), b * 64 + 64); ++i) m = std::max(m, std::fabs(x[i]));
    for (size_t j = 0; j < 64; ++j) {
      const size_t i = b * 64 + j;
      const float v = i < x.size() && m > 0 ? x[i] / m : 0.0f;
      int best = 0;
      for (int c = 1; c < 16; ++c) {
        if (std::fabs(v - codes[c]) < std::fabs(v - codes[best])) best = c;
      }
      out[b * 36 + j / 2] |= static_cast<uint8_t>(j % 2 ? best << 4 : best);
    }
    std::memcpy(&out[b * 36 + 32], &m, 4);
  }
  return out;
}

TEST(Nf4Test, QuantizeMatchesReference) {
  for (int64_t n : {int64_t{64}, int64_t{1000}, int64_t{4096 + 7}}) {
    std::vector<float> x = Normal(n, static_cast<uint64_t>(n));
    x[3] = 0.0f;                  // exact code values
    x[5] = x[0] > 0 ? -x[0] : x[0];
    std::vector<uint8_t> got(static_cast<size_t>(DTypeBytes(DType::kDTypeNF4, n)));
    QuantizeNf4(x.data(), n, got.data());
    EXPECT_EQ(got, ReferenceQuantize(x)) << "n = " << n;
  }
  // An all-zero block codes 0.0 with absmax 0 and dequantises to zeros.
  std::vector<float> zeros(64, 0.0f), back(64, 1.0f);
  std::vector<uint8_t> q(36);
  QuantizeNf4(zeros.data(), 64, q.data());
  DequantizeNf4(q.data(), 0, 64, back.data());
  EXPECT_EQ(back, zeros);
  EXPECT_EQ(Nf4Code(0.0f), 7);
  EXPECT_EQ(Nf4Code(-1.0f), 0);
  EXPECT_EQ(Nf4Code(1.0f), 15);
}

TEST(Nf4Test, RoundTripWithinTheCodeSpacing) {
  const int64_t n = 64 * 50 + 13;
  const std::vector<float> x = Normal(n, 1, 0.05f);
  std::vector<uint8_t> q(static_cast<size_t>(DTypeBytes(DType::kDTypeNF4, n)));
  QuantizeNf4(x.data(), n, q.data());
  std::vector<float> y(static_cast<size_t>(n));
  DequantizeNf4(q.data(), 0, n, y.data());
  const std::vector<float> absmax = Nf4Absmax(q.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const float m = absmax[static_cast<size_t>(i / 64)];
    const float v = x[i] / m;
    // v lies between two adjacent codes; the error is at most half their
    // gap (times absmax), plus fp32 rounding of one product (1e-6 relative).
    int hi = 0;
    while (hi < 15 && kNf4Codes[hi] < v) ++hi;
    const int lo = std::max(0, hi - 1);
    const float bound = 0.5f * (kNf4Codes[hi] - kNf4Codes[lo]) * m + 1e-6f * m;
    ASSERT_LE(std::fabs(y[i] - x[i]), bound) << i;
  }
  // A sub-range starting inside a block dequantises the same values.
  std::vector<float> part(100);
  DequantizeNf4(q.data(), 37, 100, part.data());
  for (int i = 0; i < 100; ++i) ASSERT_EQ(part[i], y[37 + i]);
}

TEST(Nf4Test, DoubleQuantErrorBound) {
  std::vector<float> absmax = Normal(700, 2, 0.01f);
  for (float& a : absmax) a = std::fabs(a) + 0.02f;
  const Nf4DoubleQuant dq = DoubleQuantize(absmax);
  ASSERT_EQ(dq.scale.size(), 3u);  // ceil(700 / 256)
  const std::vector<float> back = DoubleDequantize(dq);
  for (size_t i = 0; i < absmax.size(); ++i) {
    // Rounding to the int8 grid: at most half a step s/127, plus fp32 noise.
    const float s = dq.scale[i / 256];
    ASSERT_LE(std::fabs(back[i] - absmax[i]), 0.5f * s / 127.0f + 1e-7f) << i;
  }
}

std::string TempFile(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) / name).string();
}

TEST(Nf4FileTest, RoundTripsAndRefusesBadFiles) {
  const std::vector<float> w = Normal(48 * 40, 3, 0.02f), b = Normal(300, 4);
  std::vector<Nf4Tensor> ts = {QuantizeTensor("layers.0.q", {48, 40}, w.data()),
                               QuantizeTensor("layers.0.k", {300}, b.data())};
  const std::string path = TempFile("w.nf4.safetensors");
  ASSERT_TRUE(WriteNf4File(path, ts).ok());
  absl::StatusOr<std::vector<Nf4Tensor>> back = ReadNf4File(path);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 2u);
  for (size_t t = 0; t < 2; ++t) {
    EXPECT_EQ((*back)[t].name, ts[t].name);
    EXPECT_EQ((*back)[t].shape, ts[t].shape);
    const int64_t n = ts[t].numel();
    std::vector<float> want(n), got(n);
    DequantizeNf4(ts[t].data.data(), 0, n, want.data());
    DequantizeNf4((*back)[t].data.data(), 0, n, got.data());
    // Same codes; scales from the double quant: each value moves by at most
    // |code| · (s/254) with s the scales' spread (bounded by max absmax).
    const std::vector<float> a = Nf4Absmax(ts[t].data.data(), n);
    const float spread = *std::max_element(a.begin(), a.end());
    for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(got[i], want[i], spread / 254.0f + 1e-7f);
  }
  // Truncated.
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& s) { std::ofstream(path, std::ios::binary | std::ios::trunc) << s; };
  write(bytes.substr(0, bytes.size() - 10));
  EXPECT_FALSE(ReadNf4File(path).ok());
  // Lying: a shape claiming more elements than the codes hold.
  std::vector<Nf4Tensor> lie = ts;
  lie[1].shape = {300};
  ASSERT_TRUE(WriteNf4File(path, lie).ok());
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  // layers.0.k.shape holds the int64 300 (0x12c): make it 3000 (0xbb8).
  const std::string needle("\x2c\x01\x00\x00\x00\x00\x00\x00", 8);
  const size_t at = bytes.rfind(needle);
  ASSERT_NE(at, std::string::npos);
  bytes[at] = '\xb8';
  bytes[at + 1] = '\x0b';
  write(bytes);
  absl::StatusOr<std::vector<Nf4Tensor>> e = ReadNf4File(path);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("layers.0.k.codes"), std::string::npos) << e.status();
  // Not an NF4 file at all.
  write("garbage");
  EXPECT_FALSE(ReadNf4File(path).ok());
}

}  // namespace
}  // namespace sheaf::quant
