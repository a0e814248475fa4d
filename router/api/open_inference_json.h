// The Open Inference Protocol's REST bodies (JSON) as its gRPC messages,
// so that the REST edge runs exactly the gRPC one's translation
// (router/api/open_inference.h). Tensors in JSON carry `data` as a flat
// array of numbers (nested arrays are flattened, row-major; FP32 only).
// Outputs are written as numbers: INT64 as they are, FP32 as the shortest
// decimals that read back as the same float32s (read as float32, or as
// doubles then cast), BF16 and FP16 as their float32 values (exact).
//
// Binary tensor data (the extension Triton and KServe define, and
// tritonclient.http uses by default): the body is a JSON object of
// `Inference-Header-Content-Length` bytes followed by the bytes of the
// inputs whose `parameters` give a `binary_data_size`, in the order of
// `inputs` (little-endian, row-major: FP32, BF16 and FP16 alike). An
// output whose `parameters` set `binary_data` (or, without that, every
// output when the request's `binary_data_output` is true) is answered the
// same way: its `binary_data_size` in its JSON, its bytes after it.
//
// Parsing never throws: anything that is not such a body is
// InvalidArgument naming what is wrong (tests/fuzz/oip_json_fuzz.cc).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "inference/open_inference_grpc.pb.h"

namespace moe::router {

// A REST infer body: its ModelInferRequest, and which outputs the answer
// carries as binary data.
struct RestInferRequest {
  inference::ModelInferRequest request;
  // The request's `binary_data_output`: every output as binary data.
  bool binary_outputs = false;
  // The outputs' own `binary_data`, which overrides it.
  std::vector<std::pair<std::string, bool>> binary;

  bool Binary(const std::string& output) const;
};

// How the numbers of the inputs' "data" are read: straight from the text
// (router/api/json_numbers.h, the fast way and the default), or each as a
// JSON value of the parser (the reference the first is tested against:
// both give the same request, or the same refusal, for every body).
enum class DataNumbers { kLifted, kJsonValues };

// The request of an infer body for `model` (version `version`, empty for
// the server's choice). `json_length` is the Inference-Header-Content-Length
// header's value: empty when the request has none (the body is JSON
// alone), else the bytes of the body's JSON, its binary tensor data after.
absl::StatusOr<RestInferRequest> ModelInferFromJson(
    absl::string_view body, absl::string_view json_length,
    const std::string& model, const std::string& version,
    DataNumbers numbers = DataNumbers::kLifted);

// An infer answer's body, and the bytes of its JSON when binary tensor
// data follows it (its Inference-Header-Content-Length; -1 when the body
// is JSON alone).
struct RestInferAnswer {
  std::string body;
  int64_t json_length = -1;
};

// The body of `response`, its outputs as `asked` says (as numbers when
// `asked` is null).
RestInferAnswer ModelInferToJson(const inference::ModelInferResponse& response,
                                 const RestInferRequest* asked = nullptr);
std::string ModelMetadataToJson(const inference::ModelMetadataResponse& m);
std::string ServerMetadataToJson(const inference::ServerMetadataResponse& m);
// {"error": message}
std::string ErrorJson(absl::string_view message);

// The repository index's REST form (POST /v2/repository/index, as Triton
// and MLServer serve it): its request from an empty body, {} or
// {"ready": BOOL} (InvalidArgument naming anything else), and its answer,
// [{"name", "version", "state"[, "reason"]}, ...].
absl::StatusOr<inference::RepositoryIndexRequest> RepositoryIndexFromJson(
    absl::string_view body);
std::string RepositoryIndexToJson(const inference::RepositoryIndexResponse& r);

// Triton's REST form of a model's configuration (GET /v2/models/NAME
// [/versions/VERSION]/config): {"name", "platform", "backend",
// "max_batch_size", "input": [{"name", "data_type": "TYPE_FP32", "format":
// "FORMAT_NONE", "dims": [...], "optional"}], "output": [{"name",
// "data_type", "dims"}]}.
std::string ModelConfigToJson(const inference::ModelConfigResponse& r);

// The statistics extension's REST answer (GET /v2/models[/NAME[/versions/
// VERSION]]/stats, as Triton serves it): {"model_stats": [{"name",
// "version", "last_inference", "inference_count", "execution_count",
// "inference_stats": {"success": {"count", "ns"}, "fail", "queue",
// "compute_input", "compute_infer", "compute_output", "cache_hit",
// "cache_miss"}, "batch_stats": [{"batch_size", "compute_input",
// "compute_infer", "compute_output"}, ...]}, ...]}.
std::string ModelStatisticsToJson(const inference::ModelStatisticsResponse& r);

}  // namespace moe::router
