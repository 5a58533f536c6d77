// Fuzz target: the RecBole atomic-file reader (core/crm ReadAtomicDataset).
//
// The input is the .inter file, a line "@@@@", the .user file, a line
// "@@@@", the .item file (a missing part: no such file). An accepted dataset
// must be consistent: every interaction's user and item index inside the id
// lists, every feature column with one value list per entity.
#include <cstdint>
#include <cstdlib>

#include "core/crm/atomic.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = sheaf::fuzz::SplitParts(sheaf::fuzz::AsView(data, size), 3);
  sheaf::fuzz::WriteScratch("ml.inter", parts[0]);
  const char* names[] = {"ml.user", "ml.item"};
  for (size_t i = 0; i < 2; ++i) {
    if (parts.size() > i + 1) {
      sheaf::fuzz::WriteScratch(names[i], parts[i + 1]);
    } else {
      sheaf::fuzz::RemoveScratch(names[i]);
    }
  }
  auto ds = sheaf::crm::ReadAtomicDataset(sheaf::fuzz::ScratchDir(), "ml");
  if (!ds.ok()) {
    sheaf::fuzz::Note(ds.status());
    return 0;
  }
  const int64_t users = static_cast<int64_t>(ds->user_ids.size());
  const int64_t items = static_cast<int64_t>(ds->item_ids.size());
  for (const auto& it : ds->interactions) {
    if (it.user < 0 || it.user >= users || it.item < 0 || it.item >= items) abort();
  }
  for (const auto* cols : {&ds->user_features, &ds->item_features}) {
    const int64_t n = cols == &ds->user_features ? users : items;
    for (const auto& c : *cols) {
      if (static_cast<int64_t>(c.values.size()) != n) abort();
      for (const auto& v : c.values) {
        for (int32_t id : v) {
          if (id < 0 || id >= static_cast<int64_t>(c.vocab.size())) abort();
        }
      }
    }
  }
  return 0;
}
