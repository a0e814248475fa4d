#include "common/connection_deadlines.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace moe::common {
namespace {

// The connection the calling thread serves, and who tracks it.
struct Current {
  ConnectionDeadlines* owner = nullptr;
  void* connection = nullptr;
};
thread_local Current current;

// The port of a socket's address (of either family); -1 when it has none.
int PortOf(const sockaddr_storage& address) {
  if (address.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in&>(address).sin_port);
  }
  if (address.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6&>(address).sin6_port);
  }
  return -1;
}

// "ADDRESS:PORT" of the socket's peer; "" when it has none.
std::string PeerOf(int fd) {
  sockaddr_storage peer{};
  socklen_t length = sizeof(peer);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &length) != 0) {
    return "";
  }
  char text[INET6_ADDRSTRLEN] = "";
  const void* address =
      peer.ss_family == AF_INET
          ? static_cast<const void*>(
                &reinterpret_cast<const sockaddr_in&>(peer).sin_addr)
          : static_cast<const void*>(
                &reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr);
  if (inet_ntop(peer.ss_family, address, text, sizeof(text)) == nullptr) {
    return "";
  }
  return peer.ss_family == AF_INET6
             ? absl::StrCat("[", text, "]:", PortOf(peer))
             : absl::StrCat(text, ":", PortOf(peer));
}

}  // namespace

ConnectionDeadlines::ConnectionDeadlines(int port, Options options)
    : port_(port), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<ConnectionDeadlines>> ConnectionDeadlines::Start(
    int port, Options options) {
  if (port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("connection deadlines: no such port: ", port));
  }
  if (options.head <= absl::ZeroDuration() ||
      options.body <= absl::ZeroDuration() ||
      options.body_bytes_per_second < 1 || options.max_head_bytes < 0) {
    return absl::InvalidArgumentError(
        "connection deadlines: the head's and the body's must be positive, "
        "and so must the body's rate; the head's size 0 or more");
  }
  auto deadlines = std::unique_ptr<ConnectionDeadlines>(
      new ConnectionDeadlines(port, std::move(options)));
  deadlines->watchdog_ = std::thread([d = deadlines.get()] { d->Watch(); });
  return deadlines;
}

ConnectionDeadlines::~ConnectionDeadlines() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  watchdog_.join();
  absl::MutexLock lock(&mu_);
  for (Connection& c : connections_) {
    if (c.fd >= 0) close(c.fd);
  }
}

int ConnectionDeadlines::FindAccepted(uint64_t* inode) {
  // accept() returns the lowest descriptor free at the time, and the one
  // just accepted stays open until its closure runs (after Track): so it is
  // the lowest-numbered socket on the port, connected, that no tracked
  // connection holds. The search stops past a long run of free numbers
  // (none could have opened below it in the meantime).
  constexpr int kFreeRun = 1024;
  int free_run = 0;
  for (int fd = 0; free_run < kFreeRun; ++fd) {
    struct stat st {};
    if (fstat(fd, &st) != 0) {
      ++free_run;
      continue;
    }
    free_run = 0;
    if (!S_ISSOCK(st.st_mode) || inodes_.contains(st.st_ino) ||
        others_.contains(st.st_ino)) {
      continue;
    }
    sockaddr_storage address{};
    socklen_t length = sizeof(address);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0 ||
        PortOf(address) != port_) {
      // A socket not on the port never will be (the port is taken), so it
      // is asked once; the memory of them is bounded.
      if (others_.size() >= 65536) others_.clear();
      others_.insert(st.st_ino);
      continue;
    }
    // The listening socket (and one reset already) has no peer.
    length = sizeof(address);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      continue;
    }
    *inode = st.st_ino;
    return fd;
  }
  return -1;
}

std::function<void()> ConnectionDeadlines::Track(std::function<void()> serve) {
  Connection* connection = nullptr;
  {
    absl::MutexLock lock(&mu_);
    uint64_t inode = 0;
    const int fd = FindAccepted(&inode);
    if (fd < 0) {
      ++untracked_;
      return serve;
    }
    connections_.push_back(Connection{});
    connection = &connections_.back();
    // Without a duplicate (no descriptor free) the connection is known, so
    // that no later search takes it for another, but has no deadline.
    connection->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (connection->fd < 0) ++untracked_;
    connection->inode = inode;
    connection->peer = PeerOf(fd);
    inodes_.insert(inode);
  }
  return [this, connection, serve = std::move(serve)] {
    SetStage(connection, Stage::kHead, options_.head);
    current = Current{this, connection};
    serve();
    current = Current{};
    absl::MutexLock lock(&mu_);
    if (connection->fd >= 0) close(connection->fd);
    inodes_.erase(connection->inode);
    connections_.remove_if(
        [connection](const Connection& c) { return &c == connection; });
  };
}

bool ConnectionDeadlines::Received(int fd, uint64_t* bytes) {
  tcp_info info{};
  socklen_t length = sizeof(info);
  if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0 ||
      length < offsetof(tcp_info, tcpi_bytes_received) +
                   sizeof(info.tcpi_bytes_received)) {
    return false;
  }
  *bytes = info.tcpi_bytes_received;
  return true;
}

uint64_t ConnectionDeadlines::Read(int fd, bool low) {
  const auto received = [fd](uint64_t* bytes) { return Received(fd, bytes); };
  const auto unread = [fd](uint64_t* bytes) {
    int n = 0;
    if (ioctl(fd, SIOCINQ, &n) != 0 || n < 0) return false;
    *bytes = static_cast<uint64_t>(n);
    return true;
  };
  // Bytes that arrive between the two looks count as read when the unread
  // are looked at first, and as unread otherwise.
  uint64_t in = 0, waiting = 0;
  if (fd < 0 || !(low ? received(&in) && unread(&waiting)
                      : unread(&waiting) && received(&in))) {
    return 0;
  }
  return in > waiting ? in - waiting : 0;
}

void ConnectionDeadlines::SetStage(Connection* connection, Stage stage,
                                   absl::Duration limit, int64_t body_bytes) {
  const uint64_t read =
      stage == Stage::kHead ? Read(connection->fd, /*low=*/false) : 0;
  uint64_t received = 0;
  const bool counted =
      stage == Stage::kBody && Received(connection->fd, &received);
  absl::MutexLock lock(&mu_);
  connection->stage = stage;
  connection->read = read;
  connection->received = received;
  connection->counted = counted;
  connection->body_bytes = body_bytes;
  connection->since = absl::Now();
  connection->limit = limit;
}

void ConnectionDeadlines::BodyNext(int64_t bytes) {
  if (current.owner == nullptr) return;
  current.owner->SetStage(static_cast<Connection*>(current.connection),
                          Stage::kBody, current.owner->options_.body,
                          std::max<int64_t>(bytes, 0));
}

void ConnectionDeadlines::Serving() {
  if (current.owner == nullptr) return;
  current.owner->SetStage(static_cast<Connection*>(current.connection),
                          Stage::kServing, absl::InfiniteDuration());
}

void ConnectionDeadlines::Answered() {
  if (current.owner == nullptr) return;
  current.owner->SetStage(static_cast<Connection*>(current.connection),
                          Stage::kHead, current.owner->options_.head);
}

int64_t ConnectionDeadlines::Linger(absl::Duration quiet,
                                    absl::Duration total) {
  if (current.owner == nullptr) return 0;
  auto* connection = static_cast<Connection*>(current.connection);
  const int fd = connection->fd;
  if (fd < 0) return 0;
  Serving();
  // The write side only: a connection whose server shut down reading is
  // reset by the next byte it receives.
  shutdown(fd, SHUT_WR);
  const absl::Time end = absl::Now() + total;
  int64_t dropped = 0;
  char scratch[64 << 10];
  absl::Time heard = absl::Now();
  // Waits of at most 100 ms, so that StopLingering is heard.
  while (!current.owner->lingering_stopped_.load(std::memory_order_relaxed)) {
    const absl::Time now = absl::Now();
    const absl::Duration left = std::min(heard + quiet, end) - now;
    if (left <= absl::ZeroDuration()) break;  // quiet, or the total
    pollfd in{fd, POLLIN, 0};
    const int ready = poll(&in, 1,
                           static_cast<int>(absl::ToInt64Milliseconds(
                               std::min(left, absl::Milliseconds(100)))) +
                               1);
    if (ready == 0 || (ready < 0 && errno == EINTR)) continue;
    if (ready < 0) break;
    const ssize_t n = recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      continue;
    }
    if (n <= 0) break;  // the client's end, or the connection's
    dropped += n;
    heard = absl::Now();
  }
  return dropped;
}

void ConnectionDeadlines::StopLingering() {
  lingering_stopped_.store(true, std::memory_order_relaxed);
}

int ConnectionDeadlines::CloseIdle() {
  absl::MutexLock lock(&mu_);
  int closed = 0;
  for (Connection& c : connections_) {
    // Served (`since` set), waiting for a head, and nothing of it in: every
    // byte received had been read when the stage began (a request sent
    // behind the last one, unread then, counts as begun).
    uint64_t received = 0;
    if (c.cut || c.fd < 0 || c.since == absl::InfiniteFuture() ||
        c.stage != Stage::kHead || !Received(c.fd, &received) ||
        received != c.read) {
      continue;
    }
    // Reading only: a write in progress (the last answer) goes on.
    shutdown(c.fd, SHUT_RD);
    c.cut = true;
    ++closed;
  }
  return closed;
}

int ConnectionDeadlines::tracked() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(connections_.size());
}

int64_t ConnectionDeadlines::untracked() const {
  absl::MutexLock lock(&mu_);
  return untracked_;
}

void ConnectionDeadlines::Watch() {
  // The deadlines are checked four times within the shortest, and the
  // heads' sizes every 100 ms.
  const absl::Duration every = std::min(
      absl::Milliseconds(100), std::min(options_.head, options_.body) / 4);
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), every);
    if (stopping_) break;
    const absl::Time now = absl::Now();
    std::vector<Cut> cuts;
    for (Connection& c : connections_) {
      // A connection still waiting for a thread has no stage yet
      // (`since` is in the infinite future).
      if (c.cut || c.fd < 0 || now < c.since) continue;
      int64_t head_bytes = 0;
      if (c.stage == Stage::kHead && options_.max_head_bytes > 0) {
        const uint64_t read = Read(c.fd, /*low=*/true);
        if (read > c.read + options_.max_head_bytes) {
          head_bytes = static_cast<int64_t>(read - c.read);
        }
      }
      // A body earns time as its bytes come (all of its length where the
      // kernel does not count them).
      absl::Duration limit = c.limit;
      int64_t body_in = 0;
      if (c.stage == Stage::kBody) {
        uint64_t received = 0;
        const bool counted = c.counted && Received(c.fd, &received);
        body_in = counted && received > c.received
                      ? static_cast<int64_t>(std::min<uint64_t>(
                            received - c.received,
                            static_cast<uint64_t>(c.body_bytes)))
                      : 0;
        limit += absl::Seconds(
            static_cast<double>(counted ? body_in : c.body_bytes) /
            static_cast<double>(options_.body_bytes_per_second));
      }
      if (head_bytes == 0 && now - c.since <= limit) continue;
      // Its thread's read or write ends at once; it closes the socket, and
      // the close resets the connection (linger 0): a graceful close left
      // a client still sending (a body behind a refused head) blocked on
      // the closed window until its own timeout.
      const linger reset{1, 0};
      setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
      shutdown(c.fd, SHUT_RDWR);
      c.cut = true;
      const std::string within =
          absl::FormatDuration(absl::Trunc(limit, absl::Milliseconds(1)));
      cuts.push_back(Cut{
          c.stage, c.peer, head_bytes,
          head_bytes > 0 ? absl::StrCat("its request's head passed ",
                                        options_.max_head_bytes, " bytes (",
                                        head_bytes, " read)")
          : c.stage == Stage::kBody
              ? absl::StrCat("its request's body was not in within ", within,
                             " of its head",
                             c.counted
                                 ? absl::StrCat(" (", body_in, " of its ",
                                                c.body_bytes, " bytes came)")
                                 : "")
              : absl::StrCat("no whole request head came within ", within,
                             " of its start or its last answer")});
    }
    if (cuts.empty() || !options_.on_cut) continue;
    mu_.Unlock();
    for (const Cut& cut : cuts) options_.on_cut(cut);
    mu_.Lock();
  }
}

}  // namespace moe::common
