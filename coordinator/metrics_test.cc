#include "coordinator/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "coordinator/http_server.h"
#include "gtest/gtest.h"

namespace sheaf::coordinator {
namespace {

bool Contains(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

TEST(MetricsTest, RendersPrometheusText) {
  CoordinatorMetrics metrics;
  metrics.CountSubmission();
  metrics.CountSubmission();
  metrics.CountHeartbeat();
  metrics.CountTransition(proto::JOB_STATE_LEASED);
  metrics.ObserveQueueWait(absl::Milliseconds(3));
  metrics.ObserveQueueWait(absl::Seconds(2));
  metrics.ObserveQueueWait(absl::Hours(5));
  metrics.SetJobTokensPerSecond("job-1", "alice", 1234.5);
  metrics.SetJobTokensPerSecond("job-2", "bob", 10);
  metrics.ForgetJob("job-2");
  const std::string text = metrics.Render(
      {{proto::JOB_STATE_PENDING, 3}, {proto::JOB_STATE_SUCCEEDED, 7}}, 2);
  EXPECT_TRUE(Contains(text, "# TYPE sheaf_jobs gauge\n"));
  EXPECT_TRUE(Contains(text, "sheaf_jobs{state=\"pending\"} 3\n"));
  EXPECT_TRUE(Contains(text, "sheaf_jobs{state=\"running\"} 0\n"));
  EXPECT_TRUE(Contains(text, "sheaf_jobs{state=\"succeeded\"} 7\n"));
  EXPECT_TRUE(Contains(text, "sheaf_active_leases 2\n"));
  EXPECT_TRUE(Contains(text, "sheaf_submissions_total 2\n"));
  EXPECT_TRUE(Contains(text, "sheaf_heartbeats_total 1\n"));
  EXPECT_TRUE(Contains(text, "sheaf_job_transitions_total{to=\"leased\"} 1\n"));
  EXPECT_TRUE(Contains(text, "sheaf_queue_wait_seconds_bucket{le=\"0.005\"} 1\n"));
  EXPECT_TRUE(Contains(text, "sheaf_queue_wait_seconds_bucket{le=\"2.5\"} 2\n"));
  EXPECT_TRUE(Contains(text, "sheaf_queue_wait_seconds_bucket{le=\"+Inf\"} 3\n"));
  EXPECT_TRUE(Contains(text, "sheaf_queue_wait_seconds_count 3\n"));
  EXPECT_TRUE(Contains(
      text, "sheaf_job_tokens_per_second{job=\"job-1\",tenant=\"alice\"} 1234.5\n"));
  EXPECT_FALSE(Contains(text, "job-2"));
}

std::string HttpRequest(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(write(fd, request.data(), request.size()),
            static_cast<ssize_t>(request.size()));
  std::string response;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
  close(fd);
  return response;
}

TEST(MetricsHttpServerTest, ServesMetricsAndRefusesTheRest) {
  int scrapes = 0;
  auto server = MetricsHttpServer::Start("127.0.0.1", 0, [&] {
    ++scrapes;
    return std::string("sheaf_up 1\n");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);
  std::string response = HttpRequest(port, "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_EQ(response.rfind("HTTP/1.0 200 OK\r\n", 0), 0u) << response;
  EXPECT_TRUE(Contains(response, "text/plain; version=0.0.4"));
  EXPECT_TRUE(Contains(response, "\r\n\r\nsheaf_up 1\n"));
  EXPECT_TRUE(Contains(HttpRequest(port, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n"),
                       "404 Not Found"));
  EXPECT_TRUE(Contains(HttpRequest(port, "POST /metrics HTTP/1.0\r\n\r\n"),
                       "405 Method Not Allowed"));
  EXPECT_TRUE(Contains(HttpRequest(port, "garbage\r\n\r\n"), "400 Bad Request"));
  EXPECT_TRUE(Contains(HttpRequest(port, std::string(10000, 'A')), "431"));
  EXPECT_EQ(scrapes, 1);
  // Still serving after all that.
  EXPECT_TRUE(Contains(HttpRequest(port, "GET /metrics HTTP/1.0\r\n\r\n"),
                       "sheaf_up 1"));
  EXPECT_FALSE(MetricsHttpServer::Start("not-an-ip", 0, [] { return ""; }).ok());
}

TEST(MetricsHttpServerTest, ASlowClientDoesNotBlockTheScraper) {
  auto server = MetricsHttpServer::Start("127.0.0.1", 0, [] {
    return std::string("sheaf_up 1\n");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  // A client that sends one byte every 1.5 s (each recv alone would be
  // within a per-recv timeout) for up to 120 s; with its 40 bytes it holds a
  // connection ~60 s unless the server's 5 s connection deadline drops it.
  std::atomic<bool> done{false};
  std::thread slow([&] {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    const std::string request = "GET /metrics HTTP/1.0\r\nX-Slow: aaaaaaaa";
    const auto start = std::chrono::steady_clock::now();
    for (size_t i = 0; !done && i < request.size() &&
                       std::chrono::steady_clock::now() - start < std::chrono::seconds(120);
         ++i) {
      if (send(fd, &request[i], 1, MSG_NOSIGNAL) != 1) break;  // Closed on us.
      for (int t = 0; t < 15 && !done; ++t) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
    close(fd);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto start = std::chrono::steady_clock::now();
  const std::string response = HttpRequest(port, "GET /metrics HTTP/1.0\r\n\r\n");
  const auto took = std::chrono::steady_clock::now() - start;
  done = true;
  slow.join();
  EXPECT_TRUE(Contains(response, "sheaf_up 1")) << response;
  // ~5 s (the deadline) when it works, ~60 s when the slow client holds the
  // serving thread: 30 s tells them apart with room for a loaded machine.
  EXPECT_LT(took, std::chrono::seconds(30));
}

}  // namespace
}  // namespace sheaf::coordinator
