// A thin wall around libsentencepiece: its header defines
// absl::string_view as std::string_view, which clashes with Debian's
// Abseil (built as C++14, where absl::string_view is its own class). Only
// sentencepiece_impl.cc includes it, and it includes no Abseil header;
// everything here is std types.
#ifndef SHEAF_CORE_DATA_SENTENCEPIECE_IMPL_H_
#define SHEAF_CORE_DATA_SENTENCEPIECE_IMPL_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sheaf::spm {

class Processor {
 public:
  // nullptr and *error set when the model cannot be loaded.
  static std::unique_ptr<Processor> Load(const std::string& path, std::string* error);
  virtual ~Processor() = default;
  virtual std::vector<int> Encode(std::string_view text) const = 0;
  virtual std::string Decode(const std::vector<int>& ids) const = 0;
  virtual int PieceSize() const = 0;
  virtual int BosId() const = 0;  // -1 when the model has none
  virtual int EosId() const = 0;
  virtual int PadId() const = 0;
};

}  // namespace sheaf::spm

#endif  // SHEAF_CORE_DATA_SENTENCEPIECE_IMPL_H_
