#include "router/service/forward_runner.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/torch/torch_convert.h"
#include "router/service/forward_response.h"
#include "router/service/options_codec.h"
#include "router/service/wire_tensors.h"

namespace moe::router {

ForwardRunner::ForwardRunner(const ModelEngine* model,
                             const ForwardLimits& limits)
    : model_(model), limits_(limits) {}

int64_t ForwardRunner::MaxRequestBytes() const {
  // x in float32 plus [2, B, n] float32 replay uniforms, plus framing.
  return limits_.max_tokens_per_request * (model_->spec().dim + 2) * 4 +
         (1 << 20);
}

absl::StatusOr<const LayerEngine*> ForwardRunner::Admit(
    const moe::v1::ForwardRequest& request) const {
  MOE_ASSIGN_OR_RETURN(const LayerEngine* layer,
                       model_->FindLayer(request.layer()));
  if (!request.has_x()) return absl::InvalidArgumentError("x: missing");
  const moe::v1::Tensor& x = request.x();
  if (x.dtype() == moe::v1::INT64) {
    return absl::InvalidArgumentError(
        "x: dtype INT64 is not supported (send FLOAT32, BFLOAT16 or FLOAT16)");
  }
  if (x.shape_size() == 3 && x.shape(0) > 0 && x.shape(1) > 0) {
    const int64_t limit = limits_.max_tokens_per_request;
    // b * n > limit, without overflow.
    if (x.shape(0) > limit || x.shape(1) > limit / x.shape(0)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "x: ", x.shape(0), " x ", x.shape(1),
          " tokens exceed the router's limit of ", limit,
          " tokens per request (max_tokens_per_request); send the batch in "
          "smaller requests"));
    }
  }
  return layer;
}

absl::Status ForwardRunner::Run(const moe::v1::ForwardRequest& request,
                                ExpertBackend& backend,
                                moe::v1::ForwardResponse* response,
                                ForwardResult* result) const {
  c10::InferenceMode guard;
  // The router's GEMMs run on OpenBLAS's threads; its other kernels on
  // this thread alone.
  common::UseIntraOpThreads(1);
  MOE_ASSIGN_OR_RETURN(const LayerEngine* layer, Admit(request));
  const int64_t max_elements =
      limits_.max_tokens_per_request * model_->spec().dim;
  // x is read in place: `request` outlives the forward.
  MOE_ASSIGN_OR_RETURN(at::Tensor x,
                       ViewWireTensor(request.x(), "x", max_elements));
  MOE_ASSIGN_OR_RETURN(
      RoutingOptions options,
      RoutingOptionsFromProto(request.options(),
                              2 * limits_.max_tokens_per_request));
  MOE_ASSIGN_OR_RETURN(ForwardResult r, layer->Forward(x, options, backend));
  response->set_layer(layer->spec().name);
  MOE_RETURN_IF_ERROR(FillForwardResponse(
      r, request.x().dtype(), request.options().return_trace(), response));
  if (result != nullptr) *result = std::move(r);
  return absl::OkStatus();
}

}  // namespace moe::router
