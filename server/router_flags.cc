#include "server/router_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "server/main_helpers.h"
#include "server/metrics_http.h"
#include "server/serving_flags.h"

ABSL_FLAG(std::string, on_expert_failure, "drop",
          "When an expert's workers fail: drop (its assignments are dropped "
          "and the response is marked degraded) or fail (UNAVAILABLE). A "
          "request may choose its own.");
ABSL_FLAG(int, worker_timeout_ms, 30000,
          "Deadline of one worker call when the client sets none shorter.");
ABSL_FLAG(std::string, wire_dtype, "float32",
          "Token dtype on the router-to-worker hop: float32, bfloat16, "
          "float16.");
ABSL_FLAG(int, threads, 8,
          "Forwards in progress at once (each waits for its workers on a "
          "thread; the router's own work is a small share).");
ABSL_FLAG(int, batch_window_us, 20000,
          "Dynamic batching: concurrent forwards share one RunExperts call "
          "per worker (each forward is still routed on its own, capacity per "
          "request). A worker's batch is sent as soon as the worker has no "
          "call of ours in flight and no other forward is still gating, else "
          "after at most this many microseconds. A lone request never waits. "
          "0 turns batching off.");
ABSL_FLAG(int64_t, batch_max_tokens, 16384,
          "Token rows above which a worker batch takes no more forwards.");
ABSL_FLAG(int64_t, max_queued_tokens, 262144,
          "Tokens that may wait for a forward thread; a request that would "
          "pass this is refused at once (RESOURCE_EXHAUSTED).");
ABSL_FLAG(int, max_queue_ms, 2000,
          "Longest expected wait of a request: the time to finish the work "
          "the router already holds, queued and running, before its own. "
          "Longer is refused with RESOURCE_EXHAUSTED, as is a request still "
          "queued after this long. A request whose deadline the work ahead "
          "and its own would miss is refused at once too.");
ABSL_FLAG(int64_t, inline_max_tokens, 0,
          "Experimental: a forward of at most this many tokens that arrives "
          "while no forward is queued or running runs on the gRPC thread "
          "that received it (one at a time), without a hand-off to a "
          "forward thread: about 0.1 ms less per decode step. 0 (default): "
          "never.");
ABSL_FLAG(bool, join_open_batches, true,
          "A replicated expert's few rows (a segment too small to split "
          "among its copies) go to a copy whose open worker batch already "
          "runs that expert, unless a copy is idle: one read of its weights "
          "serves them all (decode with replicas). false: the least busy "
          "copy each time.");
ABSL_FLAG(bool, log_requests, false,
          "Log one line per request (layer, shape, code, duration; never "
          "tensors or tokens). Failed requests are always logged.");
ABSL_FLAG(int, http_port, -1,
          "Serve the Open Inference Protocol's REST form (HTTP/1.1, JSON: "
          "/v2/...) on this port; 0 picks a free one; -1 (default) off. "
          "HTTPS with the --tls_* files (read at start) when they are given.");
ABSL_FLAG(int, http_threads, 64,
          "REST connections served at once (--http_port): each open "
          "connection holds one thread while it is open, an idle one for at "
          "most 5 s; a connection beyond them waits for one.");
ABSL_FLAG(int, http_request_timeout_s, 30,
          "REST: a request must arrive within this many seconds however "
          "steadily its bytes come (its head after the 5 s keep-alive wait "
          "and the previous answer's write; its body, plus 1 s per MiB of "
          "it received: at least 1 MiB/s after the first seconds), else its "
          "connection is closed, so that slow senders cannot "
          "hold every --http_threads thread (as is one whose head passes 64 "
          "KiB). 1 to 3600.");
ABSL_FLAG(int64_t, http_max_bytes_in_flight, 0,
          "The bytes of REST infer bodies the router holds at once, from "
          "before a body is read until its answer is made; a body that "
          "does not fit beside those held is refused with 429 (and read and "
          "dropped). 0 (default): twice the REST body limit (five times the "
          "gRPC message limit). Also caps the body limit.");
ABSL_FLAG(std::string, http_port_file, "",
          "Write the --http_port in use here once it listens.");
namespace moe::server {

// The service's options as the flags give them (RouterService::Create
// validates them).
absl::StatusOr<router::RouterServiceOptions> ServiceOptionsFromFlags() {
  router::RouterServiceOptions o;
  MOE_ASSIGN_OR_RETURN(o.on_failure,
                       ForFlag("--on_expert_failure",
                               router::ParseExpertFailurePolicy(
                                   absl::GetFlag(FLAGS_on_expert_failure))));
  MOE_ASSIGN_OR_RETURN(
      o.wire_dtype,
      ForFlag("--wire_dtype", ParseWireDType(absl::GetFlag(FLAGS_wire_dtype))));
  o.worker_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_worker_timeout_ms));
  o.threads = absl::GetFlag(FLAGS_threads);
  o.max_queued = MaxQueuedFromFlags();
  o.batch_window = absl::Microseconds(absl::GetFlag(FLAGS_batch_window_us));
  o.batch_max_rows = absl::GetFlag(FLAGS_batch_max_tokens);
  o.max_queued_tokens = absl::GetFlag(FLAGS_max_queued_tokens);
  o.max_queue_time = absl::Milliseconds(absl::GetFlag(FLAGS_max_queue_ms));
  o.log_requests = absl::GetFlag(FLAGS_log_requests);
  o.inline_max_tokens = absl::GetFlag(FLAGS_inline_max_tokens);
  o.join_open_batches = absl::GetFlag(FLAGS_join_open_batches);
  return o;
}

absl::StatusOr<std::unique_ptr<router::InferenceHttpServer>> StartRestFromFlags(
    const ServerOptions& server_options, router::RouterService* service,
    int64_t max_body_bytes, router::RouterMetrics* metrics) {
  const int port = absl::GetFlag(FLAGS_http_port);
  if (port < 0) return std::unique_ptr<router::InferenceHttpServer>();
  if (port > 65535) {
    return absl::InvalidArgumentError("--http_port must be -1 or a port");
  }
  router::InferenceHttpServer::Options options;
  options.max_body_bytes = max_body_bytes;
  options.threads = absl::GetFlag(FLAGS_http_threads);
  options.max_bytes_in_flight = absl::GetFlag(FLAGS_http_max_bytes_in_flight);
  options.request_timeout =
      absl::Seconds(absl::GetFlag(FLAGS_http_request_timeout_s));
  options.metrics = metrics;
  options.tls = server_options.tls_files;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<router::InferenceHttpServer> http,
                       router::InferenceHttpServer::Start(
                           server_options.host, port, service, options));
  MOE_LOG(INFO) << "Open Inference Protocol REST on " << server_options.host
                << ":" << http->port()
                << (options.tls.cert_file.empty() ? " (plaintext)" : " (HTTPS)")
                << ", " << options.threads << " connections at once";
  const std::string port_file = absl::GetFlag(FLAGS_http_port_file);
  if (!port_file.empty()) {
    MOE_RETURN_IF_ERROR(WritePortFile(port_file, http->port()));
  }
  return http;
}

}  // namespace moe::server
