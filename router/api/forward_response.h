// Turns an engine ForwardResult into the moe.v1.ForwardResponse the router
// answers with (and moe-run writes in-process).
#pragma once

#include "absl/status/status.h"
#include "common/dtype.h"
#include "moe/v1/router.pb.h"
#include "router/engine/layer_engine.h"

namespace moe::router {

// y is encoded as `y_dtype`; the trace (gate indices, positions, masks,
// gates, logits) is added when `trace` is set.
absl::Status FillForwardResponse(const ForwardResult& result,
                                 common::DType y_dtype, bool trace,
                                 moe::v1::ForwardResponse* response);

}  // namespace moe::router
