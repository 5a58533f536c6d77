// A tiny HTTP/1.0 server on its own thread that answers GET /metrics with
// whatever `render` returns (Prometheus text format); 404 for other paths,
// 405 for other methods. One request per connection. Connections are
// served concurrently, each on its own thread (at most kMaxConnections at
// once; more are answered 503 at once), so idle or slow sockets cannot
// hold up a scrape (issue 9, item 10). Each connection has one overall
// deadline (5 s for the request and the answer together), so a client
// that trickles its bytes cannot hold a thread either.
//
// Lifecycle: Start() binds and starts the thread; the destructor stops it.
#ifndef SHEAF_COORDINATOR_HTTP_SERVER_H_
#define SHEAF_COORDINATOR_HTTP_SERVER_H_

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace sheaf::coordinator {

class MetricsHttpServer {
 public:
  // Listens on `address`:`port` (an IPv4 address; port 0 picks a free one).
  // kUnavailable when it cannot bind, kInvalidArgument for a bad address.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, int port,
      std::function<std::string()> render);

  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Connections served at once.
  static constexpr int kMaxConnections = 32;

  // The port actually bound.
  int port() const { return port_; }

 private:
  MetricsHttpServer(int fd, int port, std::function<std::string()> render);
  void Serve();
  void HandleConnection(int fd);

  const int listen_fd_;
  const int port_;
  const std::function<std::string()> render_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  // Connection threads running (detached; the destructor waits for 0).
  std::mutex mu_;
  std::condition_variable idle_;
  int active_ = 0;
};

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_HTTP_SERVER_H_
