#include "core/backend.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace sheaf {
namespace {

struct Registry {
  absl::Mutex mu;
  std::vector<std::unique_ptr<Backend>> backends ABSL_GUARDED_BY(mu);
};

// Function-local so that registration from other translation units' static
// initialisers never sees an unconstructed registry.
Registry& GetRegistry() {
  static Registry* const registry = new Registry;
  return *registry;
}

}  // namespace

const char* BackendOpName(BackendOp op) {
  switch (op) {
    case BackendOp::kBackendOpMatmul: return "matmul";
    case BackendOp::kBackendOpLinear: return "linear";
    case BackendOp::kBackendOpLora: return "lora";
    case BackendOp::kBackendOpAttention: return "attention";
    case BackendOp::kBackendOpRmsNorm: return "rmsnorm";
    case BackendOp::kBackendOpRope: return "rope";
    case BackendOp::kBackendOpSwiGlu: return "swiglu";
    case BackendOp::kBackendOpEmbedding: return "embedding";
    case BackendOp::kBackendOpCrossEntropy: return "cross_entropy";
    case BackendOp::kBackendOpElementwise: return "elementwise";
    case BackendOp::kBackendOpDropoutMask: return "dropout_mask";
    case BackendOp::kBackendOpAdamW: return "adamw";
    case BackendOp::kBackendOpSumSquares: return "sum_squares";
  }
  return "?";
}

void RegisterBackend(std::unique_ptr<Backend> backend) {
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  for (const auto& b : r.backends) {
    if (std::strcmp(b->name(), backend->name()) == 0) {
      std::fprintf(stderr, "backend '%s' registered twice\n", backend->name());
      std::abort();
    }
  }
  r.backends.push_back(std::move(backend));
}

Backend* FindBackend(std::string_view name) {
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  for (const auto& b : r.backends) {
    if (name == b->name()) return b.get();
  }
  return nullptr;
}

std::vector<Backend*> RegisteredBackends() {
  std::vector<Backend*> out;
  if (Backend* cpu = FindBackend("cpu")) out.push_back(cpu);
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  for (const auto& b : r.backends) {
    if (std::strcmp(b->name(), "cpu") != 0) out.push_back(b.get());
  }
  return out;
}

Backend* DefaultBackend() {
  if (Backend* cpu = FindBackend("cpu")) return cpu;
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  return r.backends.empty() ? nullptr : r.backends.front().get();
}

}  // namespace sheaf
