#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "absl/strings/str_join.h"

namespace sheaf {

std::string Tensor::ShapeString() const {
  return "[" + absl::StrJoin(shape, ", ") + "]";
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

int Arena::Add(std::string name, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  constexpr int64_t kAlignFloats = 16;  // 64 bytes
  int64_t offset = (total_ + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
  slots_.push_back({std::move(name), std::move(shape), offset});
  total_ = offset + n;
  return static_cast<int>(slots_.size()) - 1;
}

void Arena::FreeDeleter::operator()(float* p) const { std::free(p); }

void Arena::Allocate() {
  size_t bytes = static_cast<size_t>(total_) * sizeof(float);
  bytes = (bytes + 63) / 64 * 64;
  if (bytes == 0) bytes = 64;
  void* p = std::aligned_alloc(64, bytes);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  data_.reset(static_cast<float*>(p));
}

Tensor Arena::view(int slot) const {
  const Slot& s = slots_[static_cast<size_t>(slot)];
  return Tensor{data_.get() + s.offset, s.shape};
}

void Arena::Reset() {
  slots_.clear();
  total_ = 0;
  data_.reset();
}

void Arena::Zero() {
  if (data_) std::memset(data_.get(), 0, static_cast<size_t>(bytes()));
}

}  // namespace sheaf
