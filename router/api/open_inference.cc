#include "router/api/open_inference.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace moe::router {
namespace {

constexpr char kPlatform[] = "moe-serve";
// No tensor of a request is near this many elements (the token limit is far
// below); it keeps the products of client-sent shapes from overflowing.
constexpr int64_t kMaxElements = int64_t{1} << 40;

// The datatypes these models' tensors travel in: the protocol's name, the
// moe.v1 dtype, the bytes of one element, and Triton's model configuration
// type.
struct WireType {
  const char* name;
  moe::v1::DType dtype;
  size_t bytes;
  inference::DataType config;
};
constexpr WireType kWireTypes[] = {
    {"FP32", moe::v1::FLOAT32, 4, inference::TYPE_FP32},
    {"BF16", moe::v1::BFLOAT16, 2, inference::TYPE_BF16},
    {"FP16", moe::v1::FLOAT16, 2, inference::TYPE_FP16},
    {"INT64", moe::v1::INT64, 8, inference::TYPE_INT64}};

const WireType* ByName(absl::string_view name) {
  for (const WireType& t : kWireTypes) {
    if (name == t.name) return &t;
  }
  return nullptr;
}

const WireType* ByDType(moe::v1::DType dtype) {
  for (const WireType& t : kWireTypes) {
    if (dtype == t.dtype) return &t;
  }
  return nullptr;
}

void AddMetadata(const char* name, const char* datatype,
                 std::vector<int64_t> shape,
                 google::protobuf::RepeatedPtrField<
                     inference::ModelMetadataResponse::TensorMetadata>* out) {
  inference::ModelMetadataResponse::TensorMetadata* t = out->Add();
  t->set_name(name);
  t->set_datatype(datatype);
  for (int64_t d : shape) t->add_shape(d);
}

int64_t ExpertsOf(const common::LayerConfig& c) {
  return c.num_experts * std::max<int64_t>(1, c.num_experts_inner);
}

// Input `i` of `request` as a moe.v1 tensor (`allowed`: its datatypes).
absl::Status InputTensor(const inference::ModelInferRequest& request, int i,
                         bool raw, const std::vector<moe::v1::DType>& allowed,
                         moe::v1::Tensor* out) {
  const auto& in = request.inputs(i);
  const std::string what = absl::StrCat("input \"", in.name(), "\"");
  const WireType* type = ByName(in.datatype());
  if (type == nullptr ||
      std::find(allowed.begin(), allowed.end(), type->dtype) == allowed.end()) {
    std::vector<std::string> names;
    for (moe::v1::DType d : allowed) names.push_back(ByDType(d)->name);
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": datatype ", common::QuoteForLog(in.datatype()),
                     " is not one of ", absl::StrJoin(names, ", ")));
  }
  MOE_ASSIGN_OR_RETURN(const int64_t n, OipElements(in.shape(), what));
  out->set_dtype(type->dtype);
  *out->mutable_shape() = in.shape();
  if (raw) {
    const std::string& bytes = request.raw_input_contents(i);
    if (static_cast<int64_t>(bytes.size()) !=
        n * static_cast<int64_t>(type->bytes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": raw_input_contents has ", bytes.size(), " bytes; shape [",
          absl::StrJoin(in.shape(), ", "), "] of ", type->name, " needs ",
          n * static_cast<int64_t>(type->bytes)));
    }
    out->set_data(bytes);
    return absl::OkStatus();
  }
  if (type->dtype != moe::v1::FLOAT32) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": ", type->name,
        " travels only as raw_input_contents (the protocol has no typed "
        "field for 16-bit floats)"));
  }
  const auto& values = in.contents().fp32_contents();
  if (values.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": contents.fp32_contents has ", values.size(),
        " values; shape [", absl::StrJoin(in.shape(), ", "), "] needs ", n));
  }
  out->set_data(values.data(), values.size() * sizeof(float));
  return absl::OkStatus();
}

// Parameter accessors: InvalidArgument naming the parameter when its type
// is not one the protocol's clients send for such a value.
absl::StatusOr<std::string> StringParam(const std::string& name,
                                        const inference::InferParameter& p) {
  if (p.parameter_choice_case() != inference::InferParameter::kStringParam) {
    return absl::InvalidArgumentError(
        absl::StrCat("parameter \"", name, "\" must be a string"));
  }
  return p.string_param();
}

absl::StatusOr<double> NumberParam(const std::string& name,
                                   const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kDoubleParam:
      return p.double_param();
    case inference::InferParameter::kInt64Param:
      return static_cast<double>(p.int64_param());
    case inference::InferParameter::kUint64Param:
      return static_cast<double>(p.uint64_param());
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("parameter \"", name, "\" must be a number"));
  }
}

absl::StatusOr<bool> BoolParam(const std::string& name,
                               const inference::InferParameter& p) {
  if (p.parameter_choice_case() != inference::InferParameter::kBoolParam) {
    return absl::InvalidArgumentError(
        absl::StrCat("parameter \"", name, "\" must be a bool"));
  }
  return p.bool_param();
}

absl::Status ApplyParameter(const std::string& name,
                            const inference::InferParameter& p,
                            OipInferRequest* out) {
  moe::v1::RoutingOptions* o = out->forward.mutable_options();
  if (name == "mode") {
    MOE_ASSIGN_OR_RETURN(const std::string v, StringParam(name, p));
    if (v == "eval") {
      o->set_mode(moe::v1::EVAL);
    } else if (v == "train") {
      o->set_mode(moe::v1::TRAIN);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter \"mode\": ", common::QuoteForLog(v),
                       " is not eval or train"));
    }
  } else if (name == "policy") {
    MOE_ASSIGN_OR_RETURN(const std::string v, StringParam(name, p));
    const std::pair<const char*, moe::v1::SecondExpertPolicy> policies[] = {
        {"random", moe::v1::RANDOM},
        {"all", moe::v1::ALL},
        {"none", moe::v1::NONE},
        {"threshold", moe::v1::THRESHOLD}};
    bool found = false;
    for (const auto& [policy_name, policy] : policies) {
      if (v == policy_name) {
        o->set_policy(policy);
        found = true;
      }
    }
    if (!found) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter \"policy\": ", common::QuoteForLog(v),
                       " is not random, all, none or threshold"));
    }
  } else if (name == "threshold") {
    MOE_ASSIGN_OR_RETURN(const double v, NumberParam(name, p));
    o->set_threshold(static_cast<float>(v));
  } else if (name == "capacity_factor") {
    MOE_ASSIGN_OR_RETURN(const double v, NumberParam(name, p));
    o->set_capacity_factor(v);
  } else if (name == "seed") {
    if (p.parameter_choice_case() == inference::InferParameter::kUint64Param) {
      o->set_seed(p.uint64_param());
    } else if (p.parameter_choice_case() ==
                   inference::InferParameter::kInt64Param &&
               p.int64_param() >= 0) {
      o->set_seed(static_cast<uint64_t>(p.int64_param()));
    } else {
      return absl::InvalidArgumentError(
          "parameter \"seed\" must be a non-negative integer");
    }
  } else if (name == "timeout") {
    // Triton's: microseconds for the request, 0 for none (tritonclient's
    // `timeout=`).
    const auto which = p.parameter_choice_case();
    const bool is_int = which == inference::InferParameter::kInt64Param ||
                        which == inference::InferParameter::kUint64Param;
    const uint64_t us = which == inference::InferParameter::kUint64Param
                            ? p.uint64_param()
                            : static_cast<uint64_t>(p.int64_param());
    if (!is_int || (which == inference::InferParameter::kInt64Param &&
                    p.int64_param() < 0)) {
      return absl::InvalidArgumentError(
          "parameter \"timeout\" must be an integer of microseconds, 0 or "
          "more (0: none)");
    }
    constexpr uint64_t kDay = uint64_t{86400} * 1000 * 1000;
    out->timeout = us == 0 ? absl::InfiniteDuration()
                           : absl::Microseconds(std::min(us, kDay));
  } else if (name == "return_trace") {
    MOE_ASSIGN_OR_RETURN(const bool v, BoolParam(name, p));
    o->set_return_trace(v);
  } else if (name == "on_expert_failure") {
    MOE_ASSIGN_OR_RETURN(const std::string v, StringParam(name, p));
    if (v == "drop") {
      out->forward.set_on_expert_failure(moe::v1::ON_FAILURE_DROP);
    } else if (v == "fail") {
      out->forward.set_on_expert_failure(moe::v1::ON_FAILURE_FAIL);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter \"on_expert_failure\": ", common::QuoteForLog(v),
          " is not drop or fail"));
    }
  } else if (name == "allow_degraded") {
    MOE_ASSIGN_OR_RETURN(out->allow_degraded, BoolParam(name, p));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown parameter ", common::QuoteForLog(name),
                     " (known: mode, policy, threshold, capacity_factor, seed, "
                     "return_trace, on_expert_failure, allow_degraded, "
                     "timeout)"));
  }
  return absl::OkStatus();
}

// One output of a response: its name, datatype, shape and bytes.
struct Output {
  std::string name;
  const char* datatype;
  std::vector<int64_t> shape;
  std::string bytes;
};

Output Scalar(const char* name, double value) {
  const float f = static_cast<float>(value);
  return {name, "FP32", {1}, std::string(reinterpret_cast<const char*>(&f), 4)};
}

Output Int64s(const char* name, const std::vector<int64_t>& values) {
  return {name,
          "INT64",
          {static_cast<int64_t>(values.size())},
          std::string(reinterpret_cast<const char*>(values.data()),
                      values.size() * sizeof(int64_t))};
}

// Takes t's bytes.
absl::StatusOr<Output> FromTensor(const std::string& name, moe::v1::Tensor* t) {
  const WireType* type = ByDType(t->dtype());
  if (type == nullptr) {
    return absl::InternalError(
        absl::StrCat("output ", name, " has dtype ", t->dtype()));
  }
  return Output{name, type->name,
                std::vector<int64_t>(t->shape().begin(), t->shape().end()),
                std::move(*t->mutable_data())};
}

}  // namespace

absl::StatusOr<int64_t> OipElements(
    const google::protobuf::RepeatedField<int64_t>& shape,
    const std::string& what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || (d > 0 && n > kMaxElements / d)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": shape [", absl::StrJoin(shape, ", "),
                       "] is negative or too large"));
    }
    n *= d;
  }
  return n;
}

absl::StatusOr<inference::RepositoryIndexResponse> OipRepositoryIndex(
    const inference::RepositoryIndexRequest& request,
    const common::ModelSpec& spec, const std::string& fingerprint,
    absl::FunctionRef<std::string(int layer)> not_ready) {
  if (!request.repository_name().empty()) {
    return absl::NotFoundError(absl::StrCat(
        "no repository ", common::QuoteForLog(request.repository_name()),
        ": this server has one, unnamed (ask with none)"));
  }
  inference::RepositoryIndexResponse index;
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    const std::string reason = not_ready(static_cast<int>(l));
    if (request.ready() && !reason.empty()) continue;
    auto* model = index.add_models();
    model->set_name(OipModelName(spec, static_cast<int>(l)));
    model->set_version(fingerprint);
    model->set_state(reason.empty() ? "READY" : "UNAVAILABLE");
    model->set_reason(reason);
  }
  return index;
}

std::string OipModelName(const common::ModelSpec& spec, int layer) {
  const std::string& name = spec.layers[layer].name;
  return name.empty() ? spec.name : name;
}

absl::StatusOr<int> FindOipModel(const common::ModelSpec& spec,
                                 const std::string& fingerprint,
                                 absl::string_view name,
                                 absl::string_view version) {
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    if (OipModelName(spec, static_cast<int>(l)) != name) continue;
    if (!version.empty() && version != fingerprint) {
      return absl::NotFoundError(absl::StrCat(
          "model ", common::QuoteForLog(name), " has no version ",
          common::QuoteForLog(version), "; it serves version ", fingerprint));
    }
    return static_cast<int>(l);
  }
  std::vector<std::string> names;
  for (size_t l = 0; l < spec.layers.size() && l < 5; ++l) {
    names.push_back(
        absl::StrCat("\"", OipModelName(spec, static_cast<int>(l)), "\""));
  }
  if (spec.layers.size() > 5) {
    names.push_back(absl::StrCat("(and ", spec.layers.size() - 5, " more)"));
  }
  return absl::NotFoundError(
      absl::StrCat("unknown model ", common::QuoteForLog(name),
                   "; models: ", absl::StrJoin(names, ", ")));
}

inference::ServerMetadataResponse OipServerMetadata(absl::string_view version) {
  inference::ServerMetadataResponse m;
  m.set_name(kPlatform);
  m.set_version(std::string(version));
  m.add_extensions("binary_tensor_data");
  m.add_extensions("model_configuration");
  m.add_extensions("statistics");
  return m;
}

namespace {

// Triton's DataType of a datatype of these models' metadata.
inference::DataType ConfigType(absl::string_view datatype) {
  const WireType* type = ByName(datatype);
  return type == nullptr ? inference::TYPE_INVALID : type->config;
}

}  // namespace

inference::ModelConfigResponse OipModelConfig(
    const inference::ModelMetadataResponse& metadata) {
  inference::ModelConfigResponse response;
  inference::ModelConfig& config = *response.mutable_config();
  config.set_name(metadata.name());
  config.set_platform(metadata.platform());
  config.set_backend(metadata.platform());
  config.set_max_batch_size(0);
  for (const auto& in : metadata.inputs()) {
    inference::ModelInput* input = config.add_input();
    input->set_name(in.name());
    input->set_data_type(ConfigType(in.datatype()));
    *input->mutable_dims() = in.shape();
    input->set_optional(in.name() != "x");
  }
  for (const auto& out : metadata.outputs()) {
    inference::ModelOutput* output = config.add_output();
    output->set_name(out.name());
    output->set_data_type(ConfigType(out.datatype()));
    *output->mutable_dims() = out.shape();
  }
  return response;
}

absl::StatusOr<inference::ModelStatisticsResponse> OipModelStatistics(
    const inference::ModelStatisticsRequest& request,
    const common::ModelSpec& spec, const std::string& fingerprint,
    absl::FunctionRef<void(int layer, inference::ModelStatistics* stats)>
        fill) {
  int first = 0;
  int end = static_cast<int>(spec.layers.size());
  if (!request.name().empty()) {
    MOE_ASSIGN_OR_RETURN(first, FindOipModel(spec, fingerprint, request.name(),
                                             request.version()));
    end = first + 1;
  } else if (!request.version().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("version ", common::QuoteForLog(request.version()),
                     " without a model name: name the model too"));
  }
  inference::ModelStatisticsResponse response;
  for (int l = first; l < end; ++l) {
    inference::ModelStatistics* stats = response.add_model_stats();
    fill(l, stats);
    stats->set_name(OipModelName(spec, l));
    stats->set_version(fingerprint);
  }
  return response;
}

int64_t OipDatatypeBytes(absl::string_view datatype) {
  const WireType* type = ByName(datatype);
  return type == nullptr ? 0 : static_cast<int64_t>(type->bytes);
}

inference::ModelMetadataResponse OipModelMetadata(
    const common::ModelSpec& spec, const std::string& fingerprint, int layer) {
  inference::ModelMetadataResponse m;
  m.set_name(OipModelName(spec, layer));
  m.add_versions(fingerprint);
  m.set_platform(kPlatform);
  AddMetadata("x", "FP32", {-1, -1, spec.dim}, m.mutable_inputs());
  AddMetadata("second_choice_uniforms", "FP32", {-1, -1}, m.mutable_inputs());
  AddMetadata("y", "FP32", {-1, -1, spec.dim}, m.mutable_outputs());
  for (const char* loss : {"balance_loss", "router_z_loss", "total_aux_loss"}) {
    AddMetadata(loss, "FP32", {1}, m.mutable_outputs());
  }
  AddMetadata("kept_per_expert", "INT64",
              {ExpertsOf(spec.layers[layer].config)}, m.mutable_outputs());
  AddMetadata("dropped_tokens", "INT64", {1}, m.mutable_outputs());
  return m;
}

absl::StatusOr<OipInferRequest> FromModelInfer(
    const inference::ModelInferRequest& request, const common::ModelSpec& spec,
    int layer) {
  OipInferRequest out;
  out.forward.set_layer(spec.layers[layer].name);
  const bool raw = request.raw_input_contents_size() > 0;
  if (raw && request.raw_input_contents_size() != request.inputs_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "raw_input_contents has ", request.raw_input_contents_size(),
        " entries for ", request.inputs_size(),
        " inputs: give one per input, in the order of inputs"));
  }
  bool has_x = false, has_uniforms = false;
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& in = request.inputs(i);
    if (raw && in.has_contents()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input \"", in.name(),
          "\": contents must not be set when raw_input_contents is used"));
    }
    if (in.name() == "x" && !has_x) {
      has_x = true;
      MOE_RETURN_IF_ERROR(
          InputTensor(request, i, raw,
                      {moe::v1::FLOAT32, moe::v1::BFLOAT16, moe::v1::FLOAT16},
                      out.forward.mutable_x()));
    } else if (in.name() == "second_choice_uniforms" && !has_uniforms) {
      has_uniforms = true;
      MOE_RETURN_IF_ERROR(InputTensor(
          request, i, raw, {moe::v1::FLOAT32},
          out.forward.mutable_options()->mutable_second_choice_uniforms()));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("input ", common::QuoteForLog(in.name()),
                       in.name() == "x" || in.name() == "second_choice_uniforms"
                           ? " is given twice"
                           : " is not an input of this model (inputs: x, "
                             "second_choice_uniforms)"));
    }
  }
  if (!has_x) {
    return absl::InvalidArgumentError(
        "input \"x\" is missing (FP32, BF16 or FP16, shape [batch, tokens, "
        "dim])");
  }
  for (const auto& [name, value] : request.parameters()) {
    MOE_RETURN_IF_ERROR(ApplyParameter(name, value, &out));
  }
  for (const auto& o : request.outputs()) {
    // Triton's `classification` would ask for another output than the
    // one named; the answer would not be what the caller reads it as.
    if (!o.parameters().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "output ", common::QuoteForLog(o.name()), ": unknown parameter ",
          common::QuoteForLog(o.parameters().begin()->first),
          " (outputs take none over gRPC)"));
    }
    out.outputs.push_back(o.name());
  }
  return out;
}

absl::StatusOr<inference::ModelInferResponse> ToModelInfer(
    moe::v1::ForwardResponse* forward, const OipInferRequest& asked,
    const std::string& model_name, const std::string& version,
    const std::string& id, bool timed_out) {
  const moe::v1::ForwardResponse& response = *forward;
  if (response.degraded() && !asked.allow_degraded) {
    const std::string experts = absl::StrCat(
        "experts [", absl::StrJoin(response.failed_experts(), ", "),
        "] of model ", common::QuoteForLog(model_name));
    const std::string dropped = absl::StrCat(
        response.stats().dropped_expert_unavailable(), " assignments dropped");
    if (timed_out) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the call's deadline",
          asked.timeout == absl::InfiniteDuration()
              ? ""
              : absl::StrCat(" (its timeout, ",
                             absl::FormatDuration(asked.timeout), ")"),
          " passed before ", experts, " answered (", dropped,
          "); give it more time, or set the parameter allow_degraded to "
          "accept the answer without them"));
    }
    return absl::UnavailableError(absl::StrCat(
        "degraded answer: ", experts, " were unavailable (", dropped,
        "); set the parameter allow_degraded to accept it"));
  }
  std::vector<Output> outputs;
  MOE_ASSIGN_OR_RETURN(Output y, FromTensor("y", forward->mutable_y()));
  outputs.push_back(std::move(y));
  outputs.push_back(Scalar("balance_loss", response.losses().balance_loss()));
  outputs.push_back(Scalar("router_z_loss", response.losses().router_z_loss()));
  outputs.push_back(
      Scalar("total_aux_loss", response.losses().total_aux_loss()));
  outputs.push_back(
      Int64s("kept_per_expert",
             std::vector<int64_t>(response.stats().kept_per_expert().begin(),
                                  response.stats().kept_per_expert().end())));
  outputs.push_back(
      Int64s("dropped_tokens", {response.stats().routing().dropped_tokens()}));
  for (moe::v1::NamedTensor& t : *forward->mutable_trace()) {
    MOE_ASSIGN_OR_RETURN(Output o, FromTensor(t.name(), t.mutable_tensor()));
    outputs.push_back(std::move(o));
  }
  inference::ModelInferResponse out;
  out.set_model_name(model_name);
  out.set_model_version(version);
  out.set_id(id);
  (*out.mutable_parameters())["degraded"].set_bool_param(response.degraded());
  auto add = [&out](Output& o) {
    auto* t = out.add_outputs();
    t->set_name(o.name);
    t->set_datatype(o.datatype);
    for (int64_t d : o.shape) t->add_shape(d);
    out.add_raw_output_contents(std::move(o.bytes));
  };
  if (asked.outputs.empty()) {
    for (Output& o : outputs) add(o);
    return out;
  }
  std::set<std::string> given;
  for (const std::string& name : asked.outputs) {
    if (!given.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "output ", common::QuoteForLog(name), " is asked for twice"));
    }
    auto it = std::find_if(outputs.begin(), outputs.end(),
                           [&](const Output& o) { return o.name == name; });
    if (it == outputs.end()) {
      std::vector<std::string> names;
      for (const Output& o : outputs) names.push_back(o.name);
      return absl::InvalidArgumentError(absl::StrCat(
          "output ", common::QuoteForLog(name), " is not an output of model ",
          common::QuoteForLog(model_name),
          " (outputs: ", absl::StrJoin(names, ", "), ")"));
    }
    add(*it);
  }
  return out;
}

}  // namespace moe::router
