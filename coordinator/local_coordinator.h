// A whole coordinator in this process, on loopback: its own directory with
// model, data and output roots, a tokens file with two tenants and a worker
// token, a database, the service and a gRPC server on a free port. For
// tests, benchmarks and demos.
//
// Layout under dir():
//   models/tiny/          (an empty model directory)
//   data/corpus.txt       (a few bytes of text)
//   out/                  output root
//   tokens                alice, bob, @worker
//   jobs.db
//
// Thread-safety: Restart() and Stop() must not race with other calls; the
// stubs it hands out are thread-safe.
#ifndef SHEAF_COORDINATOR_LOCAL_COORDINATOR_H_
#define SHEAF_COORDINATOR_LOCAL_COORDINATOR_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coordinator/auth.h"
#include "coordinator/clock.h"
#include "coordinator/scheduler.h"
#include "coordinator/server.h"
#include "coordinator/service.h"
#include "coordinator/store.h"
#include "proto/coordinator.grpc.pb.h"

namespace sheaf::coordinator {

// A self-signed certificate for localhost / 127.0.0.1 made with the
// `openssl` command (installed by tools/setup.sh) in a new directory under
// $TEST_TMPDIR or /tmp, for TLS tests. Internal error when openssl fails.
struct TestCertificate {
  std::string cert_path;
  std::string key_path;
};
absl::StatusOr<TestCertificate> MakeTestCertificate();

struct LocalCoordinatorOptions {
  // Created (mkdtemp under $TEST_TMPDIR or /tmp) when empty.
  std::string dir;
  SchedulerOptions scheduler;
  // Must outlive the coordinator.
  const Clock* clock = Clock::Real();
  SyncMode sync = SyncMode::kFull;
  std::function<void(absl::string_view)> log;
  // TLS when both are set.
  std::string tls_cert_path;
  std::string tls_key_path;
};

class LocalCoordinator {
 public:
  static constexpr char kAliceToken[] = "alice-token-0123456789";
  static constexpr char kBobToken[] = "bob-token-0123456789ab";
  static constexpr char kWorkerToken[] = "worker-token-0123456789";

  static absl::StatusOr<std::unique_ptr<LocalCoordinator>> Start(
      LocalCoordinatorOptions options);
  ~LocalCoordinator();

  // Stops the server and closes the database cleanly.
  void Stop();
  // Stop(), then serve again from the same files (on a new port).
  absl::Status Restart();

  // "127.0.0.1:PORT".
  std::string target() const;
  int port() const { return server_ ? server_->port() : 0; }
  // A plaintext stub (TLS tests build their own channel).
  std::unique_ptr<proto::Coordinator::Stub> NewStub() const;

  const std::string& dir() const { return options_.dir; }
  std::string model_root() const { return dir() + "/models"; }
  std::string data_root() const { return dir() + "/data"; }
  std::string output_root() const { return dir() + "/out"; }
  std::string db_path() const { return dir() + "/jobs.db"; }
  CoordinatorService& service() { return *service_; }

 private:
  explicit LocalCoordinator(LocalCoordinatorOptions options)
      : options_(std::move(options)) {}
  absl::Status Serve();

  LocalCoordinatorOptions options_;
  std::unique_ptr<TokenAuthenticator> auth_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<CoordinatorServer> server_;
};

// Adds `authorization: Bearer TOKEN` to a call.
void SetBearerToken(grpc::ClientContext* context, absl::string_view token);

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_LOCAL_COORDINATOR_H_
