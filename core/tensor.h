// Tensors are named views into arenas. Each category of memory (frozen
// weights, trainable params, their grads, optimizer state, activations) is ONE
// allocation planned up front, as llm.c does: zeroing all grads is one memset,
// a checkpoint of the params is one contiguous write, and nothing allocates in
// the training loop.
//
// Every tensor and arena carries an element type and a device (core/dtype.h).
// The default is f32 on the CPU, which is what everything but frozen weights
// uses; frozen weights may also be bf16 or NF4 (ModelOptions::frozen_dtype).
//
// Lifecycle: an Arena is planned (Add returns a handle), then Allocate()d once
// from its BufferAllocator (a Backend, core/backend.h, or plain host memory);
// views are resolved after allocation. Not thread-safe while planning; the
// memory itself is shared read-only or by disjoint ranges.
#ifndef SHEAF_CORE_TENSOR_H_
#define SHEAF_CORE_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace sheaf {

// A non-owning view with a shape, an element type and a device. An empty
// Tensor (data == nullptr) stands for "absent" (e.g. the grad of a frozen
// weight).
//
// `data` is the fp32 accessor and the storage pointer at once: it may be
// dereferenced as floats only when dtype is f32 (the case almost all code
// deals with, hence the field keeps its type); for other dtypes use raw()
// and nbytes(). f32() checks the dtype.
struct Tensor {
  float* data = nullptr;
  std::vector<int64_t> shape;
  DType dtype = DType::kDTypeF32;
  Device device = Device::kDeviceCpu;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return data || !shape.empty() ? n : 0;
  }
  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
  int ndim() const { return static_cast<int>(shape.size()); }
  explicit operator bool() const { return data != nullptr; }
  std::string ShapeString() const;
  // Storage bytes of numel() elements of dtype (NF4: whole blocks + scales).
  int64_t nbytes() const { return DTypeBytes(dtype, numel()); }
  void* raw() const { return data; }
  // data, after checking (CHECK-style abort) that dtype is f32.
  float* f32() const;
};

// Where an arena's memory comes from. A Backend (core/backend.h) is one;
// HostAllocator() serves arenas that no backend was given.
class BufferAllocator {
 public:
  virtual ~BufferAllocator() = default;
  virtual Device device() const = 0;
  // 64-byte aligned, zero-filled, at least `bytes` (> 0) bytes; never null
  // (throws std::bad_alloc).
  virtual void* Alloc(int64_t bytes) = 0;
  virtual void Free(void* p) = 0;
};
// Plain aligned host memory (device cpu).
BufferAllocator* HostAllocator();

enum class ArenaKind {
  kArenaFrozen,       // frozen base weights: never a gradient
  kArenaParams,       // trainable parameters (adapter, or all weights)
  kArenaGrads,        // gradients of kArenaParams, same layout
  kArenaOptimizer,    // optimizer moments
  kArenaActivations,  // forward activations kept for backward, and scratch
};
const char* ArenaKindName(ArenaKind kind);

// Frees an arena's block through the allocator that made it.
struct ArenaDeleter {
  BufferAllocator* allocator = nullptr;
  void operator()(void* p) const { allocator->Free(p); }
};

// One 64-byte-aligned allocation with named slots. Slots have the arena's
// dtype unless Add() is given another one.
class Arena {
 public:
  explicit Arena(ArenaKind kind, DType dtype = DType::kDTypeF32) : kind_(kind), dtype_(dtype) {}
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Where Allocate() takes the memory from (null = HostAllocator()). Set it
  // before Allocate(); the allocator must outlive the arena's memory.
  void set_allocator(BufferAllocator* allocator);
  // Plans a slot; returns its index. Each slot starts 64-byte aligned.
  int Add(std::string name, std::vector<int64_t> shape);
  int Add(std::string name, std::vector<int64_t> shape, DType dtype);
  // Allocates (zero-filled) the planned slots. Calling again after more Add()s
  // reallocates and invalidates earlier views.
  void Allocate();
  Tensor view(int slot) const;
  const std::string& name(int slot) const { return slots_[slot].name; }
  int num_slots() const { return static_cast<int>(slots_.size()); }
  // The whole block, for one-memset zeroing and one-write checkpoints.
  // data() is the fp32 view (see Tensor::data); raw() the bytes.
  float* data() const { return static_cast<float*>(data_.get()); }
  void* raw() const { return data_.get(); }
  // size() counts 4-byte words including padding: the float count of an f32
  // arena (what the optimizer and checkpoints see).
  int64_t size() const { return total_bytes_ / 4; }
  int64_t bytes() const { return total_bytes_; }
  void Zero();
  // Forgets all slots and frees the memory (to plan again).
  void Reset();
  ArenaKind kind() const { return kind_; }
  DType dtype() const { return dtype_; }
  Device device() const { return allocator()->device(); }

 private:
  struct Slot {
    std::string name;
    std::vector<int64_t> shape;
    DType dtype;
    int64_t offset;  // in bytes
  };
  BufferAllocator* allocator() const { return allocator_ ? allocator_ : HostAllocator(); }

  ArenaKind kind_;
  DType dtype_;
  BufferAllocator* allocator_ = nullptr;
  std::vector<Slot> slots_;
  int64_t total_bytes_ = 0;
  std::unique_ptr<void, ArenaDeleter> data_;
};

}  // namespace sheaf

#endif  // SHEAF_CORE_TENSOR_H_
