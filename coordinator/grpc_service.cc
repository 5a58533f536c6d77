#include "coordinator/grpc_service.h"

#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace sheaf::coordinator {
namespace {

// A long poll answers this long before the call's deadline, so that the
// (empty) answer arrives instead of DEADLINE_EXCEEDED.
constexpr absl::Duration kDeadlineMargin = absl::Milliseconds(250);

absl::Time DeadlineOf(const grpc::ServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline) - kDeadlineMargin;
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string message(status.message());
  if (message.empty()) {
    message = absl::StrCat("error ", absl::StatusCodeToString(status.code()));
  }
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), message);
}

absl::StatusOr<Caller> GrpcCoordinatorService::Authenticate(
    const grpc::ServerContext& context) const {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return auth_->Authenticate("");
  return auth_->Authenticate(
      absl::string_view(it->second.data(), it->second.size()));
}

template <typename Response, typename Call>
grpc::Status GrpcCoordinatorService::Unary(grpc::ServerContext* context,
                                           Response* response, Call call) {
  absl::StatusOr<Caller> caller = Authenticate(*context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<Response> result = call(*caller);
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status GrpcCoordinatorService::SubmitJob(
    grpc::ServerContext* context, const proto::SubmitJobRequest* request,
    proto::SubmitJobResponse* response) {
  return Unary(context, response, [&](const Caller& caller) {
    return service_->SubmitJob(caller, *request);
  });
}

grpc::Status GrpcCoordinatorService::GetJob(grpc::ServerContext* context,
                                            const proto::GetJobRequest* request,
                                            proto::Job* response) {
  return Unary(context, response, [&](const Caller& caller) {
    return service_->GetJob(caller, *request);
  });
}

grpc::Status GrpcCoordinatorService::ListJobs(
    grpc::ServerContext* context, const proto::ListJobsRequest* request,
    proto::ListJobsResponse* response) {
  return Unary(context, response, [&](const Caller& caller) {
    return service_->ListJobs(caller, *request);
  });
}

grpc::Status GrpcCoordinatorService::CancelJob(
    grpc::ServerContext* context, const proto::CancelJobRequest* request,
    proto::Job* response) {
  return Unary(context, response, [&](const Caller& caller) {
    return service_->CancelJob(caller, *request);
  });
}

grpc::Status GrpcCoordinatorService::WatchJob(
    grpc::ServerContext* context, const proto::WatchJobRequest* request,
    grpc::ServerWriter<proto::JobEvent>* writer) {
  absl::StatusOr<Caller> caller = Authenticate(*context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  return ToGrpcStatus(service_->WatchJob(
      *caller, *request,
      [writer](const proto::JobEvent& event) { return writer->Write(event); },
      [context] { return context->IsCancelled(); }));
}

grpc::Status GrpcCoordinatorService::FetchArtifacts(
    grpc::ServerContext* context, const proto::FetchArtifactsRequest* request,
    grpc::ServerWriter<proto::ArtifactChunk>* writer) {
  absl::StatusOr<Caller> caller = Authenticate(*context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  // write_through: Write returns once the chunk is on the socket, not once
  // it is queued in the transport, so a stalled reader holds at most the
  // one chunk being written (issue 9, item 7). The service cuts off an
  // idle reader through TryCancel, which makes the blocked Write return.
  return ToGrpcStatus(service_->FetchArtifacts(
      *caller, *request,
      [writer](const proto::ArtifactChunk& chunk) {
        return writer->Write(chunk, grpc::WriteOptions().set_write_through());
      },
      [context] { return context->IsCancelled(); },
      [context] { context->TryCancel(); }));
}

grpc::Status GrpcCoordinatorService::RegisterWorld(
    grpc::ServerContext* context, const proto::RegisterWorldRequest* request,
    proto::RegisterWorldResponse* response) {
  return Unary(context, response, [&](const Caller& caller) {
    return service_->RegisterWorld(caller, *request);
  });
}

grpc::Status GrpcCoordinatorService::AcquireJob(
    grpc::ServerContext* context, const proto::AcquireJobRequest* request,
    proto::AcquireJobResponse* response) {
  return Unary(context, response, [&](const Caller& caller) {
    return service_->AcquireJob(caller, *request, DeadlineOf(*context),
                                [context] { return context->IsCancelled(); });
  });
}

grpc::Status GrpcCoordinatorService::Heartbeat(
    grpc::ServerContext* context, const proto::HeartbeatRequest* request,
    proto::HeartbeatResponse* response) {
  return Unary(context, response, [&](const Caller& caller) {
    return service_->Heartbeat(caller, *request);
  });
}

grpc::Status GrpcCoordinatorService::CompleteJob(
    grpc::ServerContext* context, const proto::CompleteJobRequest* request,
    proto::CompleteJobResponse* response) {
  return Unary(context, response, [&](const Caller& caller) {
    return service_->CompleteJob(caller, *request);
  });
}

}  // namespace sheaf::coordinator
