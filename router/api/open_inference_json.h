// The Open Inference Protocol's REST bodies (JSON) as its gRPC messages,
// so that the REST edge runs exactly the gRPC one's translation
// (router/api/open_inference.h). Tensors in JSON carry `data` as a flat
// array of numbers (nested arrays are flattened, row-major); inputs are
// FP32 (BF16 and FP16 travel over gRPC as raw bytes). Outputs are written
// as numbers: FP32 and INT64 as they are, BF16 and FP16 as their float32
// values (exact).
//
// Parsing never throws: anything that is not such a body is
// InvalidArgument naming what is wrong (tests/fuzz/oip_json_fuzzer.cc).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "inference/open_inference_grpc.pb.h"

namespace moe::router {

// The ModelInferRequest of an infer body for `model` (version `version`,
// empty for the server's choice).
absl::StatusOr<inference::ModelInferRequest> ModelInferFromJson(
    absl::string_view body, const std::string& model,
    const std::string& version);

std::string ModelInferToJson(const inference::ModelInferResponse& response);
std::string ModelMetadataToJson(const inference::ModelMetadataResponse& m);
std::string ServerMetadataToJson(const inference::ServerMetadataResponse& m);
// {"error": message}
std::string ErrorJson(absl::string_view message);

}  // namespace moe::router
