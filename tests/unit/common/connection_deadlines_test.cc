// ConnectionDeadlines on real loopback sockets: Track finds the socket just
// accepted, and a connection past its stage's deadline is shut down (its
// server thread's read ends), while one being served is left alone.
#include "common/connection_deadlines.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "testing/loopback.h"

namespace moe::common {
namespace {

// How long a blocking read on `fd` waited until it ended (at EOF).
absl::Duration ReadUntilEnd(int fd) {
  const absl::Time start = absl::Now();
  char byte;
  EXPECT_EQ(recv(fd, &byte, 1, 0), 0);
  return absl::Now() - start;
}

// A listening socket on 127.0.0.1, deadlines on its port (300 ms for a
// head and for a body), and the cuts they report.
class ConnectionDeadlinesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(addr);
    ASSERT_EQ(bind(listener_, reinterpret_cast<sockaddr*>(&addr), length), 0);
    ASSERT_EQ(listen(listener_, 4), 0);
    getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &length);
    port_ = ntohs(addr.sin_port);
  }
  void TearDown() override {
    deadlines_.reset();
    if (client_ >= 0) close(client_);
    close(listener_);
  }

  // Starts the deadlines with `options` (the cuts recorded here).
  void Start(ConnectionDeadlines::Options options) {
    options.on_cut = [this](const ConnectionDeadlines::Cut& cut) {
      absl::MutexLock lock(&mu_);
      cuts_.push_back(cut);
    };
    absl::StatusOr<std::unique_ptr<ConnectionDeadlines>> d =
        ConnectionDeadlines::Start(port_, std::move(options));
    ASSERT_TRUE(d.ok()) << d.status();
    deadlines_ = *std::move(d);
  }
  static ConnectionDeadlines::Options Short() {
    ConnectionDeadlines::Options o;
    o.head = absl::Milliseconds(300);
    o.body = absl::Milliseconds(300);
    return o;
  }
  // Connects a client and accepts it; returns the server's end (with a
  // 10 s receive timeout).
  int Connect() {
    client_ = testing::ConnectLoopback(port_);
    const int server = accept(listener_, nullptr, nullptr);
    const timeval limit{10, 0};
    setsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
    return server;
  }
  // The client's "127.0.0.1:PORT", as the server sees it.
  std::string ClientName() const {
    sockaddr_in addr{};
    socklen_t length = sizeof(addr);
    getsockname(client_, reinterpret_cast<sockaddr*>(&addr), &length);
    return "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  }
  // The cuts reported, once there are `expected` (on_cut runs just after
  // the shutdown that ended the serving thread's read) or 5 s have passed.
  std::vector<ConnectionDeadlines::Cut> Cuts(size_t expected) {
    absl::MutexLock lock(&mu_);
    const auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return cuts_.size() >= expected;
    };
    mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(5));
    return cuts_;
  }

  int listener_ = -1;
  int client_ = -1;
  int port_ = 0;
  std::unique_ptr<ConnectionDeadlines> deadlines_;
  absl::Mutex mu_;
  std::vector<ConnectionDeadlines::Cut> cuts_ ABSL_GUARDED_BY(mu_);
};

TEST_F(ConnectionDeadlinesTest, ASilentConnectionIsShutDownAfterItsHead) {
  Start(Short());
  const int fd = Connect();
  absl::Duration waited;
  std::function<void()> serve =
      deadlines_->Track([&] { waited = ReadUntilEnd(fd); });
  EXPECT_EQ(deadlines_->tracked(), 1);
  EXPECT_EQ(deadlines_->untracked(), 0);
  std::thread(serve).join();
  close(fd);
  EXPECT_GE(waited, absl::Milliseconds(250));
  EXPECT_LT(waited, absl::Seconds(5));
  EXPECT_EQ(deadlines_->tracked(), 0);
  const auto cuts = Cuts(1);
  ASSERT_EQ(cuts.size(), 1u);
  EXPECT_EQ(cuts[0].stage, ConnectionDeadlines::Stage::kHead);
  EXPECT_EQ(cuts[0].peer, ClientName());
  EXPECT_EQ(cuts[0].why,
            "no whole request head came within 300ms of its start or its last "
            "answer");
}

TEST_F(ConnectionDeadlinesTest, AConnectionBeingServedHasNoDeadline) {
  Start(Short());
  const int fd = Connect();
  absl::Duration waited;
  std::thread thread(deadlines_->Track([&] {
    ConnectionDeadlines::BodyNext(0);
    ConnectionDeadlines::Serving();
    // Three head deadlines long; the connection still carries an answer.
    absl::SleepFor(absl::Milliseconds(900));
    EXPECT_EQ(send(fd, "y", 1, MSG_NOSIGNAL), 1);
    ConnectionDeadlines::Answered();
    waited = ReadUntilEnd(fd);
  }));
  char byte = 0;
  EXPECT_EQ(recv(client_, &byte, 1, 0), 1);
  EXPECT_EQ(byte, 'y');
  thread.join();
  close(fd);
  // Then the next head's deadline runs from the answer.
  EXPECT_GE(waited, absl::Milliseconds(250));
  const auto cuts = Cuts(1);
  ASSERT_EQ(cuts.size(), 1u);
  EXPECT_EQ(cuts[0].stage, ConnectionDeadlines::Stage::kHead);
}

// A body earns one second per `body_bytes_per_second` of it received, not
// of its announced length: a client that announces a large body and sends
// nothing (or a byte now and then) is cut after the body's deadline alone,
// as it would have held its thread for the whole length's time; one that
// keeps to the rate is not cut while it sends.
TEST_F(ConnectionDeadlinesTest, ABodyEarnsTimeAsItsBytesCome) {
  ConnectionDeadlines::Options options = Short();
  options.body_bytes_per_second = 1000;
  Start(options);
  // Reads until the connection ends; how long that took, and the bytes.
  auto drain = [](int fd, int64_t* bytes) {
    const absl::Time start = absl::Now();
    char chunk[4096];
    for (ssize_t n; (n = recv(fd, chunk, sizeof(chunk), 0)) > 0;) *bytes += n;
    return absl::Now() - start;
  };

  // 10,000 bytes announced (10.3 s under a rule by length), none sent.
  int fd = Connect();
  absl::Duration silent;
  int64_t bytes = 0;
  std::thread(deadlines_->Track([&] {
    ConnectionDeadlines::BodyNext(10'000);
    silent = drain(fd, &bytes);
  })).join();
  close(fd);
  EXPECT_GE(silent, absl::Milliseconds(250));
  EXPECT_LT(silent, absl::Seconds(2));
  auto cuts = Cuts(1);
  ASSERT_EQ(cuts.size(), 1u);
  EXPECT_EQ(cuts[0].stage, ConnectionDeadlines::Stage::kBody);
  EXPECT_EQ(cuts[0].why,
            "its request's body was not in within 300ms of its head (0 of its "
            "10000 bytes came)");
  close(client_);

  // 2,000 bytes in 1 s (twice the rate), then nothing: cut 300 ms plus
  // 2 s after the body began.
  fd = Connect();
  absl::Duration paced;
  bytes = 0;
  absl::Notification body_next;
  std::thread server(deadlines_->Track([&] {
    ConnectionDeadlines::BodyNext(10'000);
    body_next.Notify();
    paced = drain(fd, &bytes);
  }));
  body_next.WaitForNotification();
  const std::string hundred(100, 'b');
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(send(client_, hundred.data(), hundred.size(), MSG_NOSIGNAL), 100);
    absl::SleepFor(absl::Milliseconds(50));
  }
  server.join();
  close(fd);
  EXPECT_EQ(bytes, 2000);
  EXPECT_GE(paced, absl::Milliseconds(2000));
  EXPECT_LT(paced, absl::Seconds(5));
  cuts = Cuts(2);
  ASSERT_EQ(cuts.size(), 2u);
  EXPECT_EQ(cuts[1].why,
            "its request's body was not in within 2.3s of its head (2000 of "
            "its 10000 bytes came)");
}

TEST_F(ConnectionDeadlinesTest, AConnectionWaitingForAThreadHasNoDeadlineYet) {
  Start(Short());
  const int fd = Connect();
  std::function<void()> serve =
      deadlines_->Track([&] { EXPECT_EQ(send(fd, "y", 1, MSG_NOSIGNAL), 1); });
  absl::SleepFor(absl::Milliseconds(900));
  serve();
  char byte = 0;
  EXPECT_EQ(recv(client_, &byte, 1, 0), 1);
  close(fd);
  EXPECT_TRUE(Cuts(0).empty());
}

TEST_F(ConnectionDeadlinesTest, AHeadPastItsSizeIsShutDownBeforeItsDeadline) {
  ConnectionDeadlines::Options options = Short();
  options.head = absl::Seconds(20);
  options.max_head_bytes = 4096;
  Start(options);
  const int fd = Connect();
  absl::Duration waited;
  int64_t read = 0;
  std::thread thread(deadlines_->Track([&] {
    const absl::Time start = absl::Now();
    char chunk[1024];
    for (ssize_t n; (n = recv(fd, chunk, sizeof(chunk), 0)) > 0;) read += n;
    waited = absl::Now() - start;
  }));
  // 64 KiB of header lines, a line every millisecond or so.
  const std::string line = "X-Header: 0123456789abcdef0123456789abcdef\r\n";
  for (int i = 0; i < 1500 && testing::SendAll(client_, line); ++i) {
    absl::SleepFor(absl::Microseconds(500));
  }
  thread.join();
  close(fd);
  EXPECT_LT(waited, absl::Seconds(10));
  EXPECT_GT(read, 4096);
  EXPECT_LT(read, 64 * 1024);
  const auto cuts = Cuts(1);
  ASSERT_EQ(cuts.size(), 1u);
  EXPECT_EQ(cuts[0].stage, ConnectionDeadlines::Stage::kHead);
  EXPECT_GT(cuts[0].head_bytes, 4096);
  EXPECT_EQ(cuts[0].why, absl::StrCat("its request's head passed 4096 bytes (",
                                      cuts[0].head_bytes, " read)"));
}

// A client still sending when its connection is cut learns at once: the
// close resets the connection. (Closed gracefully, the shut-down socket
// advertised a zero window and the client's send blocked until its own
// timeout: 30 s for Python's http.client posting 400 MB.)
TEST_F(ConnectionDeadlinesTest, AClientStillSendingIsResetNotLeftWaiting) {
  ConnectionDeadlines::Options options = Short();
  options.head = absl::Seconds(20);
  options.max_head_bytes = 4096;
  Start(options);
  const int fd = Connect();
  // The server reads until the cut ends its reads, then closes its socket
  // (as httplib does).
  std::thread thread(deadlines_->Track([&] {
    char chunk[4096];
    while (recv(fd, chunk, sizeof(chunk), 0) > 0) {
    }
    close(fd);
  }));
  const timeval limit{3, 0};
  setsockopt(client_, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
  // A head without end, until a send fails (for at most 8 s).
  const std::string chunk(1 << 20, 'a');
  const absl::Time start = absl::Now();
  int error = 0;
  while (absl::Now() - start < absl::Seconds(8)) {
    if (!testing::SendAll(client_, chunk)) {
      error = errno;
      break;
    }
  }
  const absl::Duration took = absl::Now() - start;
  thread.join();
  EXPECT_TRUE(error == ECONNRESET || error == EPIPE) << strerror(error);
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_EQ(Cuts(1).size(), 1u);
}

// A client that sends its body right behind its head has all of it in the
// kernel's buffer before a busy server parses the head: only the bytes the
// server reads count toward the head's size. (Counting the bytes received,
// a 330 KB JSON body was cut as a head on a loaded machine.)
TEST_F(ConnectionDeadlinesTest, BytesNotYetReadAreNotTheHeads) {
  ConnectionDeadlines::Options options = Short();
  options.head = absl::Seconds(20);
  options.max_head_bytes = 4096;
  Start(options);
  const int fd = Connect();
  const std::string head = "POST /v2/models/m/infer HTTP/1.1\r\n\r\n";
  const std::string body(48 * 1024, 'x');
  int64_t read = 0;
  std::thread thread(deadlines_->Track([&] {
    // Slow to parse the head: the watchdog looks several times meanwhile,
    // with all of the request in.
    absl::SleepFor(absl::Milliseconds(700));
    std::string got(head.size(), '\0');
    read += recv(fd, got.data(), got.size(), MSG_WAITALL);
    ConnectionDeadlines::BodyNext(static_cast<int64_t>(body.size()));
    std::string rest(body.size(), '\0');
    read += recv(fd, rest.data(), rest.size(), MSG_WAITALL);
  }));
  // Once the head stage has begun.
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_TRUE(testing::SendAll(client_, head + body));
  thread.join();
  close(fd);
  EXPECT_EQ(read, static_cast<int64_t>(head.size() + body.size()));
  EXPECT_TRUE(Cuts(0).empty());
}

// An answer that refuses a body still coming (a 413 from the head), then
// the close: the server lingers, so the client that sends all of its body
// before it reads (Python's http.client) sends all of it and reads the
// answer and the end. Closed at once (as before Linger), the same client's
// sends failed with a reset and the answer was lost.
TEST_F(ConnectionDeadlinesTest, ALingerDropsWhatTheClientStillSends) {
  ConnectionDeadlines::Options options = Short();
  options.head = absl::Seconds(20);
  Start(options);
  const int fd = Connect();
  const std::string answer = "HTTP/1.1 413 Payload Too Large\r\n\r\n";
  int64_t dropped = -1;
  absl::Duration lingered;
  std::thread thread(deadlines_->Track([&] {
    ConnectionDeadlines::Answered();
    ASSERT_TRUE(testing::SendAll(fd, answer));
    const absl::Time start = absl::Now();
    dropped = ConnectionDeadlines::Linger(absl::Seconds(5), absl::Seconds(20));
    lingered = absl::Now() - start;
    shutdown(fd, SHUT_RDWR);
    close(fd);
  }));
  // 32 MiB: more than both sides' buffers hold, so that most of it is
  // sent after the answer.
  const std::string chunk(1 << 20, 'b');
  for (int i = 0; i < 32; ++i) {
    if (!testing::SendAll(client_, chunk)) {
      ADD_FAILURE() << "send " << i << ": " << strerror(errno);
      break;
    }
  }
  std::string got(answer.size(), '\0');
  EXPECT_EQ(recv(client_, got.data(), got.size(), MSG_WAITALL),
            static_cast<ssize_t>(answer.size()));
  EXPECT_EQ(got, answer);
  char byte;
  EXPECT_EQ(recv(client_, &byte, 1, 0), 0);  // the server's end
  close(client_);
  client_ = -1;
  thread.join();
  EXPECT_EQ(dropped, 32 << 20);
  EXPECT_LT(lingered, absl::Seconds(5));  // ended by the client's close
  EXPECT_TRUE(Cuts(0).empty());
}

// A client that neither sends nor closes: the linger ends after `quiet`;
// StopLingering ends one at once.
TEST_F(ConnectionDeadlinesTest, ALingerEndsWhenQuietOrStopped) {
  Start(Short());
  const int fd = Connect();
  absl::Duration quiet, stopped;
  absl::Notification second;
  std::thread thread(deadlines_->Track([&] {
    absl::Time start = absl::Now();
    EXPECT_EQ(
        ConnectionDeadlines::Linger(absl::Milliseconds(300), absl::Seconds(20)),
        0);
    quiet = absl::Now() - start;
    second.Notify();
    start = absl::Now();
    EXPECT_EQ(ConnectionDeadlines::Linger(absl::Seconds(20), absl::Seconds(20)),
              0);
    stopped = absl::Now() - start;
    close(fd);
  }));
  second.WaitForNotification();
  absl::SleepFor(absl::Milliseconds(200));
  deadlines_->StopLingering();
  thread.join();
  EXPECT_GE(quiet, absl::Milliseconds(290));
  EXPECT_LT(quiet, absl::Seconds(3));
  EXPECT_GE(stopped, absl::Milliseconds(150));
  EXPECT_LT(stopped, absl::Seconds(3));
  // Past the head's deadline (300 ms) while it lingered: no cut.
  EXPECT_TRUE(Cuts(0).empty());
}

// A server that stops ends its keep-alive connections left idle at once
// (httplib's would wait until their keep-alive ran out), and leaves to
// their threads a connection with part of a request in and one being
// served.
TEST_F(ConnectionDeadlinesTest, CloseIdleEndsOnlyConnectionsWaitingForNothing) {
  ConnectionDeadlines::Options options = Short();
  options.head = absl::Seconds(20);
  options.body = absl::Seconds(20);
  Start(options);
  const std::string request = "GET / HTTP/1.1\r\n\r\n";
  auto read_request = [&](int fd) {
    std::string got(request.size(), '\0');
    return recv(fd, got.data(), got.size(), MSG_WAITALL) ==
               static_cast<ssize_t>(request.size()) &&
           got == request;
  };
  absl::Notification go;

  // Answered, then waiting for its next request.
  const int idle = Connect();
  const int idle_client = client_;
  absl::Duration idle_waited;
  std::thread idle_thread(deadlines_->Track([&] {
    EXPECT_TRUE(read_request(idle));
    ConnectionDeadlines::Answered();
    EXPECT_TRUE(testing::SendAll(idle, "answer"));
    idle_waited = ReadUntilEnd(idle);
  }));
  // Part of a request in, the rest after the stop began.
  const int partial = Connect();
  const int partial_client = client_;
  bool partial_read = false;
  std::thread partial_thread(deadlines_->Track([&] {
    go.WaitForNotification();
    partial_read = read_request(partial);
  }));
  // Its request being served.
  const int serving = Connect();
  absl::Notification served;
  std::thread serving_thread(deadlines_->Track([&] {
    EXPECT_TRUE(read_request(serving));
    ConnectionDeadlines::Serving();
    served.Notify();
    go.WaitForNotification();
    EXPECT_TRUE(testing::SendAll(serving, "answer"));
  }));

  ASSERT_TRUE(testing::SendAll(idle_client, request));
  char answer[6];
  ASSERT_EQ(recv(idle_client, answer, sizeof(answer), MSG_WAITALL), 6);
  ASSERT_TRUE(testing::SendAll(partial_client, request.substr(0, 8)));
  ASSERT_TRUE(testing::SendAll(client_, request));
  ASSERT_TRUE(served.WaitForNotificationWithTimeout(absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(100));  // the bytes and stages settle

  const absl::Time stop = absl::Now();
  EXPECT_EQ(deadlines_->CloseIdle(), 1);
  idle_thread.join();
  EXPECT_LT(absl::Now() - stop, absl::Seconds(2));
  close(idle);
  EXPECT_EQ(recv(idle_client, answer, 1, 0), 0);  // the end
  close(idle_client);

  ASSERT_TRUE(testing::SendAll(partial_client, request.substr(8)));
  go.Notify();
  partial_thread.join();
  EXPECT_TRUE(partial_read);
  serving_thread.join();
  EXPECT_EQ(recv(client_, answer, sizeof(answer), MSG_WAITALL), 6);
  close(partial);
  close(partial_client);
  close(serving);
  EXPECT_TRUE(Cuts(0).empty());
}

TEST_F(ConnectionDeadlinesTest, StagesOnAThreadServingNoConnectionDoNothing) {
  ConnectionDeadlines::BodyNext(10);
  ConnectionDeadlines::Serving();
  ConnectionDeadlines::Answered();
  EXPECT_EQ(ConnectionDeadlines::Linger(absl::Seconds(5), absl::Seconds(5)), 0);
  Start(Short());
  // Nothing accepted on the port: nothing to track; served without one.
  bool served = false;
  deadlines_->Track([&] { served = true; })();
  EXPECT_TRUE(served);
  EXPECT_EQ(deadlines_->untracked(), 1);
}

TEST(ConnectionDeadlinesOptionsTest, BadOnesAreRefused) {
  ConnectionDeadlines::Options o;
  EXPECT_FALSE(ConnectionDeadlines::Start(0, o).ok());
  o.head = absl::ZeroDuration();
  EXPECT_FALSE(ConnectionDeadlines::Start(8080, o).ok());
}

}  // namespace
}  // namespace moe::common
