// The Open Inference Protocol's REST bodies: any bytes as an infer body
// (router::ModelInferFromJson), then the request's translation into a
// ForwardRequest (router::FromModelInfer) against a small two-layer model,
// and an answer of the request's own inputs written back as JSON (with
// binary data where asked); each body also as JSON followed by binary
// tensor data. Every
// outcome is OK or a clear InvalidArgument / NotFound; nothing throws,
// crashes or overflows; the inputs' numbers read straight from the text
// (DataNumbers::kLifted) give the request, or the refusal, that reading
// them as JSON values gives. The bytes are also a repository index
// request's body (router::RepositoryIndexFromJson).
#include <cstdint>
#include <string>

#include "router/api/open_inference.h"
#include "router/api/open_inference_json.h"
#include "tests/testing/message_bytes.h"

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

// The body as JSON alone, and as JSON of the bytes up to its last '}'
// followed by binary tensor data (the Inference-Header-Content-Length
// form).
void OneBody(const std::string& body, const std::string& json_length) {
  absl::StatusOr<moe::router::RestInferRequest> rest =
      moe::router::ModelInferFromJson(body, json_length, "layers.1.ff", "");
  if (!Clear(rest.status())) __builtin_trap();
  const absl::StatusOr<moe::router::RestInferRequest> reference =
      moe::router::ModelInferFromJson(body, json_length, "layers.1.ff", "",
                                      moe::router::DataNumbers::kJsonValues);
  if (rest.status() != reference.status()) __builtin_trap();
  if (rest.ok() && (moe::testing::MessageBytes(rest->request) !=
                        moe::testing::MessageBytes(reference->request) ||
                    rest->binary_outputs != reference->binary_outputs ||
                    rest->binary != reference->binary)) {
    __builtin_trap();
  }
  if (!rest.ok()) return;
  const inference::ModelInferRequest& request = rest->request;
  absl::StatusOr<moe::router::OipInferRequest> translated =
      moe::router::FromModelInfer(request, Spec(), 1);
  if (!Clear(translated.status())) __builtin_trap();
  // The inputs as outputs: every datatype's bytes written as numbers, or
  // as binary data where the request asks for it.
  inference::ModelInferResponse answer;
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& in = request.inputs(i);
    auto* out = answer.add_outputs();
    out->set_name(in.name());
    out->set_datatype(in.datatype());
    const auto& v = in.contents().fp32_contents();
    answer.add_raw_output_contents(
        i < request.raw_input_contents_size()
            ? request.raw_input_contents(i)
            : std::string(reinterpret_cast<const char*>(v.data()),
                          v.size() * sizeof(float)));
  }
  *answer.mutable_parameters() = request.parameters();
  const moe::router::RestInferAnswer written =
      moe::router::ModelInferToJson(answer, &*rest);
  if (written.body.empty() ||
      written.json_length > static_cast<int64_t>(written.body.size())) {
    __builtin_trap();
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  if (!Clear(moe::router::RepositoryIndexFromJson(body).status())) {
    __builtin_trap();
  }
  OneBody(body, "");
  const size_t end = body.rfind('}');
  if (end != std::string::npos) OneBody(body, std::to_string(end + 1));
  return 0;
}
