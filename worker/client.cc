#include "worker/client.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace sheaf::worker {

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

absl::StatusOr<std::unique_ptr<CoordinatorClient>> CoordinatorClient::Create(
    const ClientOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError(
        "coordinator address: not set (--coordinator HOST:PORT or SHEAF_ADDR)");
  }
  if (options.token.empty()) {
    return absl::InvalidArgumentError(
        "worker token: not set (--token-file FILE or SHEAF_TOKEN)");
  }
  grpc::ChannelArguments args;
  // gRPC's default reconnect backoff grows to 2 minutes; a restarted
  // coordinator must be found well within a lease TTL.
  const int max_backoff_ms = static_cast<int>(
      std::max<int64_t>(100, absl::ToInt64Milliseconds(options.max_reconnect_backoff)));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(250, max_backoff_ms));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, std::min(250, max_backoff_ms));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_backoff_ms);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.ca_pem.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.ca_pem;
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name);
    }
  }
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.target, credentials, args);
  return std::unique_ptr<CoordinatorClient>(
      new CoordinatorClient(options, proto::Coordinator::NewStub(channel)));
}

void CoordinatorClient::Prepare(grpc::ClientContext* context, absl::Duration timeout,
                                bool wait_for_ready) const {
  context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(std::max<int64_t>(
                            1, absl::ToInt64Milliseconds(timeout))));
  context->set_wait_for_ready(wait_for_ready);
}

absl::StatusOr<proto::RegisterWorldResponse> CoordinatorClient::RegisterWorld(
    const proto::RegisterWorldRequest& request, absl::Duration timeout) {
  grpc::ClientContext context;
  Prepare(&context, timeout, /*wait_for_ready=*/false);
  proto::RegisterWorldResponse response;
  grpc::Status status = stub_->RegisterWorld(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<proto::AcquireJobResponse> CoordinatorClient::AcquireJob(
    const proto::AcquireJobRequest& request, absl::Duration timeout) {
  grpc::ClientContext context;
  Prepare(&context, timeout, /*wait_for_ready=*/false);
  {
    absl::MutexLock lock(&mu_);
    if (acquire_cancelled_) return absl::CancelledError("the worker is stopping");
    acquire_context_ = &context;
  }
  proto::AcquireJobResponse response;
  grpc::Status status = stub_->AcquireJob(&context, request, &response);
  {
    absl::MutexLock lock(&mu_);
    acquire_context_ = nullptr;
  }
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<proto::HeartbeatResponse> CoordinatorClient::Heartbeat(
    const proto::HeartbeatRequest& request, absl::Duration timeout) {
  grpc::ClientContext context;
  Prepare(&context, timeout, /*wait_for_ready=*/true);
  proto::HeartbeatResponse response;
  grpc::Status status = stub_->Heartbeat(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<proto::CompleteJobResponse> CoordinatorClient::CompleteJob(
    const proto::CompleteJobRequest& request, absl::Duration timeout) {
  grpc::ClientContext context;
  Prepare(&context, timeout, /*wait_for_ready=*/true);
  proto::CompleteJobResponse response;
  grpc::Status status = stub_->CompleteJob(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

void CoordinatorClient::CancelAcquire() {
  absl::MutexLock lock(&mu_);
  acquire_cancelled_ = true;
  if (acquire_context_ != nullptr) acquire_context_->TryCancel();
}

}  // namespace sheaf::worker
