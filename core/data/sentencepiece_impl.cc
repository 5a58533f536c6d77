// No Abseil header may be included here (see sentencepiece_impl.h).
#include "core/data/sentencepiece_impl.h"

#include <sentencepiece_processor.h>

namespace sheaf::spm {
namespace {

class Impl final : public Processor {
 public:
  sentencepiece::SentencePieceProcessor sp;
  std::vector<int> Encode(std::string_view text) const override { return sp.EncodeAsIds(text); }
  std::string Decode(const std::vector<int>& ids) const override { return sp.DecodeIds(ids); }
  int PieceSize() const override { return sp.GetPieceSize(); }
  int BosId() const override { return sp.bos_id(); }
  int EosId() const override { return sp.eos_id(); }
  int PadId() const override { return sp.pad_id(); }
};

}  // namespace

std::unique_ptr<Processor> Processor::Load(const std::string& path, std::string* error) {
  auto p = std::make_unique<Impl>();
  const sentencepiece::util::Status st = p->sp.Load(path);
  if (!st.ok()) {
    *error = st.ToString();
    return nullptr;
  }
  return p;
}

}  // namespace sheaf::spm
