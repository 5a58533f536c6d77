#include "ops/cpu/cpu_backend.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "ops/cpu/attention.h"
#include "ops/cpu/cpu_features.h"
#include "ops/cpu/heads.h"
#include "ops/cpu/lora_mix.h"
#include "ops/cpu/nf4_ops.h"
#include "ops/cpu/ops.h"
#include "ops/cpu/optimizer_ops.h"

namespace sheaf::ops {
namespace {

constexpr DType kF32 = DType::kDTypeF32;
constexpr DType kBF16 = DType::kDTypeBF16;
constexpr DType kNF4 = DType::kDTypeNF4;

[[noreturn]] void Die(const char* what, const Tensor& t) {
  std::fprintf(stderr, "cpu backend: %s does not support a %s tensor %s\n", what,
               DTypeName(t.dtype), t.ShapeString().c_str());
  std::abort();
}

ops::LoraMixArgs MixArgs(const LoraOpArgs& a) {
  ops::LoraMixArgs m;
  m.n = a.n;
  m.in = a.in;
  m.out = a.out;
  m.num_experts = a.num_experts;
  m.lora_rank = a.r / a.num_experts;
  m.scale = a.scale;
  m.a_cat = a.a;
  m.b_cat = a.b;
  m.gate = a.gate;
  m.rows_per_group = a.rows_per_group;
  m.mixing = a.mixing == sheaf::LoraMixing::kLoraMixingWeights
                 ? ops::LoraMixing::kLoraMixingWeights
                 : ops::LoraMixing::kLoraMixingOutputs;
  return m;
}

ops::SelectedRowsHeadArgs HeadArgs(const SelectedRowsArgs& a) {
  ops::SelectedRowsHeadArgs h;
  h.n = a.n;
  h.C = a.C;
  h.V = a.V;
  h.num_rows = a.num_rows;
  h.num_cols = a.num_cols;
  h.rows = a.rows;
  h.cols = a.cols;
  h.targets = a.targets;
  h.ignore_index = a.ignore_index;
  return h;
}

// The f32 head weight the kernels read: w itself, or for bf16 its selected
// rows widened into scratch [J, C] (args then addresses them as 0..J-1).
const float* HeadWeight(const SelectedRowsArgs& a, const Tensor& w, float* scratch,
                        std::vector<int32_t>* iota, ops::SelectedRowsHeadArgs* args,
                        const char* what) {
  if (w.dtype == kF32) return w.data;
  if (w.dtype != kBF16) Die(what, w);
  const uint16_t* w16 = static_cast<const uint16_t*>(w.raw());
  for (int j = 0; j < a.num_cols; ++j) {
    ops::WidenBf16(scratch + int64_t{j} * a.C, w16 + int64_t{a.cols[j]} * a.C, a.C);
    iota->push_back(j);
  }
  args->cols = iota->data();
  args->V = a.num_cols;
  return scratch;
}

class Cpu final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  std::string Describe() const override { return ops::DescribeKernels(); }
  Device device() const override { return Device::kDeviceCpu; }
  void* Alloc(int64_t bytes) override { return HostAllocator()->Alloc(bytes); }
  void Free(void* p) override { HostAllocator()->Free(p); }

  bool Supports(BackendOp op, std::initializer_list<DType> dtypes) const override {
    int i = 0;
    for (DType t : dtypes) {
      const bool weight_operand =
          (op == BackendOp::kBackendOpLinear && i == 1) || op == BackendOp::kBackendOpEmbedding;
      const bool nf4_weight = op == BackendOp::kBackendOpLinear && i == 1 && t == kNF4;
      if (t != kF32 && !(weight_operand && t == kBF16) && !nf4_weight) return false;
      ++i;
    }
    return true;
  }

  void SetNumThreads(int n) override { ops::SetNumThreads(n); }
  int NumThreads() const override { return ops::NumThreads(); }
  void Zero(void* p, int64_t bytes) override {
    std::memset(p, 0, static_cast<size_t>(bytes));
  }

  void Matmul(float* out, const float* a, const float* b, int M, int N, int K, bool trans_a,
              bool trans_b, float alpha, float beta) override {
    ops::Matmul(out, a, b, M, N, K, trans_a, trans_b, alpha, beta);
  }
  void MatmulSplitN(std::span<const MatmulPart> parts, const float* x, int M, int K,
                    float alpha, float beta) override {
    std::vector<ops::GemmSegment> b, c;
    int N = 0;
    for (const MatmulPart& p : parts) {
      if (p.size <= 0) continue;
      b.push_back({p.b, K, N});
      c.push_back({p.c, p.size, N});
      N += p.size;
    }
    ops::GemmSplitN(M, N, K, alpha, x, K, b.data(), c.data(), static_cast<int>(b.size()), beta);
  }
  void MatmulSplitK(float* out, std::span<const MatmulPart> parts, int M, int N, float alpha,
                    float beta) override {
    std::vector<ops::GemmSegment> a, b;
    int K = 0;
    for (const MatmulPart& p : parts) {
      if (p.size <= 0) continue;
      a.push_back({p.a, p.size, K});
      b.push_back({p.b, N, K});
      K += p.size;
    }
    ops::GemmSplitK(M, N, K, alpha, a.data(), b.data(), static_cast<int>(a.size()), beta, out, N);
  }
  void LinearForward(float* y, const float* x, const Tensor& w, const float* bias,
                     int n) override {
    const int out = static_cast<int>(w.dim(0)), in = static_cast<int>(w.dim(1));
    switch (w.dtype) {
      case kF32: return ops::LinearForward(y, x, w.data, bias, n, in, out);
      case kBF16:
        return ops::LinearForwardBf16(y, x, static_cast<const uint16_t*>(w.raw()), bias, n, in,
                                      out);
      case kNF4:
        return ops::LinearForwardNf4(y, x, static_cast<const uint8_t*>(w.raw()), bias, n, in, out);
      default: Die("LinearForward", w);
    }
  }
  void LinearBackward(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                      const Tensor& w, int n) override {
    const int out = static_cast<int>(w.dim(0)), in = static_cast<int>(w.dim(1));
    switch (w.dtype) {
      case kF32: return ops::LinearBackward(dx, dw, dbias, dy, x, w.data, n, in, out);
      case kBF16:
        if (dw != nullptr) Die("LinearBackward with a weight gradient", w);
        return ops::LinearBackwardBf16(dx, dbias, dy, static_cast<const uint16_t*>(w.raw()), n,
                                       in, out);
      case kNF4:
        if (dw != nullptr) Die("LinearBackward with a weight gradient", w);
        return ops::LinearBackwardNf4(dx, dbias, dy, static_cast<const uint8_t*>(w.raw()), n, in,
                                      out);
      default: Die("LinearBackward", w);
    }
  }

  bool SupportsBf16Compute() const override { return true; }
  void LinearForwardBf16Compute(float* y, const float* x, const Tensor& w, const float* bias,
                                int n) override {
    const int out = static_cast<int>(w.dim(0)), in = static_cast<int>(w.dim(1));
    switch (w.dtype) {
      case kF32: return ops::LinearForwardBf16Compute(y, x, nullptr, w.data, bias, n, in, out);
      case kBF16:
        return ops::LinearForwardBf16Compute(y, x, static_cast<const uint16_t*>(w.raw()), nullptr,
                                             bias, n, in, out);
      default: Die("LinearForwardBf16Compute", w);
    }
  }
  void LinearBackwardBf16Compute(float* dx, float* dbias, const float* dy, const Tensor& w,
                                 int n) override {
    const int out = static_cast<int>(w.dim(0)), in = static_cast<int>(w.dim(1));
    switch (w.dtype) {
      case kF32:
        return ops::LinearBackwardBf16Compute(dx, dbias, dy, nullptr, w.data, n, in, out);
      case kBF16:
        return ops::LinearBackwardBf16Compute(dx, dbias, dy, static_cast<const uint16_t*>(w.raw()),
                                              nullptr, n, in, out);
      default: Die("LinearBackwardBf16Compute", w);
    }
  }

  void LoraForward(const LoraOpArgs& a, float* y, float* xa, const float* x) override {
    ops::LoraForward(y, xa, x, a.a, a.b, a.scale, a.n, a.in, a.out, a.r);
  }
  void LoraBackward(const LoraOpArgs& a, float* dx, float* da, float* db, float* scratch_dyb,
                    const float* dy, const float* x, const float* xa) override {
    ops::LoraBackward(dx, da, db, scratch_dyb, dy, x, xa, a.a, a.b, a.scale, a.n, a.in, a.out,
                      a.r);
  }
  int64_t LoraScratchFloats(const LoraOpArgs& a) const override {
    return ops::LoraMixScratchFloats(MixArgs(a));
  }
  void LoraMixForward(const LoraOpArgs& a, float* y, float* xa, float* scratch,
                      const float* x) override {
    ops::LoraMixForward(y, xa, scratch, x, MixArgs(a));
  }
  void LoraMixBackward(const LoraOpArgs& a, float* dx, float* da, float* db, float* dgate,
                       float* scratch, const float* dy, const float* x,
                       const float* xa) override {
    ops::LoraMixBackward(dx, da, db, dgate, scratch, dy, x, xa, MixArgs(a));
  }

  // Saved state: two floats per (batch, head, query row), the row's max
  // score and reciprocal softmax sum (ops/cpu/attention.h): linear in T.
  int64_t AttentionSavedBytes(int B, int T, int NH, int KVH, int HD) const override {
    return ops::TiledAttentionSavedFloats(B, T, NH) * static_cast<int64_t>(sizeof(float));
  }
  void AttentionForward(float* out, void* saved, const float* q, const float* k, const float* v,
                        int B, int T, int NH, int KVH, int HD) override {
    ops::TiledAttentionForward(out, static_cast<float*>(saved), q, k, v, B, T, NH, KVH, HD);
  }
  void AttentionBackward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                         const float* k, const float* v, const void* saved, int B, int T, int NH,
                         int KVH, int HD) override {
    ops::TiledAttentionBackward(dq, dk, dv, dout, q, k, v, static_cast<const float*>(saved), B,
                                T, NH, KVH, HD);
  }

  void RmsNormForward(float* out, float* rstd, const float* x, const float* w, int n, int C,
                      float eps) override {
    ops::RmsNormForward(out, rstd, x, w, n, C, eps);
  }
  void RmsNormBackward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                       const float* rstd, int n, int C) override {
    ops::RmsNormBackward(dx, dw, dout, x, w, rstd, n, C);
  }
  void RopeTables(float* cos, float* sin, int T, int HD, float theta) override {
    ops::RopeTables(cos, sin, T, HD, theta);
  }
  void RopeForward(float* out, const float* x, const float* cos, const float* sin, int B, int T,
                   int H, int HD) override {
    ops::RopeForward(out, x, cos, sin, B, T, H, HD);
  }
  void RopeBackward(float* dx, const float* dout, const float* cos, const float* sin, int B,
                    int T, int H, int HD) override {
    ops::RopeBackward(dx, dout, cos, sin, B, T, H, HD);
  }
  void SwiGluForward(float* h, const float* gate, const float* up, int64_t n) override {
    ops::SwiGluForward(h, gate, up, n);
  }
  void SwiGluBackward(float* dgate, float* dup, const float* dh, const float* gate,
                      const float* up, int64_t n) override {
    ops::SwiGluBackward(dgate, dup, dh, gate, up, n);
  }
  void EmbeddingForward(float* out, const int32_t* tokens, const Tensor& wte, int n) override {
    const int C = static_cast<int>(wte.dim(1));
    switch (wte.dtype) {
      case kF32: return ops::EmbeddingForward(out, tokens, wte.data, n, C);
      case kBF16:
        return ops::EmbeddingForwardBf16(out, tokens, static_cast<const uint16_t*>(wte.raw()), n,
                                         C);
      default: Die("EmbeddingForward", wte);
    }
  }
  void EmbeddingBackward(float* dwte, const float* dout, const int32_t* tokens, int n,
                         int C) override {
    ops::EmbeddingBackward(dwte, dout, tokens, n, C);
  }
  void CrossEntropy(float* dlogits, double* loss_sum, int64_t* n_valid, const float* logits,
                    const int32_t* targets, int N, int V, int ignore_index,
                    float grad_scale) override {
    ops::CrossEntropy(dlogits, loss_sum, n_valid, logits, targets, N, V, ignore_index,
                      grad_scale);
  }
  // A bf16 head weight: its J selected rows are widened into the first J·C
  // floats of scratch, which then serve as an f32 W with columns 0..J-1.
  int64_t SelectedRowsHeadScratchFloats(const SelectedRowsArgs& a) const override {
    return ops::SelectedRowsHeadScratchFloats(HeadArgs(a)) + int64_t{a.num_cols} * a.C;
  }
  void SelectedRowsHeadForward(const SelectedRowsArgs& a, float* logits, float* dlogits,
                               double* loss_sum, int64_t* n_valid, float* scratch, const float* h,
                               const Tensor& w, float grad_scale) override {
    std::vector<int32_t> iota;
    ops::SelectedRowsHeadArgs args = HeadArgs(a);
    const float* wf = HeadWeight(a, w, scratch, &iota, &args, "SelectedRowsHeadForward");
    ops::SelectedRowsHeadForward(logits, dlogits, loss_sum, n_valid,
                                 scratch + int64_t{a.num_cols} * a.C, h, wf, args, grad_scale);
  }
  void SelectedRowsHeadBackward(const SelectedRowsArgs& a, float* dh, float* dw, float* scratch,
                                const float* dlogits, const float* h,
                                const Tensor& w) override {
    if (dw != nullptr && w.dtype != kF32) Die("SelectedRowsHeadBackward with a weight gradient", w);
    std::vector<int32_t> iota;
    ops::SelectedRowsHeadArgs args = HeadArgs(a);
    const float* wf = HeadWeight(a, w, scratch, &iota, &args, "SelectedRowsHeadBackward");
    ops::SelectedRowsHeadBackward(dh, dw, scratch + int64_t{a.num_cols} * a.C, dlogits, h, wf,
                                  args);
  }
  void GatherRows(float* out, const float* src, const int32_t* idx, int M, int C) override {
    ops::GatherRows(out, src, idx, M, C);
  }
  void ScatterAddRows(float* dst, const float* src, const int32_t* idx, int M, int C) override {
    ops::ScatterAddRows(dst, src, idx, M, C);
  }

  void Add(float* out, const float* a, const float* b, int64_t n) override {
    ops::Add(out, a, b, n);
  }
  void Mul(float* out, const float* a, const float* b, int64_t n) override {
    ops::Mul(out, a, b, n);
  }
  void MulAdd(float* out, const float* a, const float* b, int64_t n) override {
    ops::MulAdd(out, a, b, n);
  }
  void Scale(float* x, float scale, int64_t n) override { ops::Scale(x, n, scale); }
  void DropoutMask(float* mask, int64_t n, int64_t first_index, float p, uint64_t seed,
                   int stream) override {
    ops::DropoutMask(mask, n, first_index, p, seed, stream);
  }

  void AdamWStep(const AdamWStepArgs& a, float* p, const float* g, float* m, float* v,
                 int64_t n) override {
    ops::AdamWUpdate(p, g, m, v, n, a.decay, a.beta1, a.one_minus_beta1, a.beta2,
                     a.one_minus_beta2, a.step_size, a.inv_sqrt_bc2, a.eps);
  }
  void SumSquares(std::span<const std::span<const float>> chunks, double* partial) override {
    ops::SumSquaresChunks(chunks, partial);
  }
};

Backend* const kCpu = [] {
  auto backend = std::make_unique<Cpu>();
  Backend* raw = backend.get();
  RegisterBackend(std::move(backend));
  return raw;
}();

}  // namespace

Backend* CpuBackend() { return kCpu; }

}  // namespace sheaf::ops
