// Request IDs: the name a request goes by in logs, from the caller's
// "x-request-id" (gRPC metadata, HTTP header) when it is usable, else one
// made here, and given back in the answer's own "x-request-id".
//
// Example (an edge of the router):
//   const std::string id = common::RequestIdOrNew(header_value);
//   ... log "Forward " << id << " from ...", answer with x-request-id: id
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace moe::common {

// The gRPC metadata key (and, any case, HTTP header) a request ID travels
// in.
inline constexpr char kRequestIdKey[] = "x-request-id";

// The longest request ID taken from a caller.
inline constexpr size_t kMaxRequestIdBytes = 128;

// The most request IDs one router-to-worker call carries (its forwards'
// first ones, each once: the metadata stays within gRPC's default 8 KiB).
inline constexpr size_t kMaxRequestIdsPerWorkerCall = 16;

// Whether `id` can be a request ID: 1 to kMaxRequestIdBytes bytes of
// letters, digits and . _ - : / + = (what tracing systems put there: UUIDs,
// hex, base64), so that it can stand in a log line unquoted.
bool UsableRequestId(absl::string_view id);

// OK when UsableRequestId(id), else INVALID_ARGUMENT saying what an ID may
// be (for an ID a caller chose, checked before it is sent).
absl::Status CheckRequestId(absl::string_view id);

// A fresh ID: 16 lowercase hex digits, distinct within the process (a
// counter from a random start, its bits mixed). Thread-safe.
std::string NewRequestId();

// " [request ID]": how an error names its request, at the end of its
// message (the router's token gate, the clients' errors).
std::string RequestIdNote(absl::string_view id);

// The W3C Trace Context header ("traceparent", gRPC metadata or HTTP).
inline constexpr char kTraceparentKey[] = "traceparent";

// The trace ID of a W3C `traceparent` value
// ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01": its 32
// lowercase hex digits), or "" when the value is not one (another version's
// value is read as far as version 00's fields go, as the spec asks; an
// all-zero trace or parent ID is invalid).
absl::string_view TraceIdOf(absl::string_view traceparent);

// `from_caller` when usable, else `from_body` (a protocol's own request ID
// field: the Open Inference Protocol's `id`, Triton's request ID) when
// usable, else the trace ID of `traceparent` (so that a traced caller's
// request goes by its trace in the logs), else NewRequestId().
std::string RequestIdOrNew(absl::string_view from_caller,
                           absl::string_view from_body = {},
                           absl::string_view traceparent = {});

}  // namespace moe::common
