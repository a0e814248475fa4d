// The Open Inference Protocol's REST bodies: any bytes as an infer body
// (router::ModelInferFromJson), then the request's translation into a
// ForwardRequest (router::FromModelInfer) against a small two-layer model,
// and an answer of the request's own inputs written back as JSON. Every
// outcome is OK or a clear InvalidArgument / NotFound; nothing throws,
// crashes or overflows.
#include <cstdint>
#include <string>

#include "router/api/open_inference.h"
#include "router/api/open_inference_json.h"

namespace {

bool Clear(const absl::Status& s) {
  return s.ok() || absl::IsInvalidArgument(s) || absl::IsNotFound(s);
}

const moe::common::ModelSpec& Spec() {
  static const moe::common::ModelSpec* spec = [] {
    auto* s = new moe::common::ModelSpec;
    s->name = "tiny";
    s->dim = 4;
    moe::common::LayerConfig c;
    c.num_experts = 4;
    s->layers = {{"layers.0.ff", c}, {"layers.1.ff", c}};
    return s;
  }();
  return *spec;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<inference::ModelInferRequest> request =
      moe::router::ModelInferFromJson(body, "layers.1.ff", "");
  if (!Clear(request.status())) __builtin_trap();
  if (!request.ok()) return 0;
  absl::StatusOr<moe::router::OipInferRequest> translated =
      moe::router::FromModelInfer(*request, Spec(), 1);
  if (!Clear(translated.status())) __builtin_trap();
  // The inputs as outputs: every datatype's bytes written as numbers.
  inference::ModelInferResponse answer;
  for (const auto& in : request->inputs()) {
    auto* out = answer.add_outputs();
    out->set_name(in.name());
    out->set_datatype(in.datatype());
    const auto& v = in.contents().fp32_contents();
    answer.add_raw_output_contents(std::string(
        reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)));
  }
  *answer.mutable_parameters() = request->parameters();
  if (moe::router::ModelInferToJson(answer).empty()) __builtin_trap();
  return 0;
}
