// RPC mapping: proto::Coordinator's gRPC methods onto CoordinatorService.
// The only place that reads call metadata (the bearer token) and that turns
// absl::Status into grpc::Status.
//
// Thread-safety: thread-safe (stateless; the service is).
#ifndef SHEAF_COORDINATOR_GRPC_SERVICE_H_
#define SHEAF_COORDINATOR_GRPC_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "coordinator/auth.h"
#include "coordinator/service.h"
#include "proto/coordinator.grpc.pb.h"

namespace sheaf::coordinator {

// Same code, same message; an OK status maps to OK. Never returns INTERNAL
// with an empty message (server.h reserves that for undecodable requests).
grpc::Status ToGrpcStatus(const absl::Status& status);

class GrpcCoordinatorService final : public proto::Coordinator::Service {
 public:
  // Both must outlive this object.
  GrpcCoordinatorService(CoordinatorService* service,
                         const TokenAuthenticator* auth)
      : service_(service), auth_(auth) {}

  grpc::Status SubmitJob(grpc::ServerContext* context,
                         const proto::SubmitJobRequest* request,
                         proto::SubmitJobResponse* response) override;
  grpc::Status GetJob(grpc::ServerContext* context,
                      const proto::GetJobRequest* request,
                      proto::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context,
                        const proto::ListJobsRequest* request,
                        proto::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context,
                         const proto::CancelJobRequest* request,
                         proto::Job* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context,
                        const proto::WatchJobRequest* request,
                        grpc::ServerWriter<proto::JobEvent>* writer) override;
  grpc::Status FetchArtifacts(
      grpc::ServerContext* context, const proto::FetchArtifactsRequest* request,
      grpc::ServerWriter<proto::ArtifactChunk>* writer) override;
  grpc::Status RegisterWorld(grpc::ServerContext* context,
                             const proto::RegisterWorldRequest* request,
                             proto::RegisterWorldResponse* response) override;
  grpc::Status AcquireJob(grpc::ServerContext* context,
                          const proto::AcquireJobRequest* request,
                          proto::AcquireJobResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context,
                         const proto::HeartbeatRequest* request,
                         proto::HeartbeatResponse* response) override;
  grpc::Status CompleteJob(grpc::ServerContext* context,
                           const proto::CompleteJobRequest* request,
                           proto::CompleteJobResponse* response) override;

 private:
  absl::StatusOr<Caller> Authenticate(const grpc::ServerContext& context) const;

  // Authenticates, runs `call(caller)`, and maps its result onto `response`.
  template <typename Response, typename Call>
  grpc::Status Unary(grpc::ServerContext* context, Response* response,
                     Call call);

  CoordinatorService* const service_;
  const TokenAuthenticator* const auth_;
};

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_GRPC_SERVICE_H_
