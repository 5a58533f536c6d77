// Checkpointing with named state entries.
//
// A recipe registers what its checkpoints hold, entry by entry, each under a
// name: trainable tensors (any number of adapters, the model's trainable
// weights, extra tensors outside the model), optimizer moments, integers
// (the step, a phase index, counters), data cursors (any number) and raw
// bytes (the spec). Save writes every entry; Restore reads every entry back
// by name, checking sizes. An entry registered as optional may be absent
// from a checkpoint (it keeps its current value), so a checkpoint written
// before an entry existed still resumes.
//
// The lora/pretrain layout (format of every checkpoint written so far):
//   trainable        f32 [n]   the adapter's or the model's trainable arena
//   optimizer        f32 [2n]  AdamW moments (m then v)
//   step             bytes     int64 {step, optimizer step count}
//   optimizer_layout bytes     AdamW::StateLayout(), checked on restore
//   cursor           bytes     Dataset::EncodeCursor
//   spec             bytes     the resolved job spec (YAML)
// AddStepAndOptimizer and AddTensor/AddCursor/AddBytes with those names
// reproduce it byte for byte.
//
// Registered pointers must outlive the CheckpointState. Not thread-safe.
#ifndef SHEAF_JOBS_STATE_H_
#define SHEAF_JOBS_STATE_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "core/checkpoint.h"
#include "core/data/dataset.h"
#include "core/optimizer.h"

namespace sheaf::jobs {

class CheckpointState {
 public:
  using Saver = std::function<absl::Status(CheckpointWriter&)>;
  using Restorer = std::function<absl::Status(const Checkpoint&)>;

  // A float tensor saved as f32 [values.size()] and restored in place.
  void AddTensor(std::string name, std::span<float> values, bool optional = false);
  // An integer (saved as 8 bytes).
  void AddInt(std::string name, int64_t* value, bool optional = false);
  // A data cursor of `data` (Dataset::EncodeCursor; a cursor of another
  // dataset is refused on restore).
  void AddCursor(std::string name, const Dataset* data, DataCursor* cursor, bool optional = false);
  // Raw bytes; `restore` may be null (saved for reading elsewhere, e.g. the
  // spec a resume compares).
  void AddBytes(std::string name, std::function<std::string()> save,
                std::function<absl::Status(std::string_view)> restore, bool optional = false);
  // The optimizer's moments as `name` (f32) and its parameter layout as
  // `name`_layout, and the entry `step_name` holding int64 {*step, the
  // optimizer's step count}: the layout lora/pretrain checkpoints have.
  void AddStepAndOptimizer(std::string step_name, int64_t* step, std::string name, AdamW* optimizer);
  // Anything else.
  void AddEntry(std::string name, Saver save, Restorer restore, bool optional = false);

  std::vector<std::string> Names() const;
  absl::Status Save(CheckpointWriter& writer) const;
  // Restores every entry in registration order. NotFound naming the entry
  // and the file for a required entry the checkpoint lacks; the entry's own
  // error (a size mismatch names both sizes) otherwise.
  absl::Status Restore(const Checkpoint& checkpoint) const;

 private:
  struct Entry {
    std::string name;
    Saver save;
    Restorer restore;
    bool optional;
  };
  std::vector<Entry> entries_;
};

}  // namespace sheaf::jobs

#endif  // SHEAF_JOBS_STATE_H_
