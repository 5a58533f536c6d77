// The compute backend interface that core owns and ops/<device> implements,
// in the spirit of ggml's backend interface: a backend allocates the memory
// of arenas on its device, says which ops (and element types) it supports,
// and runs the ops the model and the optimizer need. core never includes
// anything from ops/: ops/cpu registers its backend at static-init time
// (cc_library alwayslink = 1), so a binary gets it by depending on
// //ops/cpu:ops, and Model / AdamW use DefaultBackend() unless given one.
//
// Legend (as in llm.c): B batch, T time, C channels, V vocab, NH query heads,
// KVH key/value heads, HD head dim, I MLP intermediate size, R lora rank,
// N = B*T rows. Activations and gradients are fp32, row-major, contiguous.
// Frozen weights handed over as a Tensor may also be bf16 where Supports()
// says so; trainable tensors and their gradients are always fp32.
//
// Contract shared by every op (it is the one ops/cpu/ops.h documents):
//  - Outputs first, inputs next, plain dimensions last.
//  - Every *Backward ADDS into its gradient outputs, so callers zero gradient
//    buffers once per step; a null d-weight pointer means "frozen": that
//    gradient is neither computed nor stored.
//  - Forward functions overwrite their outputs unless stated otherwise.
//  - Results are deterministic and independent of the thread count (ranks of
//    a data-parallel world and a resumed run must agree bit for bit).
//
// Thread-safety: a backend object is shared by every model in the process;
// ops may be called from one thread at a time per backend (they use the
// backend's own thread pool). The registry is thread-safe.
#ifndef SHEAF_CORE_BACKEND_H_
#define SHEAF_CORE_BACKEND_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace sheaf {

// Ops a backend may support, for Supports(). The dtypes passed along are
// those of the op's operands in the order given here.
enum class BackendOp : uint8_t {
  kBackendOpMatmul,        // {a/b/out}
  kBackendOpLinear,        // {x, w}: w may be a frozen bf16 weight
  kBackendOpLora,          // {x, a/b}
  kBackendOpAttention,     // {q/k/v}
  kBackendOpRmsNorm,       // {x}
  kBackendOpRope,          // {x}
  kBackendOpSwiGlu,        // {x}
  kBackendOpEmbedding,     // {table}: may be a frozen bf16 table
  kBackendOpCrossEntropy,  // {logits}
  kBackendOpElementwise,   // {x}: Add, Mul, MulAdd, Scale
  kBackendOpDropoutMask,   // {mask}
  kBackendOpAdamW,         // {param/grad/moments}
  kBackendOpSumSquares,    // {x}
};
const char* BackendOpName(BackendOp op);

// Arguments of the LoRA op on rows [0, n) of a linear layer W [out, in]:
//   xa[n, r] = x aᵀ;  y[n, out] += scale · xa bᵀ,   a [r, in], b [out, r].
// An args struct so that the K-expert mixture form (a_cat [K·R, in],
// b_cat [out, K·R], per-row gate [n, K]) adds fields without changing the
// signature of every backend.
// How the K experts of a mixture are combined (core/adapter_plan.h).
enum class LoraMixing : uint8_t {
  kLoraMixingOutputs,  // y += scale · Σ_k g_k B_k A_k x
  kLoraMixingWeights,  // y += scale · (Σ_k g_k B_k)(Σ_k g_k A_k) x  (RecLoRA)
};

struct LoraOpArgs {
  int n = 0;    // rows
  int in = 0;   // W's input width
  int out = 0;  // W's output width
  int r = 0;    // rank (columns of xa)
  float scale = 1.0f;
  const float* a = nullptr;  // [r, in]
  const float* b = nullptr;  // [out, r]
  // The mixture form, read by LoraScratchFloats / LoraMixForward /
  // LoraMixBackward (the CPU kernels and their algebra: ops/cpu/lora_mix.h):
  // K experts of rank R = r / K (a = A_cat [K·R, in], b = B_cat [out, K·R],
  // expert k in rows / columns [kR, (k+1)R)); gate [groups, K] weighs rows
  // [g·P, (g+1)·P), P = rows_per_group (null = all ones). K = 1 without a
  // gate is the plain LoRA above, bit for bit.
  int num_experts = 1;
  const float* gate = nullptr;
  int rows_per_group = 1;
  LoraMixing mixing = LoraMixing::kLoraMixingOutputs;
};

// The selected-rows loss head (CPU kernels: ops/cpu/heads.h): over the
// final hidden states h [n, C] and the head weight W [V, C],
//   logits [M, J] = h[rows] · W[cols]ᵀ,  loss = Σ_m CE(logits[m], targets[m])
// with targets in [0, J) or ignore_index; never forms [n, V].
struct SelectedRowsArgs {
  int n = 0;                         // rows of h
  int C = 0;                         // channels
  int V = 0;                         // rows of W
  int num_rows = 0;                  // M
  int num_cols = 0;                  // J
  const int32_t* rows = nullptr;     // [M] in [0, n)
  const int32_t* cols = nullptr;     // [J] in [0, V)
  const int32_t* targets = nullptr;  // [M] in [0, J) or ignore_index
  int ignore_index = -100;
};

// AdamW's per-step scalars (core/optimizer.h gives the formula), precomputed
// on the host so the element loop is pure float arithmetic:
//   m = beta1·m + one_minus_beta1·g;  v = beta2·v + one_minus_beta2·g²
//   p = p·decay − step_size · m / (sqrt(v)·inv_sqrt_bc2 + eps)
struct AdamWStepArgs {
  float decay = 1.0f;
  float beta1 = 0.9f, one_minus_beta1 = 0.1f;
  float beta2 = 0.999f, one_minus_beta2 = 0.001f;
  float step_size = 0.0f;
  float inv_sqrt_bc2 = 1.0f;
  float eps = 1e-8f;
};

class Backend : public BufferAllocator {
 public:
  ~Backend() override = default;

  // Short stable name ("cpu"), the registry key.
  virtual const char* name() const = 0;
  // device() and Alloc/Free (64-byte aligned, zero-filled) come from
  // BufferAllocator: Arenas take their memory from a backend.

  // One line saying which kernels (and instruction sets) this backend chose
  // on this machine; the CPU backend also prints it to stderr once per
  // process, the first time its thread count is set.
  virtual std::string Describe() const { return name(); }

  // Whether `op` runs with operands of these dtypes (order: see BackendOp).
  virtual bool Supports(BackendOp op, std::initializer_list<DType> dtypes) const = 0;

  // Threads used by the backend's kernels; n <= 0 means "all cores".
  // Process-wide on the CPU backend (OpenMP and OpenBLAS pools).
  virtual void SetNumThreads(int n) = 0;
  virtual int NumThreads() const = 0;

  // Sets `bytes` bytes at p (backend memory) to zero.
  virtual void Zero(void* p, int64_t bytes) = 0;

  // ---- GEMM and linear layers --------------------------------------------
  // out[M,N] = alpha · op(a) op(b) + beta · out; op(a) [M,K], op(b) [K,N].
  // trans_a: a is stored [K,M]; trans_b: b is stored [N,K].
  virtual void Matmul(float* out, const float* a, const float* b, int M, int N, int K,
                      bool trans_a, bool trans_b, float alpha, float beta) = 0;
  // Fused projections (several weights that read one input, or several
  // inputs that add into one output) as one GEMM. Every matrix is
  // contiguous, row-major. The defaults run one Matmul per part (the CPU
  // backend runs one GEMM: the shared operand is read once).
  // MatmulSplitN: for each part, part.c[M, size] = alpha · x[M, K] · part.bᵀ
  //   + beta · part.c (part.b stored [size, K]; part.a unused).
  // MatmulSplitK: out[M, N] = alpha · Σ_parts part.a[M, size] · part.b[size, N]
  //   + beta · out (part.c unused); beta = 0 does not read out.
  struct MatmulPart {
    const float* a = nullptr;
    const float* b = nullptr;
    float* c = nullptr;
    int size = 0;
  };
  virtual void MatmulSplitN(std::span<const MatmulPart> parts, const float* x, int M, int K,
                            float alpha, float beta) {
    for (const MatmulPart& p : parts) Matmul(p.c, x, p.b, M, p.size, K, false, true, alpha, beta);
  }
  virtual void MatmulSplitK(float* out, std::span<const MatmulPart> parts, int M, int N,
                            float alpha, float beta) {
    if (parts.empty() && beta == 0.0f) Zero(out, int64_t{M} * N * 4);
    for (size_t i = 0; i < parts.size(); ++i) {
      Matmul(out, parts[i].a, parts[i].b, M, N, parts[i].size, false, false, alpha,
             i == 0 ? beta : 1.0f);
    }
  }
  // y[n, out] = x[n, in] wᵀ + bias[out], w = [out, in] (f32, or bf16 where
  // supported; bias may be null).
  virtual void LinearForward(float* y, const float* x, const Tensor& w, const float* bias,
                             int n) = 0;
  // dx += dy w (dx may be null); dw += dyᵀ x (if dw; w is then f32);
  // dbias += Σ_rows dy (if dbias).
  virtual void LinearBackward(float* dx, float* dw, float* dbias, const float* dy,
                              const float* x, const Tensor& w, int n) = 0;
  // compute: bf16 on the frozen path (ModelOptions::compute): as
  // LinearForward / LinearBackward of a frozen weight (no dw), with the
  // input (x, or dy) and w (f32 or bf16) rounded to bf16 and products
  // accumulated in fp32; dbias sums the unrounded dy. Only where
  // SupportsBf16Compute() (the defaults are the fp32 ops, and a model asking
  // a backend without it for compute bf16 is refused).
  virtual bool SupportsBf16Compute() const { return false; }
  virtual void LinearForwardBf16Compute(float* y, const float* x, const Tensor& w,
                                        const float* bias, int n) {
    LinearForward(y, x, w, bias, n);
  }
  virtual void LinearBackwardBf16Compute(float* dx, float* dbias, const float* dy,
                                         const Tensor& w, int n) {
    LinearBackward(dx, nullptr, dbias, dy, nullptr, w, n);
  }

  // ---- the adapter op ----------------------------------------------------
  // See LoraOpArgs. x is the (possibly dropout-masked) layer input; xa is
  // kept for backward.
  virtual void LoraForward(const LoraOpArgs& args, float* y, float* xa, const float* x) = 0;
  // With g = dy b (scratch_dyb [n, r], overwritten):
  //   dx += scale · g a;  da += scale · gᵀ x;  db += scale · dyᵀ xa.
  // dx/da/db may each be null.
  virtual void LoraBackward(const LoraOpArgs& args, float* dx, float* da, float* db,
                            float* scratch_dyb, const float* dy, const float* x,
                            const float* xa) = 0;
  // The mixture form (all LoraOpArgs fields). Scratch: LoraScratchFloats
  // floats of backend memory, shared by forward and backward (it need not
  // survive between them). Forward adds onto y and writes xa [n, r].
  // Backward ADDS into dx, da, db and dgate [groups, K] (each may be null).
  virtual int64_t LoraScratchFloats(const LoraOpArgs& args) const = 0;
  virtual void LoraMixForward(const LoraOpArgs& args, float* y, float* xa, float* scratch,
                              const float* x) = 0;
  virtual void LoraMixBackward(const LoraOpArgs& args, float* dx, float* da, float* db,
                               float* dgate, float* scratch, const float* dy, const float* x,
                               const float* xa) = 0;

  // ---- attention ---------------------------------------------------------
  // Causal grouped-query attention: q [B,T,NH·HD], k and v [B,T,KVH·HD],
  // query head h reads kv head h / (NH/KVH);
  // out [B,T,NH·HD] = softmax(q kᵀ / sqrt(HD) + causal mask) v.
  // What forward keeps for backward is the backend's business: the caller
  // provides AttentionSavedBytes(...) bytes of backend memory and passes the
  // same block to backward untouched.
  virtual int64_t AttentionSavedBytes(int B, int T, int NH, int KVH, int HD) const = 0;
  virtual void AttentionForward(float* out, void* saved, const float* q, const float* k,
                                const float* v, int B, int T, int NH, int KVH, int HD) = 0;
  virtual void AttentionBackward(float* dq, float* dk, float* dv, const float* dout,
                                 const float* q, const float* k, const float* v,
                                 const void* saved, int B, int T, int NH, int KVH,
                                 int HD) = 0;

  // ---- norms, positions, activations, embeddings -------------------------
  // RMSNorm (Llama): rstd = 1/sqrt(mean(x²) + eps); out = x · rstd · w.
  virtual void RmsNormForward(float* out, float* rstd, const float* x, const float* w, int n,
                              int C, float eps) = 0;
  virtual void RmsNormBackward(float* dx, float* dw, const float* dout, const float* x,
                               const float* w, const float* rstd, int n, int C) = 0;
  // Rotary embedding, Hugging Face rotate_half layout; tables [T, HD/2].
  // x is [B,T,H·HD]; out may alias x.
  virtual void RopeTables(float* cos, float* sin, int T, int HD, float theta) = 0;
  virtual void RopeForward(float* out, const float* x, const float* cos, const float* sin,
                           int B, int T, int H, int HD) = 0;
  virtual void RopeBackward(float* dx, const float* dout, const float* cos, const float* sin,
                            int B, int T, int H, int HD) = 0;
  // h = silu(gate) · up over n values.
  virtual void SwiGluForward(float* h, const float* gate, const float* up, int64_t n) = 0;
  virtual void SwiGluBackward(float* dgate, float* dup, const float* dh, const float* gate,
                              const float* up, int64_t n) = 0;
  // out[n, C] = wte[tokens[n], :] (wte [V, C], f32 or bf16 where supported;
  // tokens in [0, V), checked by callers).
  virtual void EmbeddingForward(float* out, const int32_t* tokens, const Tensor& wte,
                                int n) = 0;
  // dwte[tokens[n], :] += dout[n, :].
  virtual void EmbeddingBackward(float* dwte, const float* dout, const int32_t* tokens, int n,
                                 int C) = 0;

  // ---- loss heads --------------------------------------------------------
  // Language-model softmax cross-entropy over logits [N, V]; rows whose
  // target == ignore_index are skipped. Adds the summed loss to *loss_sum and
  // the valid count to *n_valid (summed in row order). When dlogits is
  // non-null it is OVERWRITTEN with grad_scale · (softmax − onehot) on valid
  // rows and 0 on ignored rows.
  virtual void CrossEntropy(float* dlogits, double* loss_sum, int64_t* n_valid,
                            const float* logits, const int32_t* targets, int N, int V,
                            int ignore_index, float grad_scale) = 0;
  // The selected-rows head (SelectedRowsArgs); w is f32 or a frozen bf16.
  // Forward OVERWRITES logits [M, J] (and dlogits, when non-null, as
  // CrossEntropy does) and adds to *loss_sum / *n_valid. Backward ADDS
  // dlogits·W[cols] into the selected rows of dh and, when dw is non-null
  // (w is then f32), dlogitsᵀ·h[rows] into the selected rows of dw.
  virtual int64_t SelectedRowsHeadScratchFloats(const SelectedRowsArgs& args) const = 0;
  virtual void SelectedRowsHeadForward(const SelectedRowsArgs& args, float* logits,
                                       float* dlogits, double* loss_sum, int64_t* n_valid,
                                       float* scratch, const float* h, const Tensor& w,
                                       float grad_scale) = 0;
  virtual void SelectedRowsHeadBackward(const SelectedRowsArgs& args, float* dh, float* dw,
                                        float* scratch, const float* dlogits, const float* h,
                                        const Tensor& w) = 0;
  // Row gathers for adapters on the selected rows and columns of lm_head:
  // out[m, :] = src[idx[m], :] and dst[idx[m], :] += src[m, :] over C
  // columns (repeated indices add in m order).
  virtual void GatherRows(float* out, const float* src, const int32_t* idx, int M, int C) = 0;
  virtual void ScatterAddRows(float* dst, const float* src, const int32_t* idx, int M,
                              int C) = 0;

  // ---- elementwise over n values (out may alias an input) -----------------
  virtual void Add(float* out, const float* a, const float* b, int64_t n) = 0;  // a + b
  virtual void Mul(float* out, const float* a, const float* b, int64_t n) = 0;  // a · b
  virtual void MulAdd(float* out, const float* a, const float* b, int64_t n) = 0;  // out += a · b
  virtual void Scale(float* x, float scale, int64_t n) = 0;                      // x *= scale

  // ---- dropout -----------------------------------------------------------
  // Inverted-dropout mask of n values: element i is 0 with probability p and
  // 1/(1−p) otherwise, drawn from a counter-based stream keyed by
  // (seed, stream, first_index + i) alone, so a mask is identical on resume,
  // on any thread count and when the rows are split across ranks:
  //   base = SplitMix64(seed ^ SplitMix64(stream + 1))
  //   u    = (SplitMix64(base + first_index + i) >> 40) / 2²⁴
  //   mask = u < p ? 0 : 1/(1−p)
  virtual void DropoutMask(float* mask, int64_t n, int64_t first_index, float p, uint64_t seed,
                           int stream) = 0;

  // ---- optimizer ---------------------------------------------------------
  // One AdamW update of n independent elements (see AdamWStepArgs).
  virtual void AdamWStep(const AdamWStepArgs& args, float* p, const float* g, float* m,
                         float* v, int64_t n) = 0;
  // partial[c] = Σ x² over chunks[c], accumulated in double in an order
  // fixed by the chunk alone (the caller fixes the chunking and adds the
  // partials in order, so the total does not depend on the thread count).
  virtual void SumSquares(std::span<const std::span<const float>> chunks, double* partial) = 0;
};

// Adds a backend to the process-wide registry (normally from a static
// initialiser in the backend's library). A second backend with the same
// name() is a programmer error.
void RegisterBackend(std::unique_ptr<Backend> backend);
// The backend named `name`, or null.
Backend* FindBackend(std::string_view name);
// Every registered backend, "cpu" first, then in registration order.
std::vector<Backend*> RegisteredBackends();
// "cpu" when registered, else the first registered backend, else null (a
// binary that links no backend library).
Backend* DefaultBackend();

}  // namespace sheaf

#endif  // SHEAF_CORE_BACKEND_H_
