#include "coordinator/server.h"

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/server_interceptor.h>

#include <chrono>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/file.h"

namespace sheaf::coordinator {
namespace {

// Rewrites the status gRPC sends when a request message fails to decode.
// The handler never ran; gRPC's answer is INTERNAL with an empty message
// (proto3 has no InitializationErrorString), which our handlers never send
// (ToGrpcStatus fills in a message).
class UndecodableRequestInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit UndecodableRequestInterceptor(grpc::experimental::ServerRpcInfo* info)
      : method_(info->method() ? info->method() : "") {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      if (status.error_code() == grpc::StatusCode::INTERNAL &&
          status.error_message().empty()) {
        methods->ModifySendStatus(grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("malformed request to ", method_,
                         ": it does not decode as the method's request "
                         "message (is every string field valid UTF-8?)")));
      }
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
};

class UndecodableRequestInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new UndecodableRequestInterceptor(info);
  }
};

// A PEM file; kNotFound (the documented code) whatever the reason.
absl::StatusOr<std::string> ReadPemFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return absl::NotFoundError(text.status().message());
  return text;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const ServerOptions& options, CoordinatorService* service,
    const TokenAuthenticator* auth) {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  const bool tls = !options.tls_cert_path.empty() || !options.tls_key_path.empty();
  if (tls) {
    if (options.tls_cert_path.empty() || options.tls_key_path.empty()) {
      return absl::InvalidArgumentError(
          "TLS needs both a certificate (--tls-cert) and a key (--tls-key)");
    }
    absl::StatusOr<std::string> cert = ReadPemFile(options.tls_cert_path);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPemFile(options.tls_key_path);
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    credentials = grpc::SslServerCredentials(ssl);
  } else {
    credentials = grpc::InsecureServerCredentials();
  }

  std::unique_ptr<CoordinatorServer> server(new CoordinatorServer(
      service, std::make_unique<GrpcCoordinatorService>(service, auth)));
  // grpc.health.v1.Health (the default implementation), for Kubernetes'
  // `grpc:` probes and load balancers: SERVING while the service is up,
  // NOT_SERVING from Shutdown on. It needs no token and says nothing else.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &server->port_);
  builder.RegisterService(server->grpc_service_.get());
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  // gRPC sets SO_REUSEPORT on its listeners by default, so a second
  // coordinator on the same host:port would bind too and the kernel would
  // split connections between the two (issue 9, item 10). Without it the
  // second bind fails with EADDRINUSE.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(std::make_unique<UndecodableRequestInterceptorFactory>());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.listen,
        ": the address is in use (another sheaf-coordinator, or another "
        "program, already serves that port; each coordinator needs its own "
        "--listen address and its own --db) or cannot be bound here"));
  }
  server->tls_ = tls;
  return server;
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

void CoordinatorServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  // Long polls and watch streams return once the service shuts down, so
  // the server can drain.
  if (server_ != nullptr && server_->GetHealthCheckService() != nullptr) {
    server_->GetHealthCheckService()->SetServingStatus(false);
  }
  service_->Shutdown();
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() +
                      absl::ToChronoMilliseconds(grace));
    server_->Wait();
  }
}

}  // namespace sheaf::coordinator
