#include "core/tensor.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "absl/strings/str_join.h"

namespace sheaf {
namespace {

class HostBufferAllocator final : public BufferAllocator {
 public:
  Device device() const override { return Device::kDeviceCpu; }
  void* Alloc(int64_t bytes) override {
    size_t n = (static_cast<size_t>(bytes) + 63) / 64 * 64;
    if (n == 0) n = 64;
    void* p = std::aligned_alloc(64, n);
    if (p == nullptr) throw std::bad_alloc();
    std::memset(p, 0, n);
    return p;
  }
  void Free(void* p) override { std::free(p); }
};

}  // namespace

BufferAllocator* HostAllocator() {
  static HostBufferAllocator* const allocator = new HostBufferAllocator;
  return allocator;
}

std::string Tensor::ShapeString() const {
  return "[" + absl::StrJoin(shape, ", ") + "]";
}

float* Tensor::f32() const {
  if (dtype != DType::kDTypeF32) {
    std::fprintf(stderr, "Tensor::f32() on a %s tensor %s\n", DTypeName(dtype),
                 ShapeString().c_str());
    std::abort();
  }
  return data;
}

const char* ArenaKindName(ArenaKind kind) {
  switch (kind) {
    case ArenaKind::kArenaFrozen: return "frozen";
    case ArenaKind::kArenaParams: return "params";
    case ArenaKind::kArenaGrads: return "grads";
    case ArenaKind::kArenaOptimizer: return "optimizer";
    case ArenaKind::kArenaActivations: return "activations";
  }
  return "?";
}

void Arena::set_allocator(BufferAllocator* allocator) {
  if (data_ && allocator != allocator_) data_.reset();
  allocator_ = allocator;
}

int Arena::Add(std::string name, std::vector<int64_t> shape) {
  return Add(std::move(name), std::move(shape), dtype_);
}

int Arena::Add(std::string name, std::vector<int64_t> shape, DType dtype) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  constexpr int64_t kAlignBytes = 64;
  const int64_t offset = (total_bytes_ + kAlignBytes - 1) / kAlignBytes * kAlignBytes;
  slots_.push_back({std::move(name), std::move(shape), dtype, offset});
  total_bytes_ = offset + DTypeBytes(dtype, n);
  return static_cast<int>(slots_.size()) - 1;
}

void Arena::Allocate() {
  data_.reset();
  BufferAllocator* a = allocator();
  data_ = std::unique_ptr<void, ArenaDeleter>(a->Alloc(total_bytes_), ArenaDeleter{a});
}

Tensor Arena::view(int slot) const {
  const Slot& s = slots_[static_cast<size_t>(slot)];
  float* p = data_ ? reinterpret_cast<float*>(static_cast<char*>(data_.get()) + s.offset)
                   : nullptr;
  return Tensor{p, s.shape, s.dtype, device()};
}

void Arena::Reset() {
  slots_.clear();
  total_bytes_ = 0;
  data_.reset();
}

void Arena::Zero() {
  // Host memory only: device arenas are zeroed through their Backend.
  if (data_ && device() == Device::kDeviceCpu) {
    std::memset(data_.get(), 0, static_cast<size_t>(bytes()));
  }
}

}  // namespace sheaf
