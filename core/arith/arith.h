// Model arithmetic over model directories and adapters, streaming tensor by
// tensor:
//
//   OUT = BASE + Σ_i λ_i · (MODEL_i − REF_i)     (task vectors)
//              + Σ_j λ_j · ΔW_j                  (adapters: ΔW = s · B·A)
//
// BASE, MODEL_i and REF_i are Hugging Face model dirs (config.json +
// model.safetensors or a sharded index) or single .safetensors files;
// ADAPTER_j is a PEFT adapter dir (read with BASE's config.json). Every
// tensor of BASE is read (in any float dtype: F32, BF16, F16, F64) into
// fp32, the terms are added in the order given, and the result is written
// in BASE's dtype for that tensor; only one tensor of each input is in
// memory at a time (plus the adapters, which are small). Non-float tensors
// are copied from BASE unchanged.
//
// Exactness: a model term adds fp32 λ·(m − r) element by element, so λ = 0
// returns BASE bit for bit; an adapter term is W += λ·s·B·A computed by the
// backend's Matmul exactly as Model::ApplyAdapter computes it, so one
// adapter with λ = 1 on an f32 base reproduces `sheaf merge` bit for bit.
//
// Errors name the input and the tensor: a tensor of BASE missing in a term
// (NotFound), a shape that differs (InvalidArgument, both shapes), a tensor
// of a term that BASE lacks (InvalidArgument: it would be silently
// dropped), an adapter whose module does not fit BASE. The output is
// written atomically (OUT/model.safetensors via a temporary file), with
// BASE's config.json copied beside it.
#ifndef SHEAF_CORE_ARITH_ARITH_H_
#define SHEAF_CORE_ARITH_ARITH_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace sheaf {

struct ArithTerm {
  enum class Kind { kArithTermModel, kArithTermAdapter };
  Kind kind = Kind::kArithTermModel;
  double lambda = 1.0;
  std::string path;  // model dir / .safetensors, or adapter dir
  std::string ref;   // model terms: the reference (empty: BASE)
};

struct ArithStats {
  int64_t tensors = 0;
  int64_t elements = 0;
  int64_t adapted_modules = 0;  // adapter modules applied (over all adapter terms)
};

// Writes OUT from BASE and the terms (see above). `out_dir` is created; its
// model.safetensors and config.json are replaced.
absl::Status ModelArithmetic(const std::string& base, const std::vector<ArithTerm>& terms,
                             const std::string& out_dir, ArithStats* stats = nullptr);

}  // namespace sheaf

#endif  // SHEAF_CORE_ARITH_ARITH_H_
