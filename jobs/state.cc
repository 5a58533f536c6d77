#include "jobs/state.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace sheaf::jobs {

void CheckpointState::AddEntry(std::string name, Saver save, Restorer restore, bool optional) {
  entries_.push_back({std::move(name), std::move(save), std::move(restore), optional});
}

void CheckpointState::AddTensor(std::string name, std::span<float> values, bool optional) {
  const std::string n = name;
  AddEntry(
      std::move(name),
      [n, values](CheckpointWriter& w) {
        return w.AddTensor(n, {static_cast<int64_t>(values.size())}, values.data());
      },
      [n, values](const Checkpoint& c) -> absl::Status {
        ASSIGN_OR_RETURN(std::span<const float> saved,
                         c.Tensor(n, {static_cast<int64_t>(values.size())}));
        std::copy(saved.begin(), saved.end(), values.begin());
        return absl::OkStatus();
      },
      optional);
}

void CheckpointState::AddBytes(std::string name, std::function<std::string()> save,
                               std::function<absl::Status(std::string_view)> restore,
                               bool optional) {
  const std::string n = name;
  AddEntry(
      std::move(name), [n, save](CheckpointWriter& w) { return w.AddBytes(n, save()); },
      [n, restore](const Checkpoint& c) -> absl::Status {
        if (!restore) return absl::OkStatus();
        ASSIGN_OR_RETURN(std::string_view bytes, c.Bytes(n));
        return restore(bytes);
      },
      optional);
}

void CheckpointState::AddInt(std::string name, int64_t* value, bool optional) {
  const std::string n = name;
  AddBytes(
      std::move(name),
      [value] { return std::string(reinterpret_cast<const char*>(value), sizeof(*value)); },
      [n, value](std::string_view bytes) -> absl::Status {
        if (bytes.size() != sizeof(*value)) {
          return absl::DataLossError(absl::StrCat("checkpoint entry ", n, ": ", bytes.size(),
                                                  " bytes, expected ", sizeof(*value)));
        }
        std::memcpy(value, bytes.data(), sizeof(*value));
        return absl::OkStatus();
      },
      optional);
}

void CheckpointState::AddCursor(std::string name, const Dataset* data, DataCursor* cursor,
                                bool optional) {
  AddBytes(
      std::move(name), [data, cursor] { return data->EncodeCursor(*cursor); },
      [data, cursor](std::string_view bytes) -> absl::Status {
        ASSIGN_OR_RETURN(*cursor, data->DecodeCursor(bytes));
        return absl::OkStatus();
      },
      optional);
}

void CheckpointState::AddStepAndOptimizer(std::string step_name, int64_t* step, std::string name,
                                          AdamW* optimizer) {
  // One entry, so that the three are written in the order lora/pretrain
  // checkpoints have always had (moments, step, layout) and the step count is
  // read before the moments are restored with it.
  const std::string n = name, layout = name + "_layout";
  AddEntry(
      std::move(name),
      [n, layout, step_name, step, optimizer](CheckpointWriter& w) -> absl::Status {
        RETURN_IF_ERROR(w.AddTensor(n, {static_cast<int64_t>(optimizer->state().size())},
                                    optimizer->state().data()));
        const int64_t meta[2] = {*step, optimizer->step_count()};
        RETURN_IF_ERROR(w.AddBytes(
            step_name, std::string_view(reinterpret_cast<const char*>(meta), sizeof(meta))));
        return w.AddBytes(layout, optimizer->StateLayout());
      },
      [n, layout, step_name, step, optimizer](const Checkpoint& c) -> absl::Status {
        ASSIGN_OR_RETURN(std::span<const float> moments,
                         c.Tensor(n, {static_cast<int64_t>(optimizer->state().size())}));
        ASSIGN_OR_RETURN(std::string_view bytes, c.Bytes(step_name));
        if (bytes.size() != 2 * sizeof(int64_t)) {
          return absl::DataLossError(absl::StrCat(c.path(), ": malformed ", step_name, " entry"));
        }
        int64_t meta[2];
        std::memcpy(meta, bytes.data(), sizeof(meta));
        ASSIGN_OR_RETURN(std::string_view saved_layout, c.Bytes(layout));
        if (saved_layout != optimizer->StateLayout()) {
          return absl::FailedPreconditionError(absl::StrCat(
              c.path(), ": the checkpoint's parameters differ from this job's (was the spec "
              "changed?)"));
        }
        RETURN_IF_ERROR(optimizer->Restore(meta[1], moments));
        *step = meta[0];
        return absl::OkStatus();
      });
}

std::vector<std::string> CheckpointState::Names() const {
  std::vector<std::string> names;
  for (const Entry& e : entries_) names.push_back(e.name);
  return names;
}

absl::Status CheckpointState::Save(CheckpointWriter& writer) const {
  for (const Entry& e : entries_) RETURN_IF_ERROR(e.save(writer));
  return absl::OkStatus();
}

absl::Status CheckpointState::Restore(const Checkpoint& c) const {
  for (const Entry& e : entries_) {
    if (!c.Has(e.name)) {
      if (e.optional) continue;
      return absl::NotFoundError(
          absl::StrCat(c.path(), ": no entry \"", e.name, "\" (written by another kind of run?)"));
    }
    RETURN_IF_ERROR(e.restore(c));
  }
  return absl::OkStatus();
}

}  // namespace sheaf::jobs
