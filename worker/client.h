// The worker side of the Coordinator service (proto/coordinator.proto): a
// channel to the coordinator, the worker token on every call, a deadline on
// every call, and gRPC statuses turned into absl ones at this edge.
//
// The channel reconnects on its own after the coordinator restarts; its
// reconnect backoff is capped (Options::max_reconnect_backoff) so that a
// restarted coordinator is found again within a heartbeat interval or so.
// Heartbeat and CompleteJob wait for the channel to be ready (up to their
// deadline) instead of failing at once while it reconnects.
//
// Thread-safety: thread-safe (the heartbeat thread and the main thread share
// one client). CancelAcquire() may be called from any thread.
#ifndef SHEAF_WORKER_CLIENT_H_
#define SHEAF_WORKER_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/coordinator.grpc.pb.h"

namespace sheaf::worker {

struct ClientOptions {
  // host:port of the coordinator.
  std::string target;
  // The worker token (a `TOKEN @worker` line of the coordinator's tokens).
  std::string token;
  // PEM root certificates; non-empty: TLS, checked against these roots.
  std::string ca_pem;
  // Overrides the name the server certificate must carry (default: the
  // host part of `target`).
  std::string tls_server_name;
  absl::Duration max_reconnect_backoff = absl::Seconds(1);
};

// absl status from a gRPC one (the codes share their numbering).
absl::Status FromGrpcStatus(const grpc::Status& status);

class CoordinatorClient {
 public:
  // kInvalidArgument for an empty target or token.
  static absl::StatusOr<std::unique_ptr<CoordinatorClient>> Create(
      const ClientOptions& options);

  // Each call fails with the call's status (kUnavailable while the
  // coordinator is unreachable, kDeadlineExceeded after `timeout`, ...).
  absl::StatusOr<proto::RegisterWorldResponse> RegisterWorld(
      const proto::RegisterWorldRequest& request, absl::Duration timeout);
  // A long poll; kCancelled after CancelAcquire().
  absl::StatusOr<proto::AcquireJobResponse> AcquireJob(
      const proto::AcquireJobRequest& request, absl::Duration timeout);
  absl::StatusOr<proto::HeartbeatResponse> Heartbeat(
      const proto::HeartbeatRequest& request, absl::Duration timeout);
  absl::StatusOr<proto::CompleteJobResponse> CompleteJob(
      const proto::CompleteJobRequest& request, absl::Duration timeout);

  // Ends a waiting AcquireJob (if any) with kCancelled, and makes later ones
  // return kCancelled at once: for a worker that is shutting down.
  void CancelAcquire();

  const std::string& target() const { return options_.target; }

 private:
  CoordinatorClient(ClientOptions options,
                    std::unique_ptr<proto::Coordinator::Stub> stub)
      : options_(std::move(options)), stub_(std::move(stub)) {}
  void Prepare(grpc::ClientContext* context, absl::Duration timeout,
               bool wait_for_ready) const;

  const ClientOptions options_;
  std::unique_ptr<proto::Coordinator::Stub> stub_;
  absl::Mutex mu_;
  grpc::ClientContext* acquire_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool acquire_cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace sheaf::worker

#endif  // SHEAF_WORKER_CLIENT_H_
