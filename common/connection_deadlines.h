// Deadlines (and a size) for the connections of a thread-per-connection
// HTTP server (cpp-httplib: the router's REST port, /metrics), whose own
// timeouts bound each read and write alone and which takes any number of
// header lines: a client that sends one byte of its request every few
// seconds would hold a thread of the server's pool for as long as it liked
// (as many such clients as threads would hold the port), and one that sends
// header lines without end would grow the server's memory until it died.
//
// Each connection is in one of three stages:
//   head:    from the start of its service, or from the end of an answer,
//            until a request's head (method, path, headers) is in: the
//            answer's write, the keep-alive wait and the head's arrival
//            together get `head`, and the bytes the server reads meanwhile
//            may not pass `max_head_bytes` (the kernel's count of bytes
//            received, TCP_INFO, less those waiting unread, SIOCINQ: a body
//            sent right behind its head, waiting while the server is slow to
//            parse the head, is not the head's);
//   body:    from the head until the body is in: `body`, plus one second
//            per `body_bytes_per_second` of the body received so far (the
//            kernel's count, TCP_INFO; at most the body's length): the
//            slack of `body`, then a minimum rate, checked as the bytes
//            come (Apache's mod_reqtimeout MinRate), so that a client that
//            announces a large body and sends a byte a second is cut after
//            `body` rather than holding a thread for the time its whole
//            length would take at the rate;
//   serving: no deadline (the server's own work, bounded by its own
//            deadlines).
// A connection past its stage's deadline or its head's size is shut down
// (both ways), which ends the thread's read or write at once and frees it,
// and reset when it is closed (SO_LINGER 0: a client still sending learns
// at once rather than at its own timeout); `on_cut` hears of it. The size is
// checked as often as the deadlines (every 100 ms), so a head may grow by what
// arrives in that time before its cut. The server reports stages from its
// serving thread (BodyNext, Serving, Answered: thread-local, no-ops on threads
// that serve no tracked connection).
//
// The server hands each accepted connection to its pool without its socket
// (cpp-httplib's TaskQueue::enqueue takes a closure), so Track finds it:
// the accepted socket is the lowest-numbered connected socket of the
// process on the server's port that no tracked connection holds (accept()
// takes the lowest free number; the search costs one fstat per descriptor
// below it). Track keeps a duplicate of it for as long as the connection is
// served, so that a shutdown never reaches a reused descriptor.
//
// Example:
//   auto deadlines = ConnectionDeadlines::Start(port, options);
//   pool.enqueue(deadlines->Track(std::move(serve_connection)));
//   ... on the serving thread, when a request's head is parsed:
//   ConnectionDeadlines::BodyNext(content_length);
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace moe::common {

class ConnectionDeadlines {
 public:
  enum class Stage { kHead, kBody, kServing };

  // A connection shut down: the stage it was in, its peer ("ADDRESS:PORT"),
  // the bytes read in its head stage when that passed the size (else
  // 0), and why, for a log line ("no whole request head came within 35s of
  // its start or its last answer", "its request's body was not in within
  // 30s of its head", "its request's head passed 65536 bytes (N
  // read)").
  struct Cut {
    Stage stage;
    std::string peer;
    int64_t head_bytes = 0;
    std::string why;
  };

  struct Options {
    // The answer's write, the keep-alive wait and the next request's head.
    absl::Duration head = absl::Seconds(35);
    // A body: this, plus one second per `body_bytes_per_second` of it
    // received.
    absl::Duration body = absl::Seconds(30);
    int64_t body_bytes_per_second = 1 << 20;
    // The bytes a connection may receive in one head stage (TLS records
    // included); 0: any number.
    int64_t max_head_bytes = 64 << 10;
    // Hears of each connection shut down (on the watchdog's thread).
    std::function<void(const Cut& cut)> on_cut;
  };

  // Watches the connections accepted on `port` (of this process).
  static absl::StatusOr<std::unique_ptr<ConnectionDeadlines>> Start(
      int port, Options options);
  // Stops watching; call it once no tracked connection is served.
  ~ConnectionDeadlines();

  // Called where the server hands a connection it has just accepted to its
  // pool (on the accepting thread, before the next accept): `serve`
  // wrapped so that, while it runs, the deadlines apply to that
  // connection, from the head stage. A connection whose socket is not
  // found (it closed at once, say) is served without deadlines.
  std::function<void()> Track(std::function<void()> serve);

  // On the thread serving a tracked connection: a request's head is in and
  // its body, of at most `bytes` (0: none), comes next.
  static void BodyNext(int64_t bytes);
  // The body is in: the request is being served.
  static void Serving();
  // The answer is made: its write and the next request's head come next.
  static void Answered();
  // On the thread serving a tracked connection, once an answer that
  // closes it is written and before the server closes it: ends the
  // server's side (the client reads the answer, then the end) and reads
  // and drops what the client still sends, until it closes its side,
  // `quiet` passes without a byte, or `total` has passed (Apache's and
  // nginx's lingering close). Returns the bytes dropped (0 on a thread
  // serving no tracked connection). Without it, a client still sending a
  // body the answer refused is reset (Linux resets a connection that
  // receives data after its server shut down reading, or that closes
  // with bytes unread), and the reset can reach the client before it
  // reads the answer: "broken pipe" or "connection reset" where a 413
  // was written. The connection has no deadline meanwhile.
  static int64_t Linger(absl::Duration quiet, absl::Duration total);
  // Ends every Linger now and to come (at most 100 ms later): call it
  // before the server stops, which waits for its connections' threads.
  void StopLingering();
  // Stops reading every connection that waits for its next request and
  // has received no byte of it (a keep-alive connection left idle): its
  // thread's wait ends at once, as at the client's end, and an answer it
  // is still writing goes out first. Call it once the server takes no new
  // requests (its threads then end their connections after the answer in
  // progress), rather than wait for each keep-alive to run out. Returns
  // the connections it stopped.
  int CloseIdle();

  // Connections tracked now (served or waiting for a thread), and those
  // Track could not find or keep a duplicate of (served without
  // deadlines).
  int tracked() const;
  int64_t untracked() const;

 private:
  struct Connection {
    int fd = -1;  // our duplicate of the connection's socket
    uint64_t inode = 0;
    std::string peer;
    Stage stage = Stage::kHead;
    // The bytes the server had read when the stage began (head; 0 when
    // the kernel does not say).
    uint64_t read = 0;
    // The body stage: the bytes the connection had received when it began
    // (TCP_INFO; `counted` false when the kernel does not say), and the
    // body's length at most.
    uint64_t received = 0;
    bool counted = false;
    int64_t body_bytes = 0;
    // InfiniteFuture while the connection waits for a thread.
    absl::Time since = absl::InfiniteFuture();
    absl::Duration limit = absl::InfiniteDuration();
    bool cut = false;
  };

  ConnectionDeadlines(int port, Options options);
  void SetStage(Connection* connection, Stage stage, absl::Duration limit,
                int64_t body_bytes = 0);
  // The bytes the connection has received (TCP_INFO, TLS records
  // included) in `*bytes`; false when the kernel does not say.
  static bool Received(int fd, uint64_t* bytes);
  // The bytes the server has read from the connection (received less
  // unread); 0 when unknown. `low`: bytes arriving meanwhile count as
  // unread (for a check), else as read (for a stage's start), so that a
  // stage's difference never counts bytes the server has not read.
  static uint64_t Read(int fd, bool low);
  void Watch();
  // The socket Track looks for; -1 when there is none.
  int FindAccepted(uint64_t* inode) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int port_;
  const Options options_;
  mutable absl::Mutex mu_;
  std::list<Connection> connections_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<uint64_t> inodes_ ABSL_GUARDED_BY(mu_);
  // Sockets seen by a search that are not on the port.
  absl::flat_hash_set<uint64_t> others_ ABSL_GUARDED_BY(mu_);
  int64_t untracked_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> lingering_stopped_{false};
  std::thread watchdog_;
};

}  // namespace moe::common
