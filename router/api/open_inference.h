// The Open Inference Protocol v2 at the router's edge: its requests turned
// into moe.v1 ones and the answers back, so that ModelInfer runs exactly
// the path of Forward (docs/open_inference.md).
//
// Models: every MoE layer is one, named by its layer name; the layer of a
// one-layer model whose layer is unnamed ("") is named by the model's name.
// A model's only version is the model's fingerprint.
//
// ModelInfer inputs: `x` (FP32, BF16 or FP16, [B, n, dim]) and optionally
// `second_choice_uniforms` (FP32, [B, n] or [2, B, n]), as raw_input_contents
// or typed contents (FP32 only). Parameters, named as in moe.v1
// RoutingOptions: mode ("eval"/"train"), policy ("random", "all", "none",
// "threshold"), threshold, capacity_factor, seed, return_trace,
// on_expert_failure ("drop"/"fail"); allow_degraded; and timeout
// (microseconds, as Triton's: the call's deadline). Outputs: y (x's
// dtype), balance_loss, router_z_loss, total_aux_loss (FP32 [1]),
// kept_per_expert (INT64 [E]), dropped_tokens (INT64 [1]), and the routing
// trace's tensors when return_trace; all as raw_output_contents, or those
// the request names. The response's parameters carry `degraded`.
#pragma once

#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/model_spec.h"
#include "inference/open_inference_grpc.pb.h"
#include "moe/v1/router.pb.h"

namespace moe::router {

// The model name of layer `layer` of `spec`.
std::string OipModelName(const common::ModelSpec& spec, int layer);

// The layer index of model `name` (version `version`: empty or
// `fingerprint`). NotFound naming a few models, or the version served.
absl::StatusOr<int> FindOipModel(const common::ModelSpec& spec,
                                 const std::string& fingerprint,
                                 absl::string_view name,
                                 absl::string_view version);

// ServerMetadata: name "moe-serve", `version`, and the protocol's
// extensions served ("binary_tensor_data": REST bodies may carry tensors
// as bytes after their JSON, docs/open_inference.md; "model_configuration":
// Triton's configuration of each model; "statistics": each model's counts
// and durations).
inference::ServerMetadataResponse OipServerMetadata(absl::string_view version);

// Triton's model configuration of a model, from its metadata: its name,
// platform and backend "moe-serve", max_batch_size 0 (the dims give every
// dimension, the batch's too), and its inputs (second_choice_uniforms
// optional) and outputs with Triton's data types (TYPE_FP32, TYPE_INT64).
inference::ModelConfigResponse OipModelConfig(
    const inference::ModelMetadataResponse& metadata);

// The statistics extension's answer: every model of `spec` (version
// `fingerprint`), or the one `request` names (FindOipModel: NotFound for
// an unknown name or version; InvalidArgument for a version without a
// name), each with its name and version and the counts `fill(layer, stats)`
// writes.
absl::StatusOr<inference::ModelStatisticsResponse> OipModelStatistics(
    const inference::ModelStatisticsRequest& request,
    const common::ModelSpec& spec, const std::string& fingerprint,
    absl::FunctionRef<void(int layer, inference::ModelStatistics* stats)> fill);

// The repository index: every model of `spec` (version `fingerprint`),
// READY where `not_ready(layer)` is empty, else UNAVAILABLE with it as the
// reason; only the READY ones when the request asks for them. NotFound for
// a repository_name: the server's one repository has none.
absl::StatusOr<inference::RepositoryIndexResponse> OipRepositoryIndex(
    const inference::RepositoryIndexRequest& request,
    const common::ModelSpec& spec, const std::string& fingerprint,
    absl::FunctionRef<std::string(int layer)> not_ready);

// ModelMetadata of layer `layer`.
inference::ModelMetadataResponse OipModelMetadata(
    const common::ModelSpec& spec, const std::string& fingerprint, int layer);

// The elements of an input's `shape`; InvalidArgument naming `what` for a
// negative dimension or an absurd size.
absl::StatusOr<int64_t> OipElements(
    const google::protobuf::RepeatedField<int64_t>& shape,
    const std::string& what);

// The bytes of one element of `datatype` ("FP32": 4); 0 for a datatype no
// tensor of this protocol's models has.
int64_t OipDatatypeBytes(absl::string_view datatype);

// What a ModelInfer asks beyond the ForwardRequest.
struct OipInferRequest {
  moe::v1::ForwardRequest forward;
  bool allow_degraded = false;
  std::vector<std::string> outputs;  // empty: all
  // The parameter `timeout` (Triton's, in microseconds): the call's
  // deadline is at most this long after its arrival.
  absl::Duration timeout = absl::InfiniteDuration();
};

// The ForwardRequest of `request` for layer `layer`; InvalidArgument naming
// the input or parameter and what is wrong.
absl::StatusOr<OipInferRequest> FromModelInfer(
    const inference::ModelInferRequest& request, const common::ModelSpec& spec,
    int layer);

// The ModelInferResponse of `*response`, whose tensors' bytes it takes (y
// is not copied; the rest of *response stays); UNAVAILABLE naming the
// failed experts for a degraded answer unless allowed (DEADLINE_EXCEEDED
// when `timed_out`: the call's deadline, its `timeout` or its transport's,
// passed during the forward, so the experts missed it rather than failed);
// InvalidArgument for an output the model does not have or one asked
// twice.
absl::StatusOr<inference::ModelInferResponse> ToModelInfer(
    moe::v1::ForwardResponse* response, const OipInferRequest& asked,
    const std::string& model_name, const std::string& version,
    const std::string& id, bool timed_out = false);

}  // namespace moe::router
