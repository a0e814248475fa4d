#include "router/api/forward_runner.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/torch/torch_convert.h"
#include "router/api/forward_response.h"
#include "router/api/options_codec.h"
#include "router/api/wire_tensors.h"

namespace moe::router {

ForwardRunner::ForwardRunner(const ModelEngine* model,
                             const ForwardLimits& limits)
    : model_(model), limits_(limits) {}

int64_t ForwardRunner::MaxRequestBytes() const {
  // x in float32 plus [2, B, n] float32 replay uniforms, plus framing.
  return limits_.max_tokens_per_request * (model_->spec().dim + 2) * 4 +
         (1 << 20);
}

absl::StatusOr<AdmittedForward> ForwardRunner::Admit(
    const moe::v1::ForwardRequest& request) const {
  AdmittedForward admitted;
  admitted.request = &request;
  MOE_ASSIGN_OR_RETURN(admitted.layer, model_->FindLayer(request.layer()));
  if (!request.has_x()) return absl::InvalidArgumentError("x: missing");
  const moe::v1::Tensor& x = request.x();
  if (x.dtype() == moe::v1::INT64) {
    return absl::InvalidArgumentError(
        "x: dtype INT64 is not supported (send FLOAT32, BFLOAT16 or FLOAT16)");
  }
  const int64_t limit = limits_.max_tokens_per_request;
  if (x.shape_size() == 3 && x.shape(0) > 0 && x.shape(1) > 0 &&
      (x.shape(0) > limit || x.shape(1) > limit / x.shape(0))) {
    // b * n > limit, without overflow.
    return absl::ResourceExhaustedError(absl::StrCat(
        "x: ", x.shape(0), " x ", x.shape(1),
        " tokens exceed the router's limit of ", limit,
        " tokens per request (max_tokens_per_request); send the batch in "
        "smaller requests"));
  }
  MOE_ASSIGN_OR_RETURN(admitted.x,
                       proto::CheckTensor(x, "x", limit * model_->spec().dim,
                                          /*floats_only=*/true));
  MOE_RETURN_IF_ERROR(admitted.layer->ValidateInputShape(admitted.x.shape));
  return admitted;
}

absl::Status ForwardRunner::Run(const AdmittedForward& admitted,
                                ExpertBackend& backend,
                                moe::v1::ForwardResponse* response,
                                ForwardResult* result) const {
  c10::InferenceMode guard;
  // The router's GEMMs run on OpenBLAS's threads; its other kernels on
  // this thread alone.
  common::UseIntraOpThreads(1);
  const moe::v1::ForwardRequest& request = *admitted.request;
  // x is read in place: `request` outlives the forward.
  MOE_ASSIGN_OR_RETURN(at::Tensor x, ViewWireTensor(request.x(), admitted.x));
  MOE_ASSIGN_OR_RETURN(
      RoutingOptions options,
      RoutingOptionsFromProto(request.options(),
                              2 * limits_.max_tokens_per_request));
  MOE_ASSIGN_OR_RETURN(ForwardResult r,
                       admitted.layer->Forward(x, options, backend));
  response->set_layer(admitted.layer->spec().name);
  MOE_RETURN_IF_ERROR(FillForwardResponse(
      r, admitted.x.dtype, request.options().return_trace(), response));
  if (result != nullptr) *result = std::move(r);
  return absl::OkStatus();
}

}  // namespace moe::router
