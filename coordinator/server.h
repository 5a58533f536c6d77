// Transport: a gRPC server (TLS when a certificate and key are given)
// serving GrpcCoordinatorService.
//
// Requests that do not decode (a proto3 string field holding invalid UTF-8
// fails to parse, and gRPC then answers INTERNAL with no message) are
// answered INVALID_ARGUMENT with a message that says so; the server goes on
// serving.
//
// Lifecycle: Start() binds and serves on gRPC's threads; Shutdown() (or
// the destructor) ends long polls and streams through the service, then
// stops the server.
#ifndef SHEAF_COORDINATOR_SERVER_H_
#define SHEAF_COORDINATOR_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/auth.h"
#include "coordinator/grpc_service.h"
#include "coordinator/service.h"

namespace sheaf::coordinator {

struct ServerOptions {
  // host:port; port 0 picks a free one (see CoordinatorServer::port()).
  std::string listen = "0.0.0.0:7070";
  // PEM files; both or neither. Without them the server is plaintext.
  std::string tls_cert_path;
  std::string tls_key_path;
  // Larger requests are refused by gRPC (RESOURCE_EXHAUSTED) before they
  // are decoded; specs are limited far below this (limits.h).
  int max_receive_message_bytes = 1 << 20;
};

class CoordinatorServer {
 public:
  // `service` and `auth` must outlive the server. kInvalidArgument for a
  // half-given TLS pair, kNotFound for unreadable PEM files, kUnavailable
  // when the address cannot be bound (also when another coordinator, or
  // any other program, already listens there: SO_REUSEPORT is off).
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const ServerOptions& options, CoordinatorService* service,
      const TokenAuthenticator* auth);

  ~CoordinatorServer();
  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  // The bound port.
  int port() const { return port_; }
  bool tls() const { return tls_; }

  // Ends waiting calls and stops serving; calls still running after
  // `grace` are cancelled. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

 private:
  CoordinatorServer(CoordinatorService* service,
                    std::unique_ptr<GrpcCoordinatorService> grpc_service)
      : service_(service), grpc_service_(std::move(grpc_service)) {}

  CoordinatorService* const service_;
  std::unique_ptr<GrpcCoordinatorService> grpc_service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool tls_ = false;
  bool shut_down_ = false;
};

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_SERVER_H_
