// Tensors are named views into arenas. Each category of memory (frozen
// weights, trainable params, their grads, optimizer state, activations) is ONE
// allocation planned up front, as llm.c does: zeroing all grads is one memset,
// a checkpoint of the params is one contiguous write, and nothing allocates in
// the training loop.
//
// Lifecycle: an Arena is planned (Add returns a handle), then Allocate()d once;
// views are resolved after allocation. Not thread-safe while planning; the
// memory itself is plain floats that kernels share read-only or by disjoint
// ranges.
#ifndef SHEAF_CORE_TENSOR_H_
#define SHEAF_CORE_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace sheaf {

// A non-owning fp32 view with a shape. An empty Tensor (data == nullptr)
// stands for "absent" (e.g. the grad of a frozen weight).
struct Tensor {
  float* data = nullptr;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return data || !shape.empty() ? n : 0;
  }
  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
  int ndim() const { return static_cast<int>(shape.size()); }
  explicit operator bool() const { return data != nullptr; }
  std::string ShapeString() const;
};

enum class ArenaKind {
  kArenaFrozen,       // frozen base weights: never a gradient
  kArenaParams,       // trainable parameters (adapter, or all weights)
  kArenaGrads,        // gradients of kArenaParams, same layout
  kArenaOptimizer,    // optimizer moments
  kArenaActivations,  // forward activations kept for backward, and scratch
};
const char* ArenaKindName(ArenaKind kind);

// One 64-byte-aligned allocation with named slots.
class Arena {
 public:
  explicit Arena(ArenaKind kind) : kind_(kind) {}
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Plans a slot; returns its index. Each slot starts 64-byte aligned.
  int Add(std::string name, std::vector<int64_t> shape);
  // Allocates (zero-filled) the planned slots. Calling again after more Add()s
  // reallocates and invalidates earlier views.
  void Allocate();
  Tensor view(int slot) const;
  const std::string& name(int slot) const { return slots_[slot].name; }
  int num_slots() const { return static_cast<int>(slots_.size()); }
  // The whole block, for one-memset zeroing and one-write checkpoints.
  float* data() const { return data_.get(); }
  int64_t size() const { return total_; }  // floats, including padding
  int64_t bytes() const { return total_ * static_cast<int64_t>(sizeof(float)); }
  void Zero();
  // Forgets all slots and frees the memory (to plan again).
  void Reset();
  ArenaKind kind() const { return kind_; }

 private:
  struct Slot {
    std::string name;
    std::vector<int64_t> shape;
    int64_t offset;  // in floats
  };
  struct FreeDeleter {
    void operator()(float* p) const;
  };
  ArenaKind kind_;
  std::vector<Slot> slots_;
  int64_t total_ = 0;
  std::unique_ptr<float[], FreeDeleter> data_;
};

}  // namespace sheaf

#endif  // SHEAF_CORE_TENSOR_H_
