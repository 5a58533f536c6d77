// Named checkpoint state: every kind of entry round-trips by name, optional
// entries may be missing (older checkpoints), required ones name themselves
// when missing, sizes are checked, and a checkpoint in the layout every
// lora/pretrain run has written so far (built here by hand, entry by entry,
// as the trainer wrote it) restores.
#include "jobs/state.h"

#include <cstring>
#include <filesystem>

#include "gtest/gtest.h"
#include "jobs/test_support.h"

namespace sheaf::jobs {
namespace {

std::string Dir() {
  const std::string d = ::testing::TempDir() + "/state_test";
  std::filesystem::create_directories(d);
  return d;
}

absl::StatusOr<AdamW> Optimizer(std::vector<float>& w, std::vector<float>& g) {
  return AdamW::Create({{"w", w.data(), g.data(), static_cast<int64_t>(w.size()), true}}, AdamWOptions{});
}

TEST(CheckpointState, EveryEntryRoundTripsByName) {
  auto data = testing::TinyDataset(16, 4), other = testing::TinyDataset(16, 9);
  std::vector<float> adapter_x = {1, 2, 3}, adapter_y = {4, 5}, gate = {0.5f};
  int64_t phase = 2;
  DataCursor c1 = data->CursorAtSample(7), c2 = other->CursorAtSample(3);
  std::string note = "hello";
  CheckpointState state;
  state.AddTensor("adapter.x", std::span<float>(adapter_x));
  state.AddTensor("adapter.y", std::span<float>(adapter_y));
  state.AddTensor("extra.gate", std::span<float>(gate));
  state.AddInt("phase", &phase);
  state.AddCursor("cursor.a", data.get(), &c1);
  state.AddCursor("cursor.b", other.get(), &c2);
  state.AddBytes("note", [&] { return note; }, [&](std::string_view b) {
    note = std::string(b);
    return absl::OkStatus();
  });
  CheckpointWriter w;
  ASSERT_TRUE(state.Save(w).ok());
  const std::string path = Dir() + "/all.sheafckpt";
  ASSERT_TRUE(w.Write(path).ok());
  adapter_x = {0, 0, 0};
  gate = {9};
  phase = 0;
  c1 = DataCursor{};
  c2 = DataCursor{};
  note.clear();
  absl::StatusOr<Checkpoint> c = Checkpoint::Read(path);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(state.Restore(*c).ok());
  EXPECT_EQ(adapter_x, (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(gate[0], 0.5f);
  EXPECT_EQ(phase, 2);
  EXPECT_TRUE(c1 == data->CursorAtSample(7));
  EXPECT_TRUE(c2 == other->CursorAtSample(3));
  EXPECT_EQ(note, "hello");

  // A state with one more optional entry still restores this file; a
  // required one names itself; a tensor of another size is refused.
  int64_t extra = 42;
  CheckpointState newer = state;
  newer.AddInt("skipped_steps", &extra, /*optional=*/true);
  EXPECT_TRUE(newer.Restore(*c).ok());
  EXPECT_EQ(extra, 42);
  CheckpointState stricter = state;
  stricter.AddInt("phase2", &extra);
  absl::Status s = stricter.Restore(*c);
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
  EXPECT_NE(std::string(s.message()).find("phase2"), std::string::npos) << s;
  std::vector<float> wrong(4);
  CheckpointState sized;
  sized.AddTensor("adapter.x", std::span<float>(wrong));
  EXPECT_FALSE(sized.Restore(*c).ok());
  // A cursor of another dataset is refused.
  CheckpointState swapped;
  swapped.AddCursor("cursor.a", other.get(), &c2);
  EXPECT_FALSE(swapped.Restore(*c).ok());
}

TEST(CheckpointState, TheLoraPretrainLayoutOfEarlierCheckpointsRestores) {
  auto data = testing::TinyDataset(16, 4);
  std::vector<float> w = {1, 2, 3, 4}, g = {0.1f, -0.2f, 0.3f, 0.4f};
  AdamW opt = Optimizer(w, g).value();
  opt.Step(0.01f);
  opt.Step(0.01f);
  const DataCursor cursor = data->CursorAtSample(11);
  // As jobs/trainer.cc wrote checkpoints before named state existed.
  CheckpointWriter old;
  ASSERT_TRUE(old.AddTensor("trainable", {4}, w.data()).ok());
  ASSERT_TRUE(old.AddTensor("optimizer", {static_cast<int64_t>(opt.state().size())}, opt.state().data()).ok());
  const int64_t meta[2] = {17, opt.step_count()};
  ASSERT_TRUE(old.AddBytes("step", std::string_view(reinterpret_cast<const char*>(meta), sizeof(meta))).ok());
  ASSERT_TRUE(old.AddBytes("optimizer_layout", opt.StateLayout()).ok());
  ASSERT_TRUE(old.AddBytes("cursor", data->EncodeCursor(cursor)).ok());
  ASSERT_TRUE(old.AddBytes("spec", "name: x\n").ok());
  const std::string path = Dir() + "/old.sheafckpt";
  ASSERT_TRUE(old.Write(path).ok());

  std::vector<float> w2(4), g2(4);
  AdamW opt2 = Optimizer(w2, g2).value();
  int64_t step = 0, skipped = 0;
  DataCursor cursor2;
  CheckpointState state;
  state.AddTensor("trainable", std::span<float>(w2));
  state.AddStepAndOptimizer("step", &step, "optimizer", &opt2);
  state.AddCursor("cursor", data.get(), &cursor2);
  state.AddBytes("spec", [] { return std::string("name: x\n"); }, nullptr);
  state.AddInt("skipped_steps", &skipped, /*optional=*/true);
  absl::StatusOr<Checkpoint> c = Checkpoint::Read(path);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(state.Restore(*c).ok());
  EXPECT_EQ(step, 17);
  EXPECT_EQ(w2, w);
  EXPECT_EQ(opt2.step_count(), 2);
  EXPECT_TRUE(std::equal(opt.state().begin(), opt.state().end(), opt2.state().begin()));
  EXPECT_TRUE(cursor2 == cursor);
  // And it writes the same entries in the same order (plus the new optional one).
  CheckpointWriter again;
  ASSERT_TRUE(state.Save(again).ok());
  ASSERT_TRUE(again.Write(path + ".new").ok());
  std::vector<std::string> names = Checkpoint::Read(path + ".new").value().Names();
  EXPECT_EQ(names, (std::vector<std::string>{"trainable", "optimizer", "step", "optimizer_layout",
                                             "cursor", "spec", "skipped_steps"}));
  // A layout of other parameters is refused, naming the file.
  std::vector<float> w3(4), g3(4);
  AdamW opt3 = AdamW::Create({{"other", w3.data(), g3.data(), 4, true}}, AdamWOptions{}).value();
  CheckpointState other;
  other.AddStepAndOptimizer("step", &step, "optimizer", &opt3);
  absl::Status s = other.Restore(*c);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
}

}  // namespace
}  // namespace sheaf::jobs
