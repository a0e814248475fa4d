// The Open Inference Protocol's mapping onto moe.v1 (router/api/
// open_inference.h), message to message; the service tests run it end to
// end (router_service_test, open_inference_integration_test).
#include "router/api/open_inference.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "router/api/open_inference_json.h"

namespace moe::router {
namespace {

common::ModelSpec TwoLayers() {
  common::ModelSpec spec;
  spec.name = "tiny";
  spec.dim = 4;
  common::LayerConfig c;
  c.num_experts = 8;
  spec.layers = {{"layers.0.ff", c}, {"layers.1.ff", c}};
  return spec;
}

std::string Floats(std::vector<float> v) {
  return std::string(reinterpret_cast<const char*>(v.data()),
                     v.size() * sizeof(float));
}

inference::ModelInferRequest Request(const std::string& datatype,
                                     std::vector<int64_t> shape,
                                     std::string raw) {
  inference::ModelInferRequest r;
  r.set_model_name("layers.1.ff");
  auto* x = r.add_inputs();
  x->set_name("x");
  x->set_datatype(datatype);
  for (int64_t d : shape) x->add_shape(d);
  r.add_raw_input_contents(std::move(raw));
  return r;
}

TEST(OpenInferenceTest, EveryLayerIsAModelAndTheFingerprintItsVersion) {
  const common::ModelSpec spec = TwoLayers();
  EXPECT_EQ(FindOipModel(spec, "sha256:ab", "layers.1.ff", "").value(), 1);
  EXPECT_EQ(FindOipModel(spec, "sha256:ab", "layers.0.ff", "sha256:ab").value(),
            0);
  absl::StatusOr<int> other =
      FindOipModel(spec, "sha256:ab", "layers.0.ff", "2");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(other.status().message().find("serves version sha256:ab"),
            std::string::npos);
  absl::StatusOr<int> unknown = FindOipModel(spec, "sha256:ab", "tiny", "");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(unknown.status().message().find("\"layers.0.ff\""),
            std::string::npos);
  // A one-layer model's unnamed layer is named by the model.
  common::ModelSpec one = spec;
  one.layers = {{"", spec.layers[0].config}};
  EXPECT_EQ(OipModelName(one, 0), "tiny");
  EXPECT_EQ(FindOipModel(one, "f", "tiny", "").value(), 0);
  EXPECT_FALSE(FindOipModel(one, "f", "", "").ok());
  const inference::ModelMetadataResponse m = OipModelMetadata(spec, "f", 1);
  EXPECT_EQ(m.name(), "layers.1.ff");
  EXPECT_EQ(m.outputs(4).name(), "kept_per_expert");
  EXPECT_EQ(m.outputs(4).shape(0), 8);
}

TEST(OpenInferenceTest, InputsAndParametersBecomeTheForwardRequest) {
  const common::ModelSpec spec = TwoLayers();
  inference::ModelInferRequest r =
      Request("BF16", {1, 2, 4}, std::string(16, '\x01'));
  (*r.mutable_parameters())["mode"].set_string_param("train");
  (*r.mutable_parameters())["policy"].set_string_param("threshold");
  (*r.mutable_parameters())["threshold"].set_double_param(0.25);
  (*r.mutable_parameters())["capacity_factor"].set_int64_param(3);
  (*r.mutable_parameters())["seed"].set_uint64_param(42);
  (*r.mutable_parameters())["return_trace"].set_bool_param(true);
  (*r.mutable_parameters())["on_expert_failure"].set_string_param("fail");
  (*r.mutable_parameters())["allow_degraded"].set_bool_param(true);
  (*r.mutable_parameters())["timeout"].set_int64_param(2500);
  auto* u = r.add_inputs();
  u->set_name("second_choice_uniforms");
  u->set_datatype("FP32");
  u->add_shape(1);
  u->add_shape(2);
  r.add_raw_input_contents(Floats({0.5f, 0.25f}));
  r.add_outputs()->set_name("y");
  absl::StatusOr<OipInferRequest> got = FromModelInfer(r, spec, 1);
  ASSERT_TRUE(got.ok()) << got.status();
  const moe::v1::ForwardRequest& f = got->forward;
  EXPECT_EQ(f.layer(), "layers.1.ff");
  EXPECT_EQ(f.x().dtype(), moe::v1::BFLOAT16);
  EXPECT_EQ(f.x().data(), std::string(16, '\x01'));
  EXPECT_EQ(f.options().mode(), moe::v1::TRAIN);
  EXPECT_EQ(f.options().policy(), moe::v1::THRESHOLD);
  EXPECT_FLOAT_EQ(f.options().threshold(), 0.25f);
  EXPECT_EQ(f.options().capacity_factor(), 3.0);
  EXPECT_EQ(f.options().seed(), 42u);
  EXPECT_TRUE(f.options().return_trace());
  EXPECT_EQ(f.options().second_choice_uniforms().data(), Floats({0.5f, 0.25f}));
  EXPECT_EQ(f.on_expert_failure(), moe::v1::ON_FAILURE_FAIL);
  EXPECT_TRUE(got->allow_degraded);
  EXPECT_EQ(got->timeout, absl::Microseconds(2500));
  EXPECT_EQ(got->outputs, std::vector<std::string>{"y"});
  // Triton's timeout 0 is none; unsigned is as good as signed.
  (*r.mutable_parameters())["timeout"].set_int64_param(0);
  EXPECT_EQ(FromModelInfer(r, spec, 1)->timeout, absl::InfiniteDuration());
  (*r.mutable_parameters())["timeout"].set_uint64_param(7);
  EXPECT_EQ(FromModelInfer(r, spec, 1)->timeout, absl::Microseconds(7));
}

TEST(OpenInferenceTest, MalformedInputsAreRefusedNamingTheTensor) {
  const common::ModelSpec spec = TwoLayers();
  auto refused = [&](const inference::ModelInferRequest& r) {
    absl::StatusOr<OipInferRequest> got = FromModelInfer(r, spec, 0);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(got.status().message());
  };
  // BF16 as typed contents: the protocol has no field for it.
  inference::ModelInferRequest typed = Request("BF16", {1, 1, 4}, "");
  typed.clear_raw_input_contents();
  EXPECT_NE(refused(typed).find("only as raw_input_contents"),
            std::string::npos);
  // Typed FP32 with too few values.
  inference::ModelInferRequest few = Request("FP32", {1, 1, 4}, "");
  few.clear_raw_input_contents();
  few.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1.f);
  EXPECT_NE(refused(few).find("has 1 values"), std::string::npos);
  // Raw and typed at once.
  inference::ModelInferRequest both =
      Request("FP32", {1, 1, 4}, Floats({1, 2, 3, 4}));
  both.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1.f);
  EXPECT_NE(refused(both).find("must not be set"), std::string::npos);
  // A raw entry missing, a huge shape, a negative one, no x, x twice.
  inference::ModelInferRequest missing =
      Request("FP32", {1, 1, 4}, Floats({1, 2, 3, 4}));
  missing.add_inputs()->set_name("second_choice_uniforms");
  EXPECT_NE(refused(missing).find("one per input"), std::string::npos);
  EXPECT_NE(refused(Request("FP32", {1 << 30, 1 << 30, 1 << 30}, ""))
                .find("too large"),
            std::string::npos);
  EXPECT_NE(refused(Request("FP32", {1, -1, 4}, "")).find("negative"),
            std::string::npos);
  inference::ModelInferRequest none;
  EXPECT_NE(refused(none).find("\"x\" is missing"), std::string::npos);
  inference::ModelInferRequest twice =
      Request("FP32", {1, 1, 4}, Floats({1, 2, 3, 4}));
  *twice.add_inputs() = twice.inputs(0);
  twice.add_raw_input_contents(Floats({1, 2, 3, 4}));
  EXPECT_NE(refused(twice).find("given twice"), std::string::npos);
  inference::ModelInferRequest seed =
      Request("FP32", {1, 1, 4}, Floats({1, 2, 3, 4}));
  (*seed.mutable_parameters())["seed"].set_int64_param(-1);
  EXPECT_NE(refused(seed).find("non-negative"), std::string::npos);
  inference::ModelInferRequest classify =
      Request("FP32", {1, 1, 4}, Floats({1, 2, 3, 4}));
  auto* y = classify.add_outputs();
  y->set_name("y");
  (*y->mutable_parameters())["classification"].set_int64_param(3);
  EXPECT_NE(refused(classify).find(
                "output \"y\": unknown parameter \"classification\""),
            std::string::npos);
  for (const double bad : {-1.0, 1.5}) {
    inference::ModelInferRequest timeout =
        Request("FP32", {1, 1, 4}, Floats({1, 2, 3, 4}));
    auto& p = (*timeout.mutable_parameters())["timeout"];
    if (bad < 0) {
      p.set_int64_param(-1);
    } else {
      p.set_double_param(bad);
    }
    EXPECT_NE(
        refused(timeout).find("\"timeout\" must be an integer of microseconds"),
        std::string::npos);
  }
}

TEST(OpenInferenceTest, TheAnswerCarriesEveryOutputOrTheOnesAsked) {
  moe::v1::ForwardResponse f;
  f.mutable_y()->set_dtype(moe::v1::FLOAT32);
  for (int64_t d : {1, 1, 4}) f.mutable_y()->add_shape(d);
  f.mutable_y()->set_data(Floats({1, 2, 3, 4}));
  f.mutable_losses()->set_balance_loss(0.5);
  f.mutable_stats()->add_kept_per_expert(3);
  f.mutable_stats()->add_kept_per_expert(1);
  f.mutable_stats()->mutable_routing()->set_dropped_tokens(2);
  auto* trace = f.add_trace();
  trace->set_name("gate_indices");
  trace->mutable_tensor()->set_dtype(moe::v1::INT64);
  trace->mutable_tensor()->add_shape(1);
  trace->mutable_tensor()->set_data(std::string(8, '\0'));
  OipInferRequest asked;
  absl::StatusOr<inference::ModelInferResponse> r =
      ToModelInfer(&f, asked, "m", "v", "id-1");
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<std::string> names;
  for (const auto& o : r->outputs()) names.push_back(o.name());
  EXPECT_EQ(names, (std::vector<std::string>{
                       "y", "balance_loss", "router_z_loss", "total_aux_loss",
                       "kept_per_expert", "dropped_tokens", "gate_indices"}));
  EXPECT_EQ(r->raw_output_contents(0), Floats({1, 2, 3, 4}));
  EXPECT_TRUE(f.y().data().empty());  // taken, not copied
  f.mutable_y()->set_data(Floats({1, 2, 3, 4}));
  EXPECT_EQ(r->raw_output_contents(1), Floats({0.5f}));
  int64_t dropped = 0;
  std::memcpy(&dropped, r->raw_output_contents(5).data(), 8);
  EXPECT_EQ(dropped, 2);
  EXPECT_EQ(r->outputs(4).shape(0), 2);
  EXPECT_EQ(r->id(), "id-1");
  // A degraded answer is an error unless the request allows it.
  f.set_degraded(true);
  f.add_failed_experts(5);
  absl::StatusOr<inference::ModelInferResponse> degraded =
      ToModelInfer(&f, asked, "m", "v", "");
  EXPECT_EQ(degraded.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(degraded.status().message().find("experts [5]"), std::string::npos);
  // Experts that missed the request's own timeout did not fail.
  asked.timeout = absl::Milliseconds(2);
  degraded = ToModelInfer(&f, asked, "m", "v", "", /*timed_out=*/true);
  EXPECT_EQ(degraded.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(
      degraded.status().message().find(
          "the call's deadline (its timeout, 2ms) passed before experts [5]"),
      std::string::npos)
      << degraded.status();
  asked.allow_degraded = true;
  asked.outputs = {"dropped_tokens"};
  r = ToModelInfer(&f, asked, "m", "v", "");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outputs_size(), 1);
  asked.outputs = {"y", "y"};
  EXPECT_NE(ToModelInfer(&f, asked, "m", "v", "")
                .status()
                .message()
                .find("asked for twice"),
            std::string::npos);
  EXPECT_TRUE(r->parameters().at("degraded").bool_param());
}

// REST bodies: JSON into the gRPC message, nested data flattened, every
// malformed body a clear InvalidArgument.
TEST(OpenInferenceJsonTest, BodiesBecomeModelInferRequests) {
  absl::StatusOr<RestInferRequest> rest = ModelInferFromJson(
      R"({"id": "j1", "parameters": {"policy": "all", "seed": 3,
          "threshold": 0.5, "return_trace": true},
          "inputs": [{"name": "x", "shape": [1, 2, 2], "datatype": "FP32",
                      "data": [[[1, 2], [3, 4.5]]]}],
          "outputs": [{"name": "y"}]})",
      "", "layers.0.ff", "");
  ASSERT_TRUE(rest.ok()) << rest.status();
  const inference::ModelInferRequest* r = &rest->request;
  EXPECT_FALSE(rest->Binary("y"));
  EXPECT_EQ(r->raw_input_contents_size(), 0);
  EXPECT_EQ(r->id(), "j1");
  EXPECT_EQ(r->model_name(), "layers.0.ff");
  EXPECT_EQ(r->parameters().at("policy").string_param(), "all");
  EXPECT_EQ(r->parameters().at("seed").uint64_param(), 3u);
  EXPECT_EQ(r->parameters().at("threshold").double_param(), 0.5);
  EXPECT_TRUE(r->parameters().at("return_trace").bool_param());
  ASSERT_EQ(r->inputs_size(), 1);
  EXPECT_EQ(r->inputs(0).contents().fp32_contents_size(), 4);
  EXPECT_EQ(r->inputs(0).contents().fp32_contents(3), 4.5f);
  EXPECT_EQ(r->outputs(0).name(), "y");
  const std::pair<const char*, const char*> bad[] = {
      {"{", "the body is not valid JSON: parse error at line 1, column 2"},
      {" \n", "the body is not valid JSON: it is empty"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
           "data": [NaN]}]})",
       "invalid literal (NaN and Infinity are not JSON numbers"},
      {R"({"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32",
           "data": [1, 2]}]})",
       "input \"x\": \"data\" has 2 values; shape [1, 2, 3] needs 6"},
      {"[1]", "must be a JSON object"},
      {R"({"inputs": 3})", "\"inputs\" must be an array"},
      {R"({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]})",
       "no \"name\""},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "BF16",
           "data": [1]}]})",
       "send FP32 numbers, or the tensor as binary data"},
      {R"({"inputs": [], "outputs": [{"name": "y",
           "parameters": {"classification": 3}}]})",
       "output \"y\": unknown parameter \"classification\" (known: "
       "binary_data)"},
      {R"({"inputs": [], "outputs": [{"name": "y",
           "parameters": {"binary_data": 1}}]})",
       "\"binary_data\" must be a bool"},
      {R"({"inputs": [], "parameters": {"binary_data_output": "yes"}})",
       "\"binary_data_output\" must be a bool"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
           "parameters": {"binary_data_size": 4}}]})",
       "input \"x\" has a binary_data_size, so the request needs an "
       "Inference-Header-Content-Length header"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
           "data": ["a"]}]})",
       "not a number"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
           "data": [1e300]}]})",
       "outside float32's range"},
      {R"({"inputs": [{"name": "x", "shape": [1.5], "datatype": "FP32",
           "data": [1]}]})",
       "must hold integers"},
      {R"({"inputs": [], "parameters": {"seed": [1]}})",
       "must be a bool, a number or a string"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
           "data": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}]})",
       "nested too deeply"},
  };
  for (const auto& [body, says] : bad) {
    absl::StatusOr<RestInferRequest> got =
        ModelInferFromJson(body, "", "m", "");
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << body;
    EXPECT_NE(got.status().message().find(says), std::string::npos)
        << got.status();
  }
}

TEST(OpenInferenceJsonTest, AnswersAreWrittenAsNumbers) {
  inference::ModelInferResponse r;
  r.set_model_name("m");
  r.set_id("q");
  (*r.mutable_parameters())["degraded"].set_bool_param(false);
  auto* y = r.add_outputs();
  y->set_name("y");
  y->set_datatype("FP32");
  y->add_shape(2);
  r.add_raw_output_contents(Floats({0.5f, -2.0f}));
  auto* k = r.add_outputs();
  k->set_name("kept_per_expert");
  k->set_datatype("INT64");
  k->add_shape(1);
  const int64_t seven = 7;
  r.add_raw_output_contents(
      std::string(reinterpret_cast<const char*>(&seven), 8));
  const RestInferAnswer answer = ModelInferToJson(r);
  EXPECT_EQ(answer.json_length, -1);
  const std::string& json = answer.body;
  EXPECT_NE(json.find(R"("data":[0.5,-2.0])"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("data":[7])"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("degraded":false)"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("id":"q")"), std::string::npos) << json;
  EXPECT_EQ(ErrorJson("bad \"x\""), R"({"error":"bad \"x\""})");
}

// Binary tensor data: the JSON of Inference-Header-Content-Length bytes,
// then each binary input's bytes in the order of the inputs; every input
// then travels as raw_input_contents, as the gRPC form takes them.
TEST(OpenInferenceJsonTest, BinaryTensorDataFollowsTheJson) {
  const std::string json =
      R"({"inputs": [{"name": "second_choice_uniforms", "shape": [1, 2],
                      "datatype": "FP32", "data": [0.25, 0.75]},
                     {"name": "x", "shape": [1, 2, 2], "datatype": "BF16",
                      "parameters": {"binary_data_size": 8}}],
          "parameters": {"binary_data_output": true, "seed": 1},
          "outputs": [{"name": "y"},
                      {"name": "kept_per_expert",
                       "parameters": {"binary_data": false}}]})";
  const std::string x("\x80\x3f\x00\x40\x40\x40\x80\x40", 8);  // 1 2 3 4
  absl::StatusOr<RestInferRequest> rest = ModelInferFromJson(
      json + x, std::to_string(json.size()), "layers.1.ff", "");
  ASSERT_TRUE(rest.ok()) << rest.status();
  const inference::ModelInferRequest& r = rest->request;
  ASSERT_EQ(r.raw_input_contents_size(), 2);
  EXPECT_EQ(r.raw_input_contents(0), Floats({0.25f, 0.75f}));
  EXPECT_FALSE(r.inputs(0).has_contents());
  EXPECT_EQ(r.raw_input_contents(1), x);
  // The REST form's own parameters are not the request's.
  EXPECT_EQ(r.parameters().count("binary_data_output"), 0u);
  EXPECT_EQ(r.inputs(1).parameters().count("binary_data_size"), 0u);
  EXPECT_EQ(r.parameters().at("seed").uint64_param(), 1u);
  EXPECT_TRUE(rest->Binary("y"));
  EXPECT_FALSE(rest->Binary("kept_per_expert"));
  EXPECT_TRUE(rest->Binary("dropped_tokens"));
  absl::StatusOr<OipInferRequest> translated =
      FromModelInfer(r, TwoLayers(), 1);
  ASSERT_TRUE(translated.ok()) << translated.status();
  EXPECT_EQ(translated->forward.x().dtype(), moe::v1::BFLOAT16);
  EXPECT_EQ(translated->forward.x().data(), x);

  // The answer: y's bytes after the JSON, kept_per_expert as numbers.
  inference::ModelInferResponse answer;
  auto* y = answer.add_outputs();
  y->set_name("y");
  y->set_datatype("FP32");
  y->add_shape(2);
  answer.add_raw_output_contents(Floats({0.5f, -2.0f}));
  auto* k = answer.add_outputs();
  k->set_name("kept_per_expert");
  k->set_datatype("INT64");
  k->add_shape(1);
  const int64_t seven = 7;
  answer.add_raw_output_contents(
      std::string(reinterpret_cast<const char*>(&seven), 8));
  const RestInferAnswer written = ModelInferToJson(answer, &*rest);
  ASSERT_GT(written.json_length, 0);
  const std::string head = written.body.substr(0, written.json_length);
  EXPECT_EQ(written.body.substr(written.json_length), Floats({0.5f, -2.0f}));
  EXPECT_NE(head.find(R"("parameters":{"binary_data_size":8})"),
            std::string::npos)
      << head;
  EXPECT_NE(head.find(R"("data":[7])"), std::string::npos) << head;

  // What is wrong with the bytes is named.
  const std::string one_x =
      R"({"inputs": [{"name": "x", "shape": [1, 1, 2], "datatype": "FP32",
                      "parameters": {"binary_data_size": 8}}]})";
  const std::string eight(8, '\0');
  const struct {
    std::string body;
    std::string json_length;
    std::string says;
  } bad[] = {
      {one_x + eight, "x", "Inference-Header-Content-Length: \"x\" is not"},
      {one_x + eight, std::to_string(one_x.size() + 9),
       "(the body has " + std::to_string(one_x.size() + 8) + " bytes)"},
      {one_x + eight, "3", "the body's JSON (its first "},
      {one_x + eight + "!", std::to_string(one_x.size()),
       "the body has 9 bytes after its JSON; its inputs' binary_data_size add "
       "up to 8"},
      {one_x + "1234", std::to_string(one_x.size()),
       "input \"x\": binary_data_size 8 passes the 4 bytes left"},
      {R"({"inputs": [{"name": "x", "shape": [1, 1, 2], "datatype": "BF16",
                       "parameters": {"binary_data_size": 8}}]})",
       "", "binary_data_size is 8 bytes; shape [1, 1, 2] of BF16 needs 4"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                       "data": [1], "parameters": {"binary_data_size": 4}}]})",
       "", "has both \"data\" and a binary_data_size"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                       "parameters": {"binary_data_size": -4}}]})",
       "", "must be a byte count"},
  };
  for (const auto& [body, length, says] : bad) {
    absl::StatusOr<RestInferRequest> got =
        ModelInferFromJson(body, length, "m", "");
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << says;
    EXPECT_NE(got.status().message().find(says), std::string::npos)
        << got.status();
  }
}

TEST(OpenInferenceTest, TheRepositoryIndexSaysWhichModelsAreReady) {
  const common::ModelSpec spec = TwoLayers();
  const auto second_down = [](int layer) {
    return layer == 1 ? std::string("2 of its experts have no worker up")
                      : std::string();
  };
  inference::RepositoryIndexRequest request;
  absl::StatusOr<inference::RepositoryIndexResponse> all =
      OipRepositoryIndex(request, spec, "sha256:ab", second_down);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(RepositoryIndexToJson(*all),
            R"([{"name":"layers.0.ff","state":"READY","version":"sha256:ab"},)"
            R"({"name":"layers.1.ff","reason":"2 of its experts have no )"
            R"(worker up","state":"UNAVAILABLE","version":"sha256:ab"}])");
  request.set_ready(true);
  absl::StatusOr<inference::RepositoryIndexResponse> ready =
      OipRepositoryIndex(request, spec, "sha256:ab", second_down);
  ASSERT_TRUE(ready.ok()) << ready.status();
  ASSERT_EQ(ready->models_size(), 1);
  EXPECT_EQ(ready->models(0).name(), "layers.0.ff");
  request.set_repository_name("models");
  absl::StatusOr<inference::RepositoryIndexResponse> named =
      OipRepositoryIndex(request, spec, "sha256:ab", second_down);
  EXPECT_EQ(named.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(named.status().message().find("no repository \"models\""),
            std::string::npos)
      << named.status();
  EXPECT_EQ(RepositoryIndexToJson({}), "[]");
}

TEST(OpenInferenceJsonTest, IndexBodiesAreEmptyOrAskOnlyForReadiness) {
  for (const char* all : {"", " \r\n", "{}", R"({"ready": false})"}) {
    absl::StatusOr<inference::RepositoryIndexRequest> r =
        RepositoryIndexFromJson(all);
    ASSERT_TRUE(r.ok()) << all << ": " << r.status();
    EXPECT_FALSE(r->ready()) << all;
    EXPECT_EQ(r->repository_name(), "");
  }
  EXPECT_TRUE(RepositoryIndexFromJson(R"({"ready": true})")->ready());
  const std::vector<std::pair<std::string, std::string>> refused = {
      {R"({"ready": "yes"})", "\"ready\" must be true or false"},
      {R"({"ready": true, "x": 1})", "unknown field \"x\""},
      {"[]", "must be a JSON object"},
      {"{", "not valid JSON"},
  };
  for (const auto& [body, why] : refused) {
    absl::StatusOr<inference::RepositoryIndexRequest> r =
        RepositoryIndexFromJson(body);
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(why), std::string::npos) << r.status();
  }
}

}  // namespace
}  // namespace moe::router
