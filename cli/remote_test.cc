// The client commands as a user runs them, in-process against a real
// coordinator on loopback (LocalCoordinator): what they print, on which
// stream, and their exit codes. A world is simulated by driving the worker
// RPCs (RegisterWorld / AcquireJob / Heartbeat / CompleteJob) with the worker
// token; artifacts are files planted in the job's output directory.
#include "cli/remote.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/connection.h"
#include "coordinator/local_coordinator.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "proto/coordinator.grpc.pb.h"

namespace sheaf::cli {
namespace {

namespace fs = std::filesystem;
using coordinator::LocalCoordinator;
using coordinator::LocalCoordinatorOptions;

constexpr const char* kAlice = LocalCoordinator::kAliceToken;
constexpr const char* kBob = LocalCoordinator::kBobToken;
constexpr const char* kWorker = LocalCoordinator::kWorkerToken;

// A lora job with paths relative to the coordinator's roots.
constexpr const char* kSpecYaml = R"(name: tiny de
base_model: tiny
data: {train: [corpus.txt], seq_len: 32}
train: {max_steps: 10}
lora:
)";

struct Result {
  int code = -1;
  std::string out;
  std::string err;
};

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteFile(const fs::path& path, const std::string& data) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << data;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string data(n, '\0');
  for (char& c : data) c = static_cast<char>(rng() & 0xff);
  return data;
}

// Every regular file under `root`, relative path -> contents.
std::map<std::string, std::string> Tree(const fs::path& root) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (entry.is_regular_file()) {
      files[fs::relative(entry.path(), root).string()] = ReadFile(entry.path());
    }
  }
  return files;
}

// A loopback port nothing listens on.
int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

// Rank 0 of a simulated world, on its own channel.
class World {
 public:
  explicit World(const std::string& target)
      : stub_(proto::Coordinator::NewStub(
            grpc::CreateChannel(target, grpc::InsecureChannelCredentials()))) {}

  void Register() {
    auto context = Context();
    proto::RegisterWorldRequest request;
    request.set_world_size(2);
    request.set_hostname("sim");
    proto::RegisterWorldResponse response;
    grpc::Status status = stub_->RegisterWorld(context.get(), request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    world_id_ = response.world_id();
  }

  proto::Lease Acquire() {
    auto context = Context();
    proto::AcquireJobRequest request;
    request.set_world_id(world_id_);
    request.set_wait_ms(5000);
    proto::AcquireJobResponse response;
    grpc::Status status = stub_->AcquireJob(context.get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_TRUE(response.has_lease());
    return response.lease();
  }

  proto::HeartbeatAction Beat(const proto::Lease& lease, int64_t step) {
    auto context = Context();
    proto::HeartbeatRequest request;
    request.set_lease_id(lease.lease_id());
    proto::Progress* progress = request.mutable_progress();
    progress->set_step(step);
    progress->set_total_steps(10);
    progress->set_loss(3.0 - 0.1 * step);
    if (step >= 5) progress->set_val_loss(2.5);
    progress->set_tokens_per_s(1000);
    progress->set_eta_s(10 - step);
    proto::HeartbeatResponse response;
    grpc::Status status = stub_->Heartbeat(context.get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.action();
  }

  proto::JobState Complete(const proto::Lease& lease, bool success, const std::string& error = "",
                           bool permanent = false) {
    auto context = Context();
    proto::CompleteJobRequest request;
    request.set_lease_id(lease.lease_id());
    request.set_success(success);
    request.set_error(error);
    request.set_permanent(permanent);
    proto::CompleteJobResponse response;
    grpc::Status status = stub_->CompleteJob(context.get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.state();
  }

 private:
  std::unique_ptr<grpc::ClientContext> Context() {
    auto context = std::make_unique<grpc::ClientContext>();
    coordinator::SetBearerToken(context.get(), kWorker);
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return context;
  }

  std::unique_ptr<proto::Coordinator::Stub> stub_;
  std::string world_id_;
};

class RemoteTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(LocalCoordinatorOptions()); }

  void Start(LocalCoordinatorOptions options) {
    auto local = LocalCoordinator::Start(std::move(options));
    ASSERT_TRUE(local.ok()) << local.status();
    local_ = *std::move(local);
    env_ = {{"SHEAF_ADDR", local_->target()}, {"SHEAF_TOKEN", kAlice}};
    spec_path_ = local_->dir() + "/job.yaml";
    WriteFile(spec_path_, kSpecYaml);
  }

  // Runs `sheaf ARGS...` in-process.
  Result Sheaf(std::vector<std::string> args, bool tty = false) {
    char* out_buffer = nullptr;
    char* err_buffer = nullptr;
    size_t out_size = 0;
    size_t err_size = 0;
    std::FILE* out = open_memstream(&out_buffer, &out_size);
    std::FILE* err = open_memstream(&err_buffer, &err_size);
    RemoteIo io;
    io.out = out;
    io.err = err;
    io.out_is_tty = tty;
    io.getenv = [env = env_](const char* name) -> std::optional<std::string> {
      auto it = env.find(name);
      if (it == env.end()) return std::nullopt;
      return it->second;
    };
    io.poll_interval = absl::Milliseconds(50);
    io.reconnect_delay = absl::Milliseconds(50);
    const std::string command = args[0];
    args.erase(args.begin());
    Result result;
    result.code = RunRemoteCommand(command, args, io);
    std::fclose(out);
    std::fclose(err);
    result.out.assign(out_buffer, out_size);
    result.err.assign(err_buffer, err_size);
    std::free(out_buffer);
    std::free(err_buffer);
    return result;
  }

  // Submits the test spec; returns the id. stdout is the id alone; stderr
  // is empty, or (when no world seen can run the job, which is most of
  // these tests: their worlds register after submitting) exactly one line,
  // the coordinator's waiting warning naming this job.
  std::string Submit(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"submit", spec_path_};
    args.insert(args.end(), extra.begin(), extra.end());
    Result r = Sheaf(args);
    last_submit_err_ = r.err;
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_TRUE(absl::EndsWith(r.out, "\n")) << r.out;
    std::string id(absl::StripSuffix(r.out, "\n"));
    if (!r.err.empty()) {
      EXPECT_TRUE(absl::StartsWith(r.err, absl::StrCat("sheaf: warning: job ", id,
                                                       " accepted, but ")))
          << r.err;
      EXPECT_EQ(Lines(r.err).size(), 1u) << r.err;
    }
    return id;
  }

  proto::Job StatusJson(const std::string& id) {
    Result r = Sheaf({"status", id, "--output", "json"});
    EXPECT_EQ(r.code, 0) << r.err;
    proto::Job job;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &job).ok()) << r.out;
    return job;
  }

  std::unique_ptr<LocalCoordinator> local_;
  std::map<std::string, std::string> env_;
  std::string spec_path_;
  std::string last_submit_err_;  // stderr of the last Submit()
};

// ------------------------------------------------------------- submit

TEST_F(RemoteTest, SubmitPrintsOnlyTheIdAndStatusShowsTheJob) {
  const std::string id = Submit({"--set", "name=renamed", "--priority", "7", "--min-world", "2",
                                 "--max-world", "4", "--memory", "1G"});
  EXPECT_TRUE(absl::StartsWith(id, "job-")) << id;
  EXPECT_EQ(id.size(), 20u) << id;
  // No world has registered: submit says the job waits, and why.
  EXPECT_EQ(last_submit_err_,
            absl::StrCat("sheaf: warning: job ", id, " accepted, but no world has been seen in "
                         "the last 3m (none registered, or all gone); the job waits for one\n"));

  Result r = Sheaf({"status", id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find(absl::StrCat("id:          ", id, "\n")), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("state:       PENDING\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("name:        renamed\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("priority:    7\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("resources:   2 to 4 ranks, 1.0 GiB per rank\n"), std::string::npos)
      << r.out;
  // The coordinator resolved the paths inside its roots.
  EXPECT_NE(r.out.find(absl::StrCat("output_dir:  ", local_->output_root())), std::string::npos)
      << r.out;

  proto::Job job = StatusJson(id);
  EXPECT_EQ(job.id(), id);
  EXPECT_EQ(job.priority(), 7);
  EXPECT_EQ(job.resources().min_world_size(), 2);
  EXPECT_EQ(job.resources().max_world_size(), 4);
  EXPECT_EQ(job.resources().memory_bytes(), 1LL << 30);
  EXPECT_EQ(job.spec().data().seq_len(), 32);
}

TEST_F(RemoteTest, SubmitValidatesLocallyWithTheErrorsOfTrain) {
  WriteFile(local_->dir() + "/bad.yaml",
            "base_model: tiny\ndata: {train: [corpus.txt]}\noptimizer: {lr: -1.0}\nlora:\n");
  // Judged before any token or connection is needed.
  env_.clear();
  Result r = Sheaf({"submit", local_->dir() + "/bad.yaml"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(absl::StartsWith(r.err, "sheaf: error: ")) << r.err;
  EXPECT_NE(r.err.find("optimizer.lr"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");

  r = Sheaf({"submit", spec_path_, "--set", "optimizer.lrr=1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("lrr"), std::string::npos) << r.err;
  r = Sheaf({"submit", local_->dir() + "/missing.yaml"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("missing.yaml"), std::string::npos) << r.err;

  // Nothing reached the coordinator.
  env_ = {{"SHEAF_ADDR", local_->target()}, {"SHEAF_TOKEN", kAlice}};
  r = Sheaf({"list"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "sheaf: no jobs\n");
}

TEST_F(RemoteTest, SubmitRejectedByTheCoordinatorIsExit2WithItsReason) {
  Result r = Sheaf({"submit", spec_path_, "--set", "base_model=/etc"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("base_model"), std::string::npos) << r.err;
  EXPECT_EQ(Lines(r.err).size(), 1u) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST_F(RemoteTest, BadFlagsAreUsageErrors) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"submit"},
           {"submit", spec_path_, "--priority", "5000"},
           {"submit", spec_path_, "--memory", "lots"},
           {"submit", spec_path_, "--min-world", "0"},
           {"status"},
           {"status", "a", "b"},
           {"status", "job-1", "--output", "yaml"},
           {"list", "--bogus"},
           {"list", "extra"},
           {"list", "--limit", "2", "--all-pages"},
           {"list", "--state", "done"},
           {"fetch", "job-1"},
           {"cancel", "job-1", "--output", "json"},
       }) {
    Result r = Sheaf(args);
    EXPECT_EQ(r.code, 2) << absl::StrJoin(args, " ") << ": " << r.err;
    EXPECT_EQ(Lines(r.err).size(), 1u) << r.err;
    EXPECT_TRUE(absl::StartsWith(r.err, "sheaf: ")) << r.err;
  }
}

// ------------------------------------------------------------- list, cancel

TEST_F(RemoteTest, ListPaginatesAndFilters) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(Submit());

  // Every page, two at a time: a header and the five jobs, oldest first.
  Result r = Sheaf({"list", "--all-pages", "--page-size", "2"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 6u) << r.out;
  EXPECT_TRUE(absl::StartsWith(lines[0], "ID ")) << lines[0];
  for (int i = 0; i < 5; ++i) {
    EXPECT_TRUE(absl::StartsWith(lines[i + 1], ids[i])) << lines[i + 1];
    EXPECT_NE(lines[i + 1].find("PENDING"), std::string::npos);
  }
  EXPECT_EQ(r.err, "");

  // One page by default; the rest is announced on stderr.
  r = Sheaf({"list", "--page-size", "2"});
  EXPECT_EQ(Lines(r.out).size(), 3u) << r.out;
  EXPECT_EQ(r.err, "sheaf: more jobs: add --all-pages, or --limit N\n");
  r = Sheaf({"list", "--limit", "3", "--page-size", "2"});
  lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 4u) << r.out;
  EXPECT_TRUE(absl::StartsWith(lines[3], ids[2]));
  EXPECT_NE(r.err.find("more jobs"), std::string::npos);
  r = Sheaf({"list", "--limit", "5"});
  EXPECT_EQ(Lines(r.out).size(), 6u) << r.out;
  EXPECT_EQ(r.err, "");

  // Cancel one; filter by state and kind.
  r = Sheaf({"cancel", ids[1]});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, absl::StrCat(ids[1], ": CANCELLED\n"));
  r = Sheaf({"list", "--state", "cancelled"});
  lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_TRUE(absl::StartsWith(lines[1], ids[1]));
  r = Sheaf({"list", "--state", "PENDING", "--all-pages"});
  EXPECT_EQ(Lines(r.out).size(), 5u) << r.out;
  r = Sheaf({"list", "--kind", "pretrain"});
  EXPECT_EQ(r.out, "");
  r = Sheaf({"list", "--kind", "lora", "--output", "json", "--all-pages"});
  lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 5u) << r.out;
  for (size_t i = 0; i < lines.size(); ++i) {
    proto::Job job;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(lines[i], &job).ok()) << lines[i];
    EXPECT_EQ(job.id(), ids[i]);
    EXPECT_EQ(job.kind(), "lora");
  }
  // Cancelling twice is fine; bob sees none of alice's jobs.
  EXPECT_EQ(Sheaf({"cancel", ids[1]}).code, 0);
  env_["SHEAF_TOKEN"] = kBob;
  r = Sheaf({"list"});
  EXPECT_EQ(r.out, "");
}

// ------------------------------------------------------------- watch

TEST_F(RemoteTest, WatchExits1ForACancelledJob) {
  const std::string id = Submit();
  ASSERT_EQ(Sheaf({"cancel", id}).code, 0);
  Result r = Sheaf({"watch", id});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, absl::StrCat(id, ": CANCELLED\n"));
  EXPECT_EQ(r.err, absl::StrCat("sheaf: job ", id, " was CANCELLED\n"));
}

TEST_F(RemoteTest, WatchFollowsARunningJobUntilItIsCancelled) {
  const std::string id = Submit();
  World world(local_->target());
  world.Register();
  proto::Lease lease = world.Acquire();
  ASSERT_EQ(lease.job_id(), id);
  world.Beat(lease, 1);
  auto watch = std::async(std::launch::async, [&] { return Sheaf({"watch", id}); });
  // Let the watch subscribe, then report, cancel, and end as a world does.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  world.Beat(lease, 2);
  ASSERT_EQ(Sheaf({"cancel", id}).code, 0);
  EXPECT_EQ(world.Beat(lease, 3), proto::HEARTBEAT_ACTION_CANCEL);
  EXPECT_EQ(world.Complete(lease, false, "cancelled"), proto::JOB_STATE_CANCELLED);
  Result r = watch.get();
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_GE(lines.size(), 3u) << r.out;
  EXPECT_TRUE(absl::StartsWith(lines[0], absl::StrCat(id, ": RUNNING (attempt 1, world ")))
      << r.out;
  EXPECT_NE(r.out.find("step 2/10 loss 2.8000 tokens/s 1000 eta 8s\n"), std::string::npos) << r.out;
  EXPECT_TRUE(absl::StartsWith(lines.back(), absl::StrCat(id, ": RUNNING -> CANCELLED"))) << r.out;
  EXPECT_EQ(r.err, absl::StrCat("sheaf: job ", id, " was CANCELLED: cancelled by tenant\n"));
}

TEST_F(RemoteTest, WatchOfASucceededJobExits0WithABarOnATerminal) {
  const std::string id = Submit();
  World world(local_->target());
  world.Register();
  proto::Lease lease = world.Acquire();
  auto watch = std::async(std::launch::async, [&] { return Sheaf({"watch", id}, true); });
  auto json = std::async(std::launch::async, [&] {
    return Sheaf({"watch", id, "--output", "json"});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (int step = 1; step <= 10; ++step) world.Beat(lease, step);
  EXPECT_EQ(world.Complete(lease, true), proto::JOB_STATE_SUCCEEDED);

  Result r = watch.get();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find(absl::StrCat("\r\033[K[", std::string(24, '#'),
                                    "] 10/10  100%  loss 2.0000  val 2.5000  1000 tok/s")),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("ETA 5s"), std::string::npos) << r.out;
  EXPECT_TRUE(absl::EndsWith(r.out, absl::StrCat(id, ": RUNNING -> SUCCEEDED (attempt 1, world ",
                                                 StatusJson(id).world_id(), "): completed\n")))
      << r.out;

  r = json.get();
  EXPECT_EQ(r.code, 0) << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_GE(lines.size(), 3u);
  int64_t last_step = 0;
  proto::JobEvent event;
  for (const std::string& line : lines) {
    event.Clear();
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(line, &event).ok()) << line;
    EXPECT_EQ(event.job_id(), id);
    if (event.has_progress()) last_step = event.progress().step();
  }
  EXPECT_EQ(last_step, 10);
  EXPECT_EQ(event.state_change().to(), proto::JOB_STATE_SUCCEEDED);
}

TEST_F(RemoteTest, WatchOfAFailedJobPrintsTheErrorAndExits1) {
  const std::string id = Submit();
  World world(local_->target());
  world.Register();
  proto::Lease lease = world.Acquire();
  EXPECT_EQ(world.Complete(lease, false, "data.train: no such file", /*permanent=*/true),
            proto::JOB_STATE_FAILED);
  Result r = Sheaf({"watch", id});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            absl::StrCat("sheaf: job ", id, " FAILED: attempt 1: data.train: no such file\n"));
  // A finished job cannot be cancelled.
  r = Sheaf({"cancel", id});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            absl::StrCat("sheaf: job ", id, " is already JOB_STATE_FAILED; nothing to cancel\n"));
}

// ------------------------------------------------------------- fetch, logs

class FetchTest : public RemoteTest {
 protected:
  const std::string kConfig = R"({"r": 8, "lora_alpha": 16})";

  // A job that "ran": its world planted files in the output directory and
  // completed it.
  void SetUp() override {
    RemoteTest::SetUp();
    id_ = Submit();
    World world(local_->target());
    world.Register();
    proto::Lease lease = world.Acquire();
    output_dir_ = lease.output_dir();
    ASSERT_TRUE(absl::StartsWith(output_dir_.string(), local_->output_root() + "/alice/"))
        << output_dir_;
    WriteFile(output_dir_ / "adapter/adapter_config.json", kConfig);
    WriteFile(output_dir_ / "adapter/adapter_model.safetensors", RandomBytes(300000, 1));
    WriteFile(output_dir_ / "checkpoints/ckpt-10.sheafckpt", RandomBytes(200001, 2));
    WriteFile(output_dir_ / "empty.txt", "");
    WriteFile(output_dir_ / "train.log", "step 1 loss 3.0\nstep 2 loss 2.9\n");
    world.Beat(lease, 10);
    ASSERT_EQ(world.Complete(lease, true), proto::JOB_STATE_SUCCEEDED);
    dest_ = local_->dir() + "/fetched";
  }

  std::string id_;
  fs::path output_dir_;
  fs::path dest_;
};

TEST_F(FetchTest, FetchesEveryFileByteForByte) {
  Result r = Sheaf({"fetch", id_, "-o", dest_.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Tree(dest_), Tree(output_dir_));
  EXPECT_EQ(Tree(dest_).size(), 5u);
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 6u) << r.out;
  EXPECT_EQ(lines[0], absl::StrCat(dest_.string(), "/adapter/adapter_config.json  ", kConfig.size(),
                                   " bytes"));
  EXPECT_EQ(lines[1],
            absl::StrCat(dest_.string(), "/adapter/adapter_model.safetensors  300000 bytes"));
  const int64_t total = kConfig.size() + 300000 + 200001 + 0 + 32;
  EXPECT_EQ(lines[5], absl::StrCat("fetched 5 files, ", total, " bytes (", total,
                                   " received) into ", dest_.string()));
  // Fetching again replaces the files (no .part left behind).
  r = Sheaf({"fetch", id_, "--output-dir", dest_.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Tree(dest_), Tree(output_dir_));
}

TEST_F(FetchTest, ResumesAPartialFileFromItsSize) {
  const std::string model = ReadFile(output_dir_ / "adapter/adapter_model.safetensors");
  // A true prefix: only the rest is downloaded.
  WriteFile(dest_ / "adapter/adapter_model.safetensors.part", model.substr(0, 100000));
  Result r = Sheaf({"fetch", id_, "-o", dest_.string(), "--path", "adapter"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(ReadFile(dest_ / "adapter/adapter_model.safetensors"), model);
  EXPECT_FALSE(fs::exists(dest_ / "adapter/adapter_model.safetensors.part"));
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_EQ(lines[1], absl::StrCat(dest_.string(),
                                   "/adapter/adapter_model.safetensors  300000 bytes "
                                   "(resumed from 100000)"));
  EXPECT_EQ(lines[2], absl::StrCat("fetched 2 files, ", kConfig.size() + 300000, " bytes (",
                                   kConfig.size() + 200000, " received) into ", dest_.string()));
  // Only the directory asked for.
  EXPECT_EQ(Tree(dest_).size(), 2u);

  // With a true prefix the result is the file; a single file by its path.
  fs::remove_all(dest_);
  WriteFile(dest_ / "checkpoints/ckpt-10.sheafckpt.part",
            ReadFile(output_dir_ / "checkpoints/ckpt-10.sheafckpt").substr(0, 65537));
  r = Sheaf({"fetch", id_, "-o", dest_.string(), "--path", "checkpoints/ckpt-10.sheafckpt"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Tree(dest_), (std::map<std::string, std::string>{
                             {"checkpoints/ckpt-10.sheafckpt",
                              ReadFile(output_dir_ / "checkpoints/ckpt-10.sheafckpt")}}));
  EXPECT_NE(r.out.find("(resumed from 65537)"), std::string::npos) << r.out;

  // A whole fetch resumes too, and a .part longer than the file starts over.
  fs::remove_all(dest_);
  WriteFile(dest_ / "adapter/adapter_model.safetensors.part", model.substr(0, 1234));
  WriteFile(dest_ / "train.log.part", std::string(1000, 'x'));
  r = Sheaf({"fetch", id_, "-o", dest_.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Tree(dest_), Tree(output_dir_));
  EXPECT_NE(r.out.find("300000 bytes (resumed from 1234)"), std::string::npos) << r.out;
}

// Issue 9, item 6: a stale .part (another job's adapter, or a version of
// this one's) was spliced with the rest of the file, exit 0. The prefix
// digest refuses it and the file is fetched from 0.
TEST_F(FetchTest, AStalePartIsNeverSplicedIn) {
  const std::string model = ReadFile(output_dir_ / "adapter/adapter_model.safetensors");
  std::string stale = model.substr(0, 150000);
  stale[10] = static_cast<char>(stale[10] ^ 0xff);  // another file's first half
  WriteFile(dest_ / "adapter/adapter_model.safetensors.part", stale);
  Result r = Sheaf({"fetch", id_, "-o", dest_.string(), "--path", "adapter"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(ReadFile(dest_ / "adapter/adapter_model.safetensors"), model);
  EXPECT_EQ(r.out.find("resumed from"), std::string::npos) << r.out;
  // The same in a whole fetch.
  fs::remove_all(dest_);
  WriteFile(dest_ / "checkpoints/ckpt-10.sheafckpt.part", std::string(5000, 'z'));
  r = Sheaf({"fetch", id_, "-o", dest_.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Tree(dest_), Tree(output_dir_));
}

TEST_F(FetchTest, MissingArtifactsAndJobsAreExit4) {
  Result r = Sheaf({"fetch", id_, "-o", dest_.string(), "--path", "nothing/here"});
  EXPECT_EQ(r.code, 4);
  EXPECT_EQ(r.err, absl::StrCat("sheaf: job ", id_, " has no artifact 'nothing/here'\n"));
  r = Sheaf({"fetch", id_, "-o", dest_.string(), "--path", "../escape"});
  EXPECT_EQ(r.code, 2) << r.err;
  // A pending job has no output directory yet.
  const std::string pending = Submit();
  r = Sheaf({"fetch", pending, "-o", dest_.string()});
  EXPECT_EQ(r.code, 4);
  EXPECT_NE(r.err.find("has no artifacts yet"), std::string::npos) << r.err;
  r = Sheaf({"logs", pending});
  EXPECT_EQ(r.code, 4);
  EXPECT_EQ(r.err, absl::StrCat("sheaf: job ", pending, " has no train.log yet\n"));
}

TEST_F(FetchTest, LogsPrintsTrainLog) {
  Result r = Sheaf({"logs", id_});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "step 1 loss 3.0\nstep 2 loss 2.9\n");
  // A finished job: -f prints it all and ends.
  r = Sheaf({"logs", "-f", id_});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "step 1 loss 3.0\nstep 2 loss 2.9\n");
}

TEST_F(RemoteTest, LogsFollowReadsWhatIsAppendedUntilTheJobEnds) {
  const std::string id = Submit();
  World world(local_->target());
  world.Register();
  proto::Lease lease = world.Acquire();
  const fs::path log = fs::path(lease.output_dir()) / "train.log";
  auto follow = std::async(std::launch::async, [&] { return Sheaf({"logs", id, "-f"}); });
  // Before the log exists, -f waits for it.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  WriteFile(log, "line 1\n");
  world.Beat(lease, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::ofstream(log, std::ios::app) << "line 2\n";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::ofstream(log, std::ios::app) << "line 3\n";
  ASSERT_EQ(world.Complete(lease, true), proto::JOB_STATE_SUCCEEDED);
  Result r = follow.get();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "line 1\nline 2\nline 3\n");
}

// ------------------------------------------------------------- errors

TEST_F(RemoteTest, UnreachableCoordinatorIsOneLineAndExit3) {
  const std::string address = absl::StrCat("127.0.0.1:", ClosedPort());
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"list", "--addr", address},
           {"status", "job-0123456789abcdef", "--addr", address},
           {"watch", "job-0123456789abcdef", "--addr", address},
           {"submit", spec_path_, "--addr", address},
           {"fetch", "job-0123456789abcdef", "-o", local_->dir() + "/x", "--addr", address},
       }) {
    Result r = Sheaf(args);
    EXPECT_EQ(r.code, 3) << args[0];
    EXPECT_EQ(r.err, absl::StrCat("sheaf: cannot reach coordinator at ", address,
                                  ": connection refused (is sheaf-coordinator running? "
                                  "set --addr or SHEAF_ADDR)\n"))
        << args[0];
    EXPECT_EQ(r.out, "");
  }
  // SHEAF_ADDR is used when --addr is not given, and --addr wins over it.
  env_["SHEAF_ADDR"] = address;
  EXPECT_EQ(Sheaf({"list"}).code, 3);
  EXPECT_EQ(Sheaf({"list", "--addr", local_->target()}).code, 0);
}

TEST_F(RemoteTest, BadTokensAreExit3AndAMissingTokenIsUsage) {
  env_["SHEAF_TOKEN"] = "nobody-token-0123456789";
  Result r = Sheaf({"list"});
  EXPECT_EQ(r.code, 3);
  EXPECT_EQ(r.err,
            "sheaf: permission denied: the token is not valid for this coordinator "
            "(check --token, --token-file or SHEAF_TOKEN)\n");
  r = Sheaf({"submit", spec_path_});
  EXPECT_EQ(r.code, 3);
  // The worker token is valid, but not for tenant calls.
  r = Sheaf({"list", "--token", kWorker});
  EXPECT_EQ(r.code, 3);
  EXPECT_TRUE(absl::StartsWith(r.err, "sheaf: permission denied: ")) << r.err;
  // --token-file: the first word of the first line that is not a comment.
  const std::string token_file = local_->dir() + "/my.token";
  WriteFile(token_file, absl::StrCat("# alice\n\n", kAlice, " alice\n"));
  env_.erase("SHEAF_TOKEN");
  EXPECT_EQ(Sheaf({"list", "--token-file", token_file}).code, 0);
  env_["SHEAF_TOKEN_FILE"] = token_file;
  EXPECT_EQ(Sheaf({"list"}).code, 0);
  env_.erase("SHEAF_TOKEN_FILE");
  r = Sheaf({"list"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(absl::StartsWith(r.err, "sheaf: no token: pass --token")) << r.err;
  r = Sheaf({"list", "--token-file", local_->dir() + "/nope"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("cannot be read"), std::string::npos) << r.err;
}

TEST_F(RemoteTest, UnknownJobsAreExit4) {
  const std::string id = Submit();
  const std::string unknown = "job-0000000000000000";
  for (const char* command : {"status", "watch", "cancel", "logs"}) {
    Result r = Sheaf({command, unknown});
    EXPECT_EQ(r.code, 4) << command << ": " << r.err;
    EXPECT_EQ(r.err, absl::StrCat("sheaf: job ", unknown, " not found\n")) << command;
  }
  Result r = Sheaf({"fetch", unknown, "-o", local_->dir() + "/x"});
  EXPECT_EQ(r.code, 4);
  EXPECT_EQ(r.err, absl::StrCat("sheaf: job ", unknown, " not found\n"));
  // Another tenant's job reads the same.
  env_["SHEAF_TOKEN"] = kBob;
  r = Sheaf({"status", id});
  EXPECT_EQ(r.code, 4);
  EXPECT_EQ(r.err, absl::StrCat("sheaf: job ", id, " not found\n"));
}

TEST(RemoteTlsTest, VerifiesTheCoordinatorAgainstTheCa) {
  auto certificate = coordinator::MakeTestCertificate();
  ASSERT_TRUE(certificate.ok()) << certificate.status();
  const std::string cert = certificate->cert_path;
  const std::string key = certificate->key_path;
  LocalCoordinatorOptions options;
  options.tls_cert_path = cert;
  options.tls_key_path = key;
  auto local = LocalCoordinator::Start(options);
  ASSERT_TRUE(local.ok()) << local.status();
  auto run = [&](std::vector<std::string> args) {
    char* buffer = nullptr;
    size_t size = 0;
    std::FILE* out = open_memstream(&buffer, &size);
    RemoteIo io;
    io.out = out;
    io.err = out;
    io.getenv = [](const char*) { return std::nullopt; };
    args.insert(args.end(), {"--addr", (*local)->target(), "--token", kAlice});
    const int code = RunRemoteCommand("list", args, io);
    std::fclose(out);
    std::string text(buffer, size);
    std::free(buffer);
    return std::make_pair(code, text);
  };
  auto [code, text] = run({"--ca", cert});
  EXPECT_EQ(code, 0) << text;
  std::tie(code, text) = run({"--ca", cert, "--tls-server-name", "localhost"});
  EXPECT_EQ(code, 0) << text;
  // Plaintext against TLS, and TLS against the wrong CA, do not connect.
  std::tie(code, text) = run({});
  EXPECT_EQ(code, 3) << text;
  EXPECT_TRUE(absl::StartsWith(text, "sheaf: cannot reach coordinator at ")) << text;
  auto other = coordinator::MakeTestCertificate();  // an unrelated CA
  ASSERT_TRUE(other.ok()) << other.status();
  std::tie(code, text) = run({"--ca", other->cert_path});
  EXPECT_EQ(code, 3) << text;
  std::tie(code, text) = run({"--ca", cert + ".missing"});
  EXPECT_EQ(code, 2) << text;
}

}  // namespace
}  // namespace sheaf::cli
