#include "coordinator/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace sheaf::coordinator {
namespace {

// Requests larger than this are refused (a GET line and a few headers).
constexpr size_t kMaxRequestBytes = 8192;
// How long one connection may take in all (request and answer).
constexpr std::chrono::milliseconds kConnectionDeadline(5000);

// Milliseconds left until `deadline` (0 when it has passed).
int RemainingMs(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

// Waits until `fd` is ready for `events` or the deadline passes.
bool WaitReady(int fd, short events,
               std::chrono::steady_clock::time_point deadline) {
  while (true) {
    const int left = RemainingMs(deadline);
    if (left <= 0) return false;
    pollfd pfd{fd, events, 0};
    const int r = poll(&pfd, 1, left);
    if (r < 0 && errno == EINTR) continue;
    return r > 0;
  }
}

void WriteAll(int fd, const std::string& data,
              std::chrono::steady_clock::time_point deadline) {
  size_t sent = 0;
  while (sent < data.size()) {
    if (!WaitReady(fd, POLLOUT, deadline)) return;  // Too slow: drop it.
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
      continue;
    }
    if (n <= 0) return;  // The scraper went away; nothing to do.
    sent += static_cast<size_t>(n);
  }
}

std::string Response(absl::string_view status, absl::string_view content_type,
                     absl::string_view body) {
  return absl::StrCat("HTTP/1.0 ", status, "\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", body.size(),
                      "\r\nConnection: close\r\n\r\n", body);
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, int port, std::function<std::string()> render) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (port < 0 || port > 65535 ||
      inet_pton(AF_INET, address.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics endpoint: bad address ", address, ":", port));
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics endpoint: socket: ", std::strerror(errno)));
  }
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(fd, 16) != 0) {
    const int error = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("metrics endpoint: bind ",
                                               address, ":", port, ": ",
                                               std::strerror(error)));
  }
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  std::unique_ptr<MetricsHttpServer> server(
      new MetricsHttpServer(fd, ntohs(addr.sin_port), std::move(render)));
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

MetricsHttpServer::MetricsHttpServer(int fd, int port,
                                     std::function<std::string()> render)
    : listen_fd_(fd), port_(port), render_(std::move(render)) {}

MetricsHttpServer::~MetricsHttpServer() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  // Connection threads end within their deadline.
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait(lock, [&] { return active_ == 0; });
  lock.unlock();
  close(listen_fd_);
}

void MetricsHttpServer::Serve() {
  while (!stop_) {
    pollfd pfd{listen_fd_, POLLIN, 0};
    // Wake up now and then to notice stop_.
    if (poll(&pfd, 1, 100) <= 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (active_ >= kMaxConnections) {
        // Full: answer at once rather than queue behind idle sockets.
        WriteAll(fd, Response("503 Service Unavailable", "text/plain",
                              "too many connections\n"),
                 std::chrono::steady_clock::now() + std::chrono::milliseconds(100));
        close(fd);
        continue;
      }
      ++active_;
    }
    std::thread([this, fd] {
      HandleConnection(fd);
      close(fd);
      std::lock_guard<std::mutex> lock(mu_);
      --active_;
      idle_.notify_all();
    }).detach();
  }
}

void MetricsHttpServer::HandleConnection(int fd) {
  // The one serving thread must not be held by a slow client: the whole
  // connection (reading the request and writing the answer) gets one
  // deadline, however the client trickles its bytes.
  const auto deadline =
      std::chrono::steady_clock::now() + kConnectionDeadline;
  auto write = [&](const std::string& data) { WriteAll(fd, data, deadline); };
  std::string request;
  char buffer[1024];
  while (request.find("\r\n\r\n") == std::string::npos &&
         request.find("\n\n") == std::string::npos) {
    if (request.size() > kMaxRequestBytes) {
      write(Response("431 Request Header Fields Too Large", "text/plain",
                     "request too large\n"));
      return;
    }
    if (!WaitReady(fd, POLLIN, deadline)) {
      // Too slow (or silent): close without answering.
      return;
    }
    const ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
      continue;
    }
    if (n <= 0) break;  // Closed: answer what we have.
    request.append(buffer, static_cast<size_t>(n));
  }
  const absl::string_view first_line =
      absl::string_view(request).substr(0, request.find_first_of("\r\n"));
  std::vector<absl::string_view> parts =
      absl::StrSplit(first_line, ' ', absl::SkipEmpty());
  if (parts.size() < 2) {
    write(Response("400 Bad Request", "text/plain", "bad request\n"));
    return;
  }
  if (parts[0] != "GET") {
    write(Response("405 Method Not Allowed", "text/plain",
                          "only GET is supported\n"));
    return;
  }
  absl::string_view path = parts[1];
  path = path.substr(0, path.find('?'));
  if (path != "/metrics") {
    write(Response("404 Not Found", "text/plain",
                          "not found; try /metrics\n"));
    return;
  }
  write(Response("200 OK", "text/plain; version=0.0.4; charset=utf-8",
                        render_()));
}

}  // namespace sheaf::coordinator
