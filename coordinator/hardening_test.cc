// Issue 9, items 7 and 10: fetch stream caps and idle cut-off, one
// coordinator per address, concurrent /metrics, opaque page tokens and the
// note on jobs no registered world can take. A service (and, where the
// transport matters, a gRPC server) of its own per test.
#include <grpcpp/grpcpp.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator/auth.h"
#include "coordinator/clock.h"
#include "coordinator/http_server.h"
#include "coordinator/page_token.h"
#include "coordinator/server.h"
#include "coordinator/service.h"
#include "coordinator/store.h"
#include "gtest/gtest.h"
#include "proto/coordinator.grpc.pb.h"

namespace sheaf::coordinator {
namespace {

namespace fs = std::filesystem;

constexpr char kAliceToken[] = "alice-token-0123456789";
constexpr char kBobToken[] = "bob-token-0123456789ab";
constexpr char kWorkerToken[] = "worker-token-0123456789";

std::string NewDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string dir = absl::StrCat(base ? base : "/tmp", "/hardening.XXXXXX");
  if (mkdtemp(dir.data()) == nullptr) std::abort();
  return dir;
}

proto::JobSpec GoodSpec() {
  proto::JobSpec spec;
  spec.set_name("tiny lora");
  spec.set_base_model("tiny");
  spec.mutable_data()->add_train("corpus.txt");
  spec.mutable_train()->set_max_steps(10);
  spec.mutable_lora();
  return spec;
}

// A service on its own roots and database; a gRPC server on demand.
class Coordinator {
 public:
  explicit Coordinator(ServiceOptions options = ServiceOptions()) : dir_(NewDir()) {
    fs::create_directories(dir_ + "/models/tiny");
    fs::create_directories(dir_ + "/data");
    fs::create_directories(dir_ + "/out");
    std::ofstream(dir_ + "/data/corpus.txt") << "hello world\n";
    auto store = JobStore::Open({.path = dir_ + "/jobs.db", .sync = SyncMode::kNormal});
    EXPECT_TRUE(store.ok()) << store.status();
    options.roots = {dir_ + "/models", dir_ + "/data", dir_ + "/out"};
    options.scheduler.run_sweeper = false;
    options.stream_poll = absl::Milliseconds(20);
    auto service = CoordinatorService::Create(std::move(options), *std::move(store),
                                              Clock::Real());
    EXPECT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    auto auth = TokenAuthenticator::FromText(absl::StrCat(
        kAliceToken, " alice\n", kBobToken, " bob\n", kWorkerToken, " @worker\n"));
    EXPECT_TRUE(auth.ok()) << auth.status();
    auth_ = *std::move(auth);
  }
  ~Coordinator() {
    if (server_) server_->Shutdown(absl::Seconds(1));
  }

  CoordinatorService& service() { return *service_; }

  // A job of `tenant` whose output directory holds `name` of `bytes` bytes
  // (sparse).
  std::string JobWithArtifact(const std::string& tenant, int64_t bytes,
                              const std::string& name = "adapter.bin") {
    proto::SubmitJobRequest request;
    *request.mutable_spec() = GoodSpec();
    auto response = service_->SubmitJob(Caller::Tenant(tenant), request);
    EXPECT_TRUE(response.ok()) << response.status();
    if (!response.ok()) return "";
    const std::string out = response->job().output_dir();
    fs::create_directories(out);
    { std::ofstream(out + "/" + name) << "x"; }
    fs::resize_file(out + "/" + name, static_cast<uintmax_t>(bytes));
    return response->job_id();
  }

  absl::Status StartServer(const std::string& listen = "127.0.0.1:0") {
    ServerOptions options;
    options.listen = listen;
    auto server = CoordinatorServer::Start(options, service_.get(), auth_.get());
    if (!server.ok()) return server.status();
    server_ = *std::move(server);
    return absl::OkStatus();
  }
  int port() const { return server_->port(); }
  std::unique_ptr<proto::Coordinator::Stub> NewStub() const {
    return proto::Coordinator::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", port()), grpc::InsecureChannelCredentials()));
  }
  const TokenAuthenticator* auth() const { return auth_.get(); }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<TokenAuthenticator> auth_;
  std::unique_ptr<CoordinatorServer> server_;
};

// Writes that block (a stalled reader) until released or aborted.
class StalledReaders {
 public:
  StreamWriter<proto::ArtifactChunk> Writer() {
    return [this](const proto::ArtifactChunk&) {
      std::unique_lock<std::mutex> lock(mu_);
      ++blocked_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return released_ || aborts_ > handled_aborts_; });
      --blocked_;
      if (released_) return true;
      ++handled_aborts_;
      return false;
    };
  }
  std::function<void()> Abort() {
    return [this] {
      std::lock_guard<std::mutex> lock(mu_);
      ++aborts_;
      cv_.notify_all();
    };
  }
  // Waits until `n` writes are blocked.
  bool WaitBlocked(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(20), [&] { return blocked_ >= n; });
  }
  void ReleaseAll() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int blocked_ = 0;
  int aborts_ = 0;
  int handled_aborts_ = 0;
  bool released_ = false;
};

// ---------------------------------------------------------------- Item 7

TEST(FetchStreamsTest, PerTenantAndGlobalCapsRefuseWithTheCapNamed) {
  ServiceOptions options;
  options.fetch.max_streams = 3;
  options.fetch.max_streams_per_tenant = 2;
  options.fetch.idle_timeout = absl::ZeroDuration();  // Never cut off here.
  Coordinator c(options);
  const std::string alice_job = c.JobWithArtifact("alice", 1000);
  const std::string bob_job = c.JobWithArtifact("bob", 1000);
  StalledReaders readers;
  auto fetch = [&](const std::string& tenant, const std::string& job) {
    proto::FetchArtifactsRequest request;
    request.set_job_id(job);
    return c.service().FetchArtifacts(Caller::Tenant(tenant), request,
                                      readers.Writer(), nullptr, readers.Abort());
  };
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(3);
  threads.emplace_back([&] { results[0] = fetch("alice", alice_job); });
  threads.emplace_back([&] { results[1] = fetch("alice", alice_job); });
  ASSERT_TRUE(readers.WaitBlocked(2));
  EXPECT_EQ(c.service().active_fetch_streams(), 2);

  absl::Status third = fetch("alice", alice_job);
  EXPECT_TRUE(absl::IsResourceExhausted(third)) << third;
  EXPECT_TRUE(absl::StrContains(third.message(), "--max-fetch-streams-per-tenant 2"))
      << third;

  // Bob has his own allowance, up to the global cap.
  threads.emplace_back([&] { results[2] = fetch("bob", bob_job); });
  ASSERT_TRUE(readers.WaitBlocked(3));
  absl::Status fourth = fetch("bob", bob_job);
  EXPECT_TRUE(absl::IsResourceExhausted(fourth)) << fourth;
  EXPECT_TRUE(absl::StrContains(fourth.message(), "--max-fetch-streams 3")) << fourth;

  readers.ReleaseAll();
  for (std::thread& t : threads) t.join();
  for (const absl::Status& status : results) EXPECT_TRUE(status.ok()) << status;
  // Slots are given back: a new stream is admitted again.
  EXPECT_EQ(c.service().active_fetch_streams(), 0);
  EXPECT_TRUE(fetch("alice", alice_job).ok());
}

TEST(FetchStreamsTest, AnIdleReaderIsCutOffAfterTheTimeout) {
  ServiceOptions options;
  options.fetch.idle_timeout = absl::Milliseconds(300);
  Coordinator c(options);
  const std::string job = c.JobWithArtifact("alice", 1000);
  StalledReaders readers;
  proto::FetchArtifactsRequest request;
  request.set_job_id(job);
  const auto start = std::chrono::steady_clock::now();
  std::atomic<bool> done{false};
  absl::Status status;
  std::thread t([&] {
    status = c.service().FetchArtifacts(Caller::Tenant("alice"), request,
                                        readers.Writer(), nullptr, readers.Abort());
    done = true;
  });
  // Without a cut-off the write blocks until released (after 10 s here).
  for (int i = 0; i < 100 && !done; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const auto took = std::chrono::steady_clock::now() - start;
  readers.ReleaseAll();
  t.join();
  EXPECT_TRUE(absl::IsDeadlineExceeded(status)) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "--fetch-idle-timeout")) << status;
  EXPECT_GE(took, std::chrono::milliseconds(300));
  EXPECT_LT(took, std::chrono::seconds(5));
  EXPECT_EQ(c.service().active_fetch_streams(), 0);
}

// Over gRPC: a client that opens a fetch of a 256 MiB file and never reads
// is cut off (its stream ends CANCELLED) and its slot is freed, while a
// reader that keeps reading is not cut off.
TEST(FetchStreamsTest, AStalledGrpcReaderIsCutOffAndAnActiveOneIsNot) {
  ServiceOptions options;
  options.fetch.idle_timeout = absl::Milliseconds(500);
  Coordinator c(options);
  ASSERT_TRUE(c.StartServer().ok());
  const std::string big = c.JobWithArtifact("alice", int64_t{256} << 20);
  auto stub = c.NewStub();

  grpc::ClientContext stalled_context;
  stalled_context.AddMetadata("authorization", absl::StrCat("Bearer ", kAliceToken));
  proto::FetchArtifactsRequest request;
  request.set_job_id(big);
  request.set_chunk_bytes(1 << 20);
  auto stalled = stub->FetchArtifacts(&stalled_context, request);
  // The stream is admitted at once.
  for (int i = 0; i < 100 && c.service().active_fetch_streams() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(c.service().active_fetch_streams(), 1);
  // Never read: after the idle timeout (plus the reaper's period) the
  // server has let go of it.
  bool freed = false;
  for (int i = 0; i < 150 && !freed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    freed = c.service().active_fetch_streams() == 0;
  }
  EXPECT_TRUE(freed) << "a reader that took nothing for 15 s still holds its stream";
  proto::ArtifactChunk chunk;
  while (stalled->Read(&chunk)) {
  }
  grpc::Status end = stalled->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::CANCELLED) << end.error_message();

  // A reader that reads a small file to the end is not disturbed.
  const std::string small = c.JobWithArtifact("alice", 3 << 20, "small.bin");
  grpc::ClientContext context;
  context.AddMetadata("authorization", absl::StrCat("Bearer ", kAliceToken));
  proto::FetchArtifactsRequest small_request;
  small_request.set_job_id(small);
  auto reader = stub->FetchArtifacts(&context, small_request);
  int64_t bytes = 0;
  while (reader->Read(&chunk)) bytes += static_cast<int64_t>(chunk.data().size());
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(bytes, 3 << 20);
}


// ---------------------------------------------------------------- Item 8

std::string ReadRunfile(const std::string& rel) {
  const char* base = std::getenv("TEST_SRCDIR");
  std::ifstream f(absl::StrCat(base ? base : ".", "/sheaf/", rel), std::ios::binary);
  std::stringstream text;
  text << f.rdbuf();
  return text.str();
}

// A config.json that claims a model far larger than its weights used to be
// accepted with a memory estimate no world could hold, and then waited
// forever (never leased, so the lie was never found). The coordinator now
// reads the weights' headers (not the weights) beneath the model root at
// submit and refuses the job naming the tensor; a FIFO config is refused
// without blocking; a model whose files the coordinator cannot see is still
// accepted (workers check again).
TEST(LyingConfigTest, AConfigThatDisagreesWithItsWeightsIsRefusedAtSubmit) {
  Coordinator c;
  const std::string config = ReadRunfile("models/tiny-en/config.json");
  const std::string weights = ReadRunfile("models/tiny-en/model.safetensors");
  ASSERT_FALSE(config.empty());
  ASSERT_GT(weights.size(), 1000u);
  auto model = [&](const std::string& name, const std::string& config_text) {
    fs::create_directories(c.dir() + "/models/" + name);
    std::ofstream(c.dir() + "/models/" + name + "/model.safetensors", std::ios::binary) << weights;
    if (!config_text.empty()) {
      std::ofstream(c.dir() + "/models/" + name + "/config.json") << config_text;
    }
  };
  auto with = [&](const std::string& key, const std::string& value) {
    std::string text = config;
    const std::string needle = "\"" + key + "\":";
    const size_t at = text.find(needle);
    EXPECT_NE(at, std::string::npos) << key;
    text.replace(at, text.find_first_of(",}", at) - at, needle + " " + value);
    return text;
  };
  model("real", config);
  model("hidden", with("hidden_size", "16777216"));
  model("layers", with("num_hidden_layers", "4096"));
  model("fifo", "");
  ASSERT_EQ(mkfifo((c.dir() + "/models/fifo/config.json").c_str(), 0644), 0);
  fs::create_directories(c.dir() + "/models/half");
  std::ofstream(c.dir() + "/models/half/config.json") << config;
  std::ofstream(c.dir() + "/models/half/model.safetensors", std::ios::binary)
      << weights.substr(0, 6);

  auto submit = [&](const std::string& base) {
    proto::SubmitJobRequest request;
    *request.mutable_spec() = GoodSpec();
    request.mutable_spec()->set_base_model(base);
    return c.service().SubmitJob(Caller::Tenant("alice"), request);
  };
  auto real = submit("real");
  ASSERT_TRUE(real.ok()) << real.status();
  EXPECT_TRUE(real->job().has_memory_estimate());

  auto hidden = submit("hidden");
  ASSERT_FALSE(hidden.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(hidden.status())) << hidden.status();
  EXPECT_TRUE(absl::StrContains(hidden.status().message(), "base_model: hidden: tensor "))
      << hidden.status();
  EXPECT_TRUE(absl::StrContains(hidden.status().message(), "config.json implies"))
      << hidden.status();

  auto layers = submit("layers");
  ASSERT_FALSE(layers.ok());
  EXPECT_TRUE(absl::StrContains(layers.status().message(), "is missing")) << layers.status();

  const auto start = std::chrono::steady_clock::now();
  auto fifo = submit("fifo");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  ASSERT_FALSE(fifo.ok());
  EXPECT_TRUE(absl::StrContains(fifo.status().message(), "not a regular file")) << fifo.status();

  auto half = submit("half");
  ASSERT_FALSE(half.ok());
  EXPECT_TRUE(absl::StrContains(half.status().message(),
                                "half/model.safetensors: file is truncated: 6 bytes, shorter than"))
      << half.status();

  // No config.json the coordinator can see: accepted, no estimate.
  auto unseen = submit("tiny");
  ASSERT_TRUE(unseen.ok()) << unseen.status();
  EXPECT_FALSE(unseen->job().has_memory_estimate());
}

// --------------------------------------------------------------- Item 10

TEST(ListenTest, ASecondCoordinatorOnTheSameAddressIsRefused) {
  Coordinator first;
  ASSERT_TRUE(first.StartServer().ok());
  Coordinator second;
  absl::Status status = second.StartServer(absl::StrCat("127.0.0.1:", first.port()));
  // With gRPC's default SO_REUSEPORT the second bind succeeds and the
  // kernel splits connections between the two.
  EXPECT_TRUE(absl::IsUnavailable(status)) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "in use")) << status;
  // The first one still answers.
  auto stub = first.NewStub();
  grpc::ClientContext context;
  context.AddMetadata("authorization", absl::StrCat("Bearer ", kAliceToken));
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  proto::ListJobsRequest request;
  proto::ListJobsResponse response;
  EXPECT_TRUE(stub->ListJobs(&context, request, &response).ok());
}

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

std::string Scrape(int port) {
  const int fd = Connect(port);
  if (fd < 0) return "";
  const std::string request = "GET /metrics HTTP/1.0\r\n\r\n";
  send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string response;
  char buffer[4096];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) response.append(buffer, n);
  close(fd);
  return response;
}

TEST(MetricsConcurrencyTest, SixIdleSocketsDoNotDelayAScrape) {
  auto server = MetricsHttpServer::Start("127.0.0.1", 0, [] {
    return std::string("sheaf_up 1\n");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  // Six sockets that connect and say nothing: served one at a time, each
  // held the server for its 5 s deadline (29.8 s measured in issue 9).
  std::vector<int> idle;
  for (int i = 0; i < 6; ++i) {
    const int fd = Connect(port);
    ASSERT_GE(fd, 0);
    idle.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto start = std::chrono::steady_clock::now();
  const std::string response = Scrape(port);
  const auto took = std::chrono::steady_clock::now() - start;
  for (int fd : idle) close(fd);
  EXPECT_TRUE(absl::StrContains(response, "sheaf_up 1")) << response;
  EXPECT_LT(took, std::chrono::seconds(2));
}

TEST(MetricsConcurrencyTest, ConnectionsOverTheCapAreAnswered503AtOnce) {
  auto server = MetricsHttpServer::Start("127.0.0.1", 0, [] {
    return std::string("sheaf_up 1\n");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  std::vector<int> idle;
  for (int i = 0; i < MetricsHttpServer::kMaxConnections; ++i) {
    const int fd = Connect(port);
    ASSERT_GE(fd, 0);
    idle.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto start = std::chrono::steady_clock::now();
  const std::string response = Scrape(port);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(absl::StrContains(response, "503")) << response;
  EXPECT_LT(took, std::chrono::seconds(2));
  for (int fd : idle) close(fd);
  // Once they are gone, scrapes are served again.
  std::string later;
  for (int i = 0; i < 50 && !absl::StrContains(later, "sheaf_up 1"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    later = Scrape(port);
  }
  EXPECT_TRUE(absl::StrContains(later, "sheaf_up 1")) << later;
}

TEST(PageTokenTest, RoundTripsAndRefusesForgedOrForeignTokens) {
  PageTokenCodec codec;
  const std::string token = codec.Encode("alice", 12345);
  auto seq = codec.Decode("alice", token);
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_EQ(*seq, 12345);
  // The sequence number does not show: not in the text, and two tokens for
  // the same position differ.
  EXPECT_FALSE(absl::StrContains(token, "12345")) << token;
  EXPECT_NE(codec.Encode("alice", 12345), token);
  // Another tenant's, another process's, altered or made-up tokens.
  EXPECT_TRUE(absl::IsInvalidArgument(codec.Decode("bob", token).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(PageTokenCodec().Decode("alice", token).status()));
  for (size_t i = 0; i < token.size(); ++i) {
    std::string altered = token;
    altered[i] = altered[i] == 'A' ? 'B' : 'A';
    EXPECT_FALSE(codec.Decode("alice", altered).ok()) << "byte " << i;
  }
  for (const char* forged : {"after:0", "after:12345", "", "AAAA", "%%%"}) {
    absl::StatusOr<int64_t> decoded = codec.Decode("alice", forged);
    EXPECT_TRUE(absl::IsInvalidArgument(decoded.status())) << forged;
    EXPECT_TRUE(absl::StrContains(decoded.status().message(), "page_token")) << forged;
  }
  // HMAC-SHA-256, RFC 4231 test case 2.
  EXPECT_EQ(absl::BytesToHexString(HmacSha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(PageTokenTest, ListJobsTokensAreOpaqueAndBoundToTheTenant) {
  Coordinator c;
  for (int i = 0; i < 5; ++i) {
    proto::SubmitJobRequest request;
    *request.mutable_spec() = GoodSpec();
    ASSERT_TRUE(c.service().SubmitJob(Caller::Tenant(i % 2 ? "bob" : "alice"), request).ok());
  }
  proto::ListJobsRequest request;
  request.set_page_size(1);
  auto first = c.service().ListJobs(Caller::Tenant("alice"), request);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_FALSE(first->next_page_token().empty());
  // The old format was "after:SEQ", the global job sequence.
  EXPECT_FALSE(absl::StrContains(first->next_page_token(), "after:"));
  // Alice follows her tokens to all three of her jobs.
  int alice_jobs = first->jobs_size();
  request.set_page_token(first->next_page_token());
  while (true) {
    auto page = c.service().ListJobs(Caller::Tenant("alice"), request);
    ASSERT_TRUE(page.ok()) << page.status();
    alice_jobs += page->jobs_size();
    if (page->next_page_token().empty()) break;
    request.set_page_token(page->next_page_token());
  }
  EXPECT_EQ(alice_jobs, 3);
  // Bob cannot use Alice's token, nor a hand-made one.
  request.set_page_token(first->next_page_token());
  auto foreign = c.service().ListJobs(Caller::Tenant("bob"), request);
  EXPECT_TRUE(absl::IsInvalidArgument(foreign.status())) << foreign.status();
  request.set_page_token("after:1");
  auto forged = c.service().ListJobs(Caller::Tenant("alice"), request);
  EXPECT_TRUE(absl::IsInvalidArgument(forged.status())) << forged.status();
}

// What a submit of `resources` answers: its warnings, and the job's id.
proto::SubmitJobResponse SubmitWith(Coordinator& c, const proto::ResourceRequest& resources) {
  proto::SubmitJobRequest request;
  *request.mutable_spec() = GoodSpec();
  *request.mutable_resources() = resources;
  auto response = c.service().SubmitJob(Caller::Tenant("alice"), request);
  EXPECT_TRUE(response.ok()) << response.status();
  return response.ok() ? *response : proto::SubmitJobResponse();
}

std::string WaitingReasonOf(Coordinator& c, const std::string& id) {
  proto::GetJobRequest request;
  request.set_job_id(id);
  auto job = c.service().GetJob(Caller::Tenant("alice"), request);
  EXPECT_TRUE(job.ok()) << job.status();
  return job.ok() ? job->waiting_reason() : "";
}

TEST(WaitingReasonTest, JobsNoRegisteredWorldCanRunAreNotedNotRefused) {
  Coordinator c;
  proto::ResourceRequest huge_world;
  huge_world.set_min_world_size(1000);
  // No world at all yet.
  proto::SubmitJobResponse none = SubmitWith(c, huge_world);
  ASSERT_EQ(none.warnings_size(), 1);
  EXPECT_TRUE(absl::StrContains(none.warnings(0), "no world has been seen")) << none.warnings(0);

  proto::RegisterWorldRequest world;
  world.set_world_size(4);
  world.set_memory_bytes(int64_t{16} << 30);
  ASSERT_TRUE(c.service().RegisterWorld(Caller::Worker(), world).ok());

  proto::SubmitJobResponse big = SubmitWith(c, huge_world);
  ASSERT_EQ(big.warnings_size(), 1);
  EXPECT_TRUE(absl::StrContains(big.warnings(0), "resources.min_world_size")) << big.warnings(0);
  EXPECT_TRUE(absl::StrContains(big.warnings(0), "the worlds have 4")) << big.warnings(0);
  EXPECT_EQ(big.job().state(), proto::JOB_STATE_PENDING);  // Accepted all the same.
  EXPECT_EQ(big.job().waiting_reason(), big.warnings(0));

  proto::ResourceRequest huge_memory;
  huge_memory.set_memory_bytes(int64_t{8000000} << 40);  // --memory 8000000T
  proto::SubmitJobResponse memory = SubmitWith(c, huge_memory);
  ASSERT_EQ(memory.warnings_size(), 1);
  EXPECT_TRUE(absl::StrContains(memory.warnings(0), "resources.memory_bytes")) << memory.warnings(0);
  EXPECT_FALSE(absl::StrContains(memory.warnings(0), "min_world_size")) << memory.warnings(0);

  proto::ResourceRequest gpu;
  gpu.set_device_kind(proto::DEVICE_KIND_CUDA);
  proto::SubmitJobResponse on_gpu = SubmitWith(c, gpu);
  ASSERT_EQ(on_gpu.warnings_size(), 1);
  EXPECT_TRUE(absl::StrContains(on_gpu.warnings(0), "resources.device_kind")) << on_gpu.warnings(0);

  // A job the world can run: no note.
  proto::SubmitJobResponse fits = SubmitWith(c, proto::ResourceRequest());
  EXPECT_EQ(fits.warnings_size(), 0) << fits.warnings(0);
  EXPECT_EQ(WaitingReasonOf(c, fits.job_id()), "");

  // status (GetJob), list and watch say it too.
  EXPECT_TRUE(absl::StrContains(WaitingReasonOf(c, big.job_id()), "min_world_size"));
  proto::ListJobsRequest list;
  auto listed = c.service().ListJobs(Caller::Tenant("alice"), list);
  ASSERT_TRUE(listed.ok()) << listed.status();
  int noted = 0;
  for (const proto::Job& job : listed->jobs()) noted += !job.waiting_reason().empty();
  EXPECT_EQ(noted, 4);
  std::string watched;
  proto::WatchJobRequest watch;
  watch.set_job_id(big.job_id());
  (void)c.service().WatchJob(
      Caller::Tenant("alice"), watch,
      [&](const proto::JobEvent& event) {
        if (event.has_state_change()) watched = event.state_change().waiting_reason();
        return false;  // One event is enough.
      },
      nullptr);
  EXPECT_TRUE(absl::StrContains(watched, "min_world_size")) << watched;

  // Worlds come and go: once one that fits registers, the note is gone.
  proto::RegisterWorldRequest large;
  large.set_world_size(1000);
  large.set_memory_bytes(int64_t{16} << 30);
  ASSERT_TRUE(c.service().RegisterWorld(Caller::Worker(), large).ok());
  EXPECT_EQ(WaitingReasonOf(c, big.job_id()), "");
  EXPECT_NE(WaitingReasonOf(c, memory.job_id()), "");
}

}  // namespace
}  // namespace sheaf::coordinator
