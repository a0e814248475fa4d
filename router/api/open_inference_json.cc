#include "router/api/open_inference_json.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dtype.h"
#include "common/json_errors.h"
#include "common/logging.h"
#include "router/api/json_numbers.h"
#include "router/api/open_inference.h"

namespace moe::router {
namespace {

using Json = nlohmann::json;

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(what);
}

// Appends the numbers of `data` (nested arrays flattened) to `out`.
absl::Status Flatten(const Json& data, int depth, const std::string& what,
                     std::vector<float>* out) {
  if (depth > kMaxDataDepth) {
    return Bad(what + ": data is nested too deeply");
  }
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

// The "parameters" of `object` into `out`, but for `reserved` (a
// parameter of the REST form itself, not of the request), whose value is
// left in `*reserved_value` (null when it is not given).
absl::Status Parameters(
    const Json& object, absl::string_view reserved, const Json** reserved_value,
    google::protobuf::Map<std::string, inference::InferParameter>* out) {
  *reserved_value = nullptr;
  auto it = object.find("parameters");
  if (it == object.end()) return absl::OkStatus();
  if (!it->is_object()) return Bad("parameters must be an object");
  for (const auto& [name, value] : it->items()) {
    if (name == reserved) {
      *reserved_value = &value;
      continue;
    }
    absl::Status s = Parameter(name, value, &(*out)[name]);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// One input of the body, added to `r`; `*binary` is the size of its binary
// data, or -1 when its values are in its "data". `lifted`: the values of
// its "data", read from the text (its "data" is then []), or null.
absl::Status Input(const Json& in, const std::vector<float>* lifted,
                   inference::ModelInferRequest* r, int64_t* binary) {
  *binary = -1;
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
  auto shape = in.find("shape");
  if (shape == in.end() || !shape->is_array() || shape->size() > 8) {
    return Bad(what + ": \"shape\" must be an array of at most 8 integers");
  }
  auto* t = r->add_inputs();
  t->set_name(name->get<std::string>());
  t->set_datatype(datatype->get<std::string>());
  for (const Json& d : *shape) {
    if (!d.is_number_integer()) {
      return Bad(what + ": \"shape\" must hold integers");
    }
    t->add_shape(d.get<int64_t>());
  }
  const Json* size = nullptr;
  absl::Status s =
      Parameters(in, "binary_data_size", &size, t->mutable_parameters());
  if (!s.ok()) return s;
  absl::StatusOr<int64_t> needs = OipElements(t->shape(), what);
  if (!needs.ok()) return needs.status();
  auto data = in.find("data");
  if (size != nullptr) {
    if (!size->is_number_integer() ||
        (!size->is_number_unsigned() && size->get<int64_t>() < 0)) {
      return Bad(what +
                 ": binary_data_size must be a byte count (an integer 0 or "
                 "more)");
    }
    if (data != in.end()) {
      return Bad(what + ": has both \"data\" and a binary_data_size; give one");
    }
    const uint64_t bytes = size->get<uint64_t>();
    // A datatype no input has is refused, named, by the translation.
    const int64_t element = OipDatatypeBytes(t->datatype());
    if (element > 0 && bytes != static_cast<uint64_t>(*needs * element)) {
      return Bad(absl::StrCat(what, ": binary_data_size is ", bytes,
                              " bytes; shape [",
                              absl::StrJoin(t->shape(), ", "), "] of ",
                              t->datatype(), " needs ", *needs * element));
    }
    *binary = static_cast<int64_t>(std::min<uint64_t>(
        bytes, static_cast<uint64_t>(std::numeric_limits<int64_t>::max())));
    return absl::OkStatus();
  }
  if (t->datatype() != "FP32") {
    return Bad(absl::StrCat(
        what, ": datatype ", common::QuoteForLog(t->datatype()),
        " in JSON: send FP32 numbers, or the tensor as binary data (its "
        "binary_data_size in its parameters, its bytes after the JSON; BF16 "
        "and FP16 travel only so)"));
  }
  if (data == in.end()) return Bad(what + ": no \"data\"");
  std::vector<float> flattened;
  if (lifted == nullptr) {
    s = Flatten(*data, 0, what, &flattened);
    if (!s.ok()) return s;
  }
  const std::vector<float>& values = lifted != nullptr ? *lifted : flattened;
  // The count against the shape in this form's words (the check the two
  // forms share names the gRPC form's field).
  if (static_cast<size_t>(*needs) != values.size()) {
    return Bad(absl::StrCat(what, ": \"data\" has ", values.size(),
                            " values; shape [", absl::StrJoin(t->shape(), ", "),
                            "] needs ", *needs));
  }
  t->mutable_contents()->mutable_fp32_contents()->Add(values.begin(),
                                                      values.end());
  return absl::OkStatus();
}

// The body's outputs into `out`, with their binary_data.
absl::Status Outputs(const Json& root, RestInferRequest* out) {
  auto outputs = root.find("outputs");
  if (outputs == root.end()) return absl::OkStatus();
  if (!outputs->is_array()) return Bad("\"outputs\" must be an array");
  for (const Json& o : *outputs) {
    auto name = o.is_object() ? o.find("name") : o.end();
    if (!o.is_object() || name == o.end() || !name->is_string()) {
      return Bad("every output must be an object with a \"name\" string");
    }
    out->request.add_outputs()->set_name(name->get<std::string>());
    auto parameters = o.find("parameters");
    if (parameters == o.end()) continue;
    const std::string what =
        absl::StrCat("output ", common::QuoteForLog(name->get<std::string>()));
    if (!parameters->is_object()) {
      return Bad(what + ": parameters must be an object");
    }
    for (const auto& [key, value] : parameters->items()) {
      if (key != "binary_data") {
        return Bad(absl::StrCat(what, ": unknown parameter ",
                                common::QuoteForLog(key),
                                " (known: binary_data)"));
      }
      if (!value.is_boolean()) {
        return Bad(what + ": parameter \"binary_data\" must be a bool");
      }
      out->binary.emplace_back(name->get<std::string>(), value.get<bool>());
    }
  }
  return absl::OkStatus();
}

// The elements of a raw output as a JSON array of numbers, appended to
// `out`.
void AppendNumbers(const inference::ModelInferResponse::InferOutputTensor& t,
                   const std::string& bytes, std::string* out) {
  out->push_back('[');
  if (t.datatype() == "INT64") {
    const size_t n = bytes.size() / sizeof(int64_t);
    for (size_t i = 0; i < n; ++i) {
      int64_t v;
      std::memcpy(&v, bytes.data() + i * sizeof(v), sizeof(v));
      if (i > 0) out->push_back(',');
      absl::StrAppend(out, v);
    }
    out->push_back(']');
    return;
  }
  common::DType dtype = common::DType::kFloat32;
  if (t.datatype() == "BF16") dtype = common::DType::kBFloat16;
  if (t.datatype() == "FP16") dtype = common::DType::kFloat16;
  const int64_t n =
      static_cast<int64_t>(bytes.size() / common::ElementSize(dtype));
  std::vector<float> values(n);
  common::ConvertToFloat32(dtype, bytes.data(), n, values.data());
  // Most float32s take 10 to 14 bytes with their comma.
  out->reserve(out->size() + 14 * values.size() + 1);
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0) out->push_back(',');
    AppendFloat32Json(values[i], out);
  }
  out->push_back(']');
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

bool RestInferRequest::Binary(const std::string& output) const {
  for (const auto& [name, binary_data] : binary) {
    if (name == output) return binary_data;
  }
  return binary_outputs;
}

absl::StatusOr<RestInferRequest> ModelInferFromJson(
    absl::string_view body, absl::string_view json_length,
    const std::string& model, const std::string& version, DataNumbers numbers) {
  absl::string_view json = body;
  absl::string_view tail;
  if (!json_length.empty()) {
    uint64_t n = 0;
    if (!absl::SimpleAtoi(json_length, &n) || n > body.size()) {
      return Bad(
          absl::StrCat("Inference-Header-Content-Length: ",
                       common::QuoteForLog(json_length.substr(0, 32)),
                       " is not the length of the body's JSON (the body has ",
                       body.size(), " bytes)"));
    }
    json = body.substr(0, n);
    tail = body.substr(n);
  }
  const LiftedInputData lifted =
      numbers == DataNumbers::kLifted ? LiftInputData(json) : LiftedInputData{};
  const absl::string_view rest =
      lifted.json.empty() ? json : absl::string_view(lifted.json);
  const Json root = Json::parse(rest.begin(), rest.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return Bad(absl::StrCat(json_length.empty()
                                ? "the body is not valid JSON: "
                                : "the body's JSON (its first "
                                  "Inference-Header-Content-Length bytes) is "
                                  "not valid: ",
                            common::WhyNotJson(json)));
  }
  if (!root.is_object()) return Bad("the body must be a JSON object");
  RestInferRequest out;
  inference::ModelInferRequest& r = out.request;
  r.set_model_name(model);
  r.set_model_version(version);
  auto id = root.find("id");
  if (id != root.end()) {
    if (!id->is_string()) return Bad("\"id\" must be a string");
    r.set_id(id->get<std::string>());
  }
  const Json* binary_outputs = nullptr;
  absl::Status s = Parameters(root, "binary_data_output", &binary_outputs,
                              r.mutable_parameters());
  if (!s.ok()) return s;
  if (binary_outputs != nullptr) {
    if (!binary_outputs->is_boolean()) {
      return Bad("parameter \"binary_data_output\" must be a bool");
    }
    out.binary_outputs = binary_outputs->get<bool>();
  }
  auto inputs = root.find("inputs");
  if (inputs == root.end() || !inputs->is_array()) {
    return Bad("\"inputs\" must be an array of tensors");
  }
  // Each input's binary data: its offset in the tail and its size (-1:
  // none, its values are in its "data").
  std::vector<std::pair<size_t, int64_t>> binary;
  bool any_binary = false;
  size_t claimed = 0;
  for (const Json& in : *inputs) {
    const size_t k = binary.size();
    int64_t size = -1;
    s = Input(in, lifted.Lifted(k) ? &*lifted.values[k] : nullptr, &r, &size);
    if (!s.ok()) return s;
    binary.emplace_back(claimed, size);
    if (size < 0) continue;
    any_binary = true;
    const std::string& name = r.inputs(r.inputs_size() - 1).name();
    if (json_length.empty()) {
      return Bad(absl::StrCat(
          "input ", common::QuoteForLog(name),
          " has a binary_data_size, so the request needs an "
          "Inference-Header-Content-Length header (the bytes of its JSON; "
          "the tensors' bytes follow it)"));
    }
    if (static_cast<uint64_t>(size) > tail.size() - claimed) {
      return Bad(absl::StrCat("input ", common::QuoteForLog(name),
                              ": binary_data_size ", size, " passes the ",
                              tail.size() - claimed,
                              " bytes left after the JSON and the inputs "
                              "before it"));
    }
    claimed += static_cast<size_t>(size);
  }
  if (claimed != tail.size()) {
    return Bad(absl::StrCat("the body has ", tail.size(),
                            " bytes after its JSON; its inputs' "
                            "binary_data_size add up to ",
                            claimed));
  }
  // With binary data every input travels as raw_input_contents, in order
  // (the gRPC form takes raw contents for all inputs or for none).
  for (size_t i = 0; any_binary && i < binary.size(); ++i) {
    auto* t = r.mutable_inputs(static_cast<int>(i));
    const auto [offset, size] = binary[i];
    if (size >= 0) {
      r.add_raw_input_contents(
          std::string(tail.substr(offset, static_cast<size_t>(size))));
      continue;
    }
    const auto& values = t->contents().fp32_contents();
    r.add_raw_input_contents(
        std::string(reinterpret_cast<const char*>(values.data()),
                    values.size() * sizeof(float)));
    t->clear_contents();
  }
  s = Outputs(root, &out);
  if (!s.ok()) return s;
  return out;
}

RestInferAnswer ModelInferToJson(const inference::ModelInferResponse& response,
                                 const RestInferRequest* asked) {
  static const std::string* const kNone = new std::string;
  // Written by hand around the numbers (nlohmann spent ~100 ns and 19
  // bytes on each), keys in the order nlohmann writes them.
  std::string body = "{";
  if (!response.id().empty()) {
    absl::StrAppend(&body, "\"id\":", Dump(response.id()), ",");
  }
  absl::StrAppend(&body, "\"model_name\":", Dump(response.model_name()),
                  ",\"model_version\":", Dump(response.model_version()),
                  ",\"outputs\":[");
  std::vector<const std::string*> binary;
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& t = response.outputs(i);
    const std::string& bytes = i < response.raw_output_contents_size()
                                   ? response.raw_output_contents(i)
                                   : *kNone;
    const bool as_bytes = asked != nullptr && asked->Binary(t.name());
    body.append(i > 0 ? ",{" : "{");
    if (!as_bytes) {
      body.append("\"data\":");
      AppendNumbers(t, bytes, &body);
      body.push_back(',');
    }
    absl::StrAppend(&body, "\"datatype\":", Dump(t.datatype()),
                    ",\"name\":", Dump(t.name()), ",");
    if (as_bytes) {
      absl::StrAppend(
          &body, "\"parameters\":{\"binary_data_size\":", bytes.size(), "},");
      binary.push_back(&bytes);
    }
    absl::StrAppend(&body, "\"shape\":[", absl::StrJoin(t.shape(), ","), "]}");
  }
  absl::StrAppend(&body, "],\"parameters\":",
                  Dump(ParametersJson(response.parameters())), "}");
  RestInferAnswer answer;
  answer.body = std::move(body);
  if (binary.empty()) return answer;
  answer.json_length = static_cast<int64_t>(answer.body.size());
  size_t total = answer.body.size();
  for (const std::string* b : binary) total += b->size();
  answer.body.reserve(total);
  for (const std::string* b : binary) answer.body.append(*b);
  return answer;
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

absl::StatusOr<inference::RepositoryIndexRequest> RepositoryIndexFromJson(
    absl::string_view body) {
  inference::RepositoryIndexRequest request;
  if (body.find_first_not_of(" \t\r\n") == absl::string_view::npos) {
    return request;
  }
  const Json root = Json::parse(body.begin(), body.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return Bad(
        absl::StrCat("the body is not valid JSON: ", common::WhyNotJson(body)));
  }
  if (!root.is_object()) return Bad("the body must be a JSON object");
  for (const auto& [key, value] : root.items()) {
    if (key != "ready") {
      return Bad(absl::StrCat("unknown field ", common::QuoteForLog(key),
                              ": an index request may give only \"ready\""));
    }
    if (!value.is_boolean()) return Bad("\"ready\" must be true or false");
    request.set_ready(value.get<bool>());
  }
  return request;
}

std::string RepositoryIndexToJson(const inference::RepositoryIndexResponse& r) {
  Json index = Json::array();
  for (const auto& m : r.models()) {
    Json entry = {
        {"name", m.name()}, {"version", m.version()}, {"state", m.state()}};
    if (!m.reason().empty()) entry["reason"] = m.reason();
    index.push_back(std::move(entry));
  }
  return Dump(index);
}

namespace {

Json DurationJson(const inference::StatisticDuration& d) {
  return {{"count", d.count()}, {"ns", d.ns()}};
}

}  // namespace

std::string ModelConfigToJson(const inference::ModelConfigResponse& r) {
  const inference::ModelConfig& c = r.config();
  Json inputs = Json::array();
  for (const auto& in : c.input()) {
    inputs.push_back(
        {{"name", in.name()},
         {"data_type", inference::DataType_Name(in.data_type())},
         {"format", inference::ModelInput::Format_Name(in.format())},
         {"dims", std::vector<int64_t>(in.dims().begin(), in.dims().end())},
         {"optional", in.optional()}});
  }
  Json outputs = Json::array();
  for (const auto& out : c.output()) {
    outputs.push_back(
        {{"name", out.name()},
         {"data_type", inference::DataType_Name(out.data_type())},
         {"dims", std::vector<int64_t>(out.dims().begin(), out.dims().end())}});
  }
  return Dump({{"name", c.name()},
               {"platform", c.platform()},
               {"backend", c.backend()},
               {"max_batch_size", c.max_batch_size()},
               {"input", std::move(inputs)},
               {"output", std::move(outputs)}});
}

std::string ModelStatisticsToJson(const inference::ModelStatisticsResponse& r) {
  Json models = Json::array();
  for (const auto& m : r.model_stats()) {
    const inference::InferStatistics& s = m.inference_stats();
    Json batches = Json::array();
    for (const auto& b : m.batch_stats()) {
      batches.push_back({{"batch_size", b.batch_size()},
                         {"compute_input", DurationJson(b.compute_input())},
                         {"compute_infer", DurationJson(b.compute_infer())},
                         {"compute_output", DurationJson(b.compute_output())}});
    }
    models.push_back({{"name", m.name()},
                      {"version", m.version()},
                      {"last_inference", m.last_inference()},
                      {"inference_count", m.inference_count()},
                      {"execution_count", m.execution_count()},
                      {"inference_stats",
                       {{"success", DurationJson(s.success())},
                        {"fail", DurationJson(s.fail())},
                        {"queue", DurationJson(s.queue())},
                        {"compute_input", DurationJson(s.compute_input())},
                        {"compute_infer", DurationJson(s.compute_infer())},
                        {"compute_output", DurationJson(s.compute_output())},
                        {"cache_hit", DurationJson(s.cache_hit())},
                        {"cache_miss", DurationJson(s.cache_miss())}}},
                      {"batch_stats", std::move(batches)}});
  }
  return Dump({{"model_stats", std::move(models)}});
}

}  // namespace moe::router
