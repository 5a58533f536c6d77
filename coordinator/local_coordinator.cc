#include "coordinator/local_coordinator.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sheaf::coordinator {

namespace fs = std::filesystem;

absl::StatusOr<TestCertificate> MakeTestCertificate() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string dir = absl::StrCat(base ? base : "/tmp", "/tls.XXXXXX");
  if (mkdtemp(dir.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", dir, " failed"));
  }
  TestCertificate c{dir + "/cert.pem", dir + "/key.pem"};
  const std::string command = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
      c.key_path, " -out ", c.cert_path, " >/dev/null 2>&1");
  if (std::system(command.c_str()) != 0) {
    return absl::InternalError("`openssl req` failed to make a test certificate (tools/setup.sh installs openssl)");
  }
  return c;
}

void SetBearerToken(grpc::ClientContext* context, absl::string_view token) {
  context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
}

absl::StatusOr<std::unique_ptr<LocalCoordinator>> LocalCoordinator::Start(
    LocalCoordinatorOptions options) {
  if (options.dir.empty()) {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string pattern =
        absl::StrCat(base ? base : "/tmp", "/coordinator.XXXXXX");
    if (mkdtemp(pattern.data()) == nullptr) {
      return absl::InternalError("mkdtemp failed");
    }
    options.dir = pattern;
  }
  std::unique_ptr<LocalCoordinator> local(new LocalCoordinator(std::move(options)));
  std::error_code error;
  for (const std::string& d :
       {local->model_root() + "/tiny", local->data_root(), local->output_root()}) {
    fs::create_directories(d, error);
    if (error) {
      return absl::InternalError(absl::StrCat(d, ": ", error.message()));
    }
  }
  std::ofstream(local->data_root() + "/corpus.txt") << "hello world\n";
  const std::string tokens = absl::StrCat(
      kAliceToken, " alice\n", kBobToken, " bob\n", kWorkerToken, " @worker\n");
  ASSIGN_OR_RETURN(local->auth_, TokenAuthenticator::FromText(tokens));
  RETURN_IF_ERROR(local->Serve());
  return local;
}

absl::Status LocalCoordinator::Serve() {
  ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store,
                   JobStore::Open({.path = db_path(), .sync = options_.sync}));
  ServiceOptions service_options;
  service_options.roots = {model_root(), data_root(), output_root()};
  service_options.scheduler = options_.scheduler;
  service_options.log = options_.log;
  service_options.stream_poll = absl::Milliseconds(50);
  ASSIGN_OR_RETURN(service_, CoordinatorService::Create(
                                 std::move(service_options), std::move(store),
                                 options_.clock));
  ServerOptions server_options;
  server_options.listen = "127.0.0.1:0";
  server_options.tls_cert_path = options_.tls_cert_path;
  server_options.tls_key_path = options_.tls_key_path;
  ASSIGN_OR_RETURN(server_, CoordinatorServer::Start(server_options,
                                                     service_.get(), auth_.get()));
  return absl::OkStatus();
}

LocalCoordinator::~LocalCoordinator() { Stop(); }

void LocalCoordinator::Stop() {
  if (server_) server_->Shutdown(absl::Seconds(2));
  server_.reset();
  service_.reset();
}

absl::Status LocalCoordinator::Restart() {
  Stop();
  return Serve();
}

std::string LocalCoordinator::target() const {
  return absl::StrCat("127.0.0.1:", port());
}

std::unique_ptr<proto::Coordinator::Stub> LocalCoordinator::NewStub() const {
  return proto::Coordinator::NewStub(
      grpc::CreateChannel(target(), grpc::InsecureChannelCredentials()));
}

}  // namespace sheaf::coordinator
