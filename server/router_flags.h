// What moe-router takes from its flags for the service: the options of
// RouterService (--on_expert_failure, --wire_dtype, --worker_timeout_ms,
// --threads, --batch_window_us, --batch_max_tokens, --max_queued_tokens,
// --max_queue_ms, --inline_max_tokens, --join_open_batches, --log_requests)
// and the Open Inference Protocol's REST listener:
//   --http_port        -1 off (default), 0 a free port
//   --http_port_file   where the port in use is written
// HTTPS with the gRPC port's TLS files (ServerOptions) when it has them.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "router/service/inference_http.h"
#include "server/server_runner.h"

namespace moe::server {

// The service's options as the flags give them (RouterService::Create
// validates them).
absl::StatusOr<router::RouterServiceOptions> ServiceOptionsFromFlags();

// Null when --http_port is -1. `max_body_bytes` bounds a request body;
// `metrics` (which must outlive the server) gets the REST port's gauges.
absl::StatusOr<std::unique_ptr<router::InferenceHttpServer>> StartRestFromFlags(
    const ServerOptions& server_options, router::RouterService* service,
    int64_t max_body_bytes, router::RouterMetrics* metrics);

}  // namespace moe::server
