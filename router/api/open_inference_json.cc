#include "router/api/open_inference_json.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dtype.h"
#include "common/json_errors.h"
#include "common/logging.h"
#include "router/api/open_inference.h"

namespace moe::router {
namespace {

using Json = nlohmann::json;

// Nesting deeper than this is not a tensor (and would cost stack).
constexpr int kMaxDepth = 16;

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(what);
}

// Appends the numbers of `data` (nested arrays flattened) to `out`.
absl::Status Flatten(const Json& data, int depth, const std::string& what,
                     std::vector<float>* out) {
  if (depth > kMaxDepth) return Bad(what + ": data is nested too deeply");
  if (data.is_array()) {
    for (const Json& v : data) {
      absl::Status s = Flatten(v, depth + 1, what, out);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (!data.is_number()) {
    return Bad(what + ": data holds something that is not a number");
  }
  const double v = data.get<double>();
  if (!(std::fabs(v) <= std::numeric_limits<float>::max())) {
    return Bad(what + ": data holds a number outside float32's range");
  }
  out->push_back(static_cast<float>(v));
  return absl::OkStatus();
}

absl::Status Parameter(const std::string& name, const Json& v,
                       inference::InferParameter* p) {
  if (v.is_boolean()) {
    p->set_bool_param(v.get<bool>());
  } else if (v.is_number_unsigned()) {
    p->set_uint64_param(v.get<uint64_t>());
  } else if (v.is_number_integer()) {
    p->set_int64_param(v.get<int64_t>());
  } else if (v.is_number_float()) {
    p->set_double_param(v.get<double>());
  } else if (v.is_string()) {
    p->set_string_param(v.get<std::string>());
  } else {
    return Bad(absl::StrCat("parameter ", common::QuoteForLog(name),
                            " must be a bool, a number or a string"));
  }
  return absl::OkStatus();
}

absl::Status Parameters(
    const Json& body,
    google::protobuf::Map<std::string, inference::InferParameter>* out) {
  auto it = body.find("parameters");
  if (it == body.end()) return absl::OkStatus();
  if (!it->is_object()) return Bad("parameters must be an object");
  for (const auto& [name, value] : it->items()) {
    absl::Status s = Parameter(name, value, &(*out)[name]);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status Input(const Json& in, inference::ModelInferRequest* r) {
  if (!in.is_object()) return Bad("every input must be an object");
  auto name = in.find("name");
  if (name == in.end() || !name->is_string()) {
    return Bad("an input has no \"name\" string");
  }
  const std::string what =
      absl::StrCat("input ", common::QuoteForLog(name->get<std::string>()));
  auto datatype = in.find("datatype");
  if (datatype == in.end() || !datatype->is_string()) {
    return Bad(what + ": no \"datatype\" string");
  }
  if (datatype->get<std::string>() != "FP32") {
    return Bad(absl::StrCat(
        what, ": datatype ", common::QuoteForLog(datatype->get<std::string>()),
        " in JSON: send FP32 (BF16 and FP16 travel over gRPC, as "
        "raw_input_contents)"));
  }
  auto shape = in.find("shape");
  if (shape == in.end() || !shape->is_array() || shape->size() > 8) {
    return Bad(what + ": \"shape\" must be an array of at most 8 integers");
  }
  auto* t = r->add_inputs();
  t->set_name(name->get<std::string>());
  t->set_datatype("FP32");
  for (const Json& d : *shape) {
    if (!d.is_number_integer()) {
      return Bad(what + ": \"shape\" must hold integers");
    }
    t->add_shape(d.get<int64_t>());
  }
  auto data = in.find("data");
  if (data == in.end()) return Bad(what + ": no \"data\"");
  std::vector<float> values;
  absl::Status s = Flatten(*data, 0, what, &values);
  if (!s.ok()) return s;
  // The count against the shape in this form's words (the check the two
  // forms share names the gRPC form's field).
  absl::StatusOr<int64_t> needs = OipElements(t->shape(), what);
  if (!needs.ok()) return needs.status();
  if (static_cast<size_t>(*needs) != values.size()) {
    return Bad(absl::StrCat(what, ": \"data\" has ", values.size(),
                            " values; shape [", absl::StrJoin(t->shape(), ", "),
                            "] needs ", *needs));
  }
  t->mutable_contents()->mutable_fp32_contents()->Add(values.begin(),
                                                      values.end());
  return Parameters(in, t->mutable_parameters());
}

// The elements of a raw output as JSON numbers.
Json Numbers(const inference::ModelInferResponse::InferOutputTensor& t,
             const std::string& bytes) {
  Json data = Json::array();
  if (t.datatype() == "INT64") {
    const size_t n = bytes.size() / sizeof(int64_t);
    for (size_t i = 0; i < n; ++i) {
      int64_t v;
      std::memcpy(&v, bytes.data() + i * sizeof(v), sizeof(v));
      data.push_back(v);
    }
    return data;
  }
  common::DType dtype = common::DType::kFloat32;
  if (t.datatype() == "BF16") dtype = common::DType::kBFloat16;
  if (t.datatype() == "FP16") dtype = common::DType::kFloat16;
  const int64_t n =
      static_cast<int64_t>(bytes.size() / common::ElementSize(dtype));
  std::vector<float> values(n);
  common::ConvertToFloat32(dtype, bytes.data(), n, values.data());
  for (float v : values) data.push_back(v);
  return data;
}

Json ParametersJson(
    const google::protobuf::Map<std::string, inference::InferParameter>& m) {
  Json out = Json::object();
  for (const auto& [name, p] : m) {
    switch (p.parameter_choice_case()) {
      case inference::InferParameter::kBoolParam:
        out[name] = p.bool_param();
        break;
      case inference::InferParameter::kInt64Param:
        out[name] = p.int64_param();
        break;
      case inference::InferParameter::kUint64Param:
        out[name] = p.uint64_param();
        break;
      case inference::InferParameter::kDoubleParam:
        out[name] = p.double_param();
        break;
      default:
        out[name] = p.string_param();
    }
  }
  return out;
}

Json TensorMetadata(
    const google::protobuf::RepeatedPtrField<
        inference::ModelMetadataResponse::TensorMetadata>& tensors) {
  Json out = Json::array();
  for (const auto& t : tensors) {
    out.push_back(
        {{"name", t.name()},
         {"datatype", t.datatype()},
         {"shape", std::vector<int64_t>(t.shape().begin(), t.shape().end())}});
  }
  return out;
}

// Never throws: invalid UTF-8 in a string is replaced.
std::string Dump(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace

absl::StatusOr<inference::ModelInferRequest> ModelInferFromJson(
    absl::string_view body, const std::string& model,
    const std::string& version) {
  const Json root = Json::parse(body.begin(), body.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return Bad(
        absl::StrCat("the body is not valid JSON: ", common::WhyNotJson(body)));
  }
  if (!root.is_object()) return Bad("the body must be a JSON object");
  inference::ModelInferRequest r;
  r.set_model_name(model);
  r.set_model_version(version);
  auto id = root.find("id");
  if (id != root.end()) {
    if (!id->is_string()) return Bad("\"id\" must be a string");
    r.set_id(id->get<std::string>());
  }
  absl::Status s = Parameters(root, r.mutable_parameters());
  if (!s.ok()) return s;
  auto inputs = root.find("inputs");
  if (inputs == root.end() || !inputs->is_array()) {
    return Bad("\"inputs\" must be an array of tensors");
  }
  for (const Json& in : *inputs) {
    s = Input(in, &r);
    if (!s.ok()) return s;
  }
  auto outputs = root.find("outputs");
  if (outputs != root.end()) {
    if (!outputs->is_array()) return Bad("\"outputs\" must be an array");
    for (const Json& o : *outputs) {
      auto name = o.is_object() ? o.find("name") : o.end();
      if (!o.is_object() || name == o.end() || !name->is_string()) {
        return Bad("every output must be an object with a \"name\" string");
      }
      r.add_outputs()->set_name(name->get<std::string>());
    }
  }
  return r;
}

std::string ModelInferToJson(const inference::ModelInferResponse& response) {
  Json outputs = Json::array();
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& t = response.outputs(i);
    outputs.push_back(
        {{"name", t.name()},
         {"datatype", t.datatype()},
         {"shape", std::vector<int64_t>(t.shape().begin(), t.shape().end())},
         {"data", Numbers(t, i < response.raw_output_contents_size()
                                 ? response.raw_output_contents(i)
                                 : std::string())}});
  }
  Json out = {{"model_name", response.model_name()},
              {"model_version", response.model_version()},
              {"parameters", ParametersJson(response.parameters())},
              {"outputs", std::move(outputs)}};
  if (!response.id().empty()) out["id"] = response.id();
  return Dump(out);
}

std::string ModelMetadataToJson(const inference::ModelMetadataResponse& m) {
  return Dump({{"name", m.name()},
               {"versions", std::vector<std::string>(m.versions().begin(),
                                                     m.versions().end())},
               {"platform", m.platform()},
               {"inputs", TensorMetadata(m.inputs())},
               {"outputs", TensorMetadata(m.outputs())}});
}

std::string ServerMetadataToJson(const inference::ServerMetadataResponse& m) {
  return Dump({{"name", m.name()},
               {"version", m.version()},
               {"extensions", std::vector<std::string>(m.extensions().begin(),
                                                       m.extensions().end())}});
}

std::string ErrorJson(absl::string_view message) {
  return Dump({{"error", std::string(message)}});
}

}  // namespace moe::router
