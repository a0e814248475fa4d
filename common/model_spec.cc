#include "common/model_spec.h"

#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_errors.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace moe::common {
namespace {

using Json = nlohmann::json;

bool ValidLayerName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxLayerNameBytes || name.front() == '.' ||
      name.back() == '.') {
    return false;
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                    c == '/' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<int> ModelSpec::FindLayer(absl::string_view layer) const {
  if (layer.empty()) {
    if (layers.size() == 1) return 0;
    return absl::InvalidArgumentError(
        absl::StrCat("layer: required, this model has ", layers.size(),
                     " layers: ", LayerNames()));
  }
  if (!ValidLayerName(layer)) {
    // From a client, perhaps: bounded and escaped before it is echoed.
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", QuoteForLog(layer), " is not a layer name (at most ",
        kMaxLayerNameBytes, " letters, digits, '_', '.', '/', '-')"));
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].name == layer) return static_cast<int>(i);
  }
  if (layers.size() == 1 && layers[0].name.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "layer \"", layer,
        "\" not found: this model has a single unnamed layer (leave the "
        "layer empty)"));
  }
  return absl::NotFoundError(
      absl::StrCat("layer \"", layer, "\" not found; the model has ",
                   layers.size(), " layers: ", LayerNames()));
}

std::string ModelSpec::LayerNames(size_t limit) const {
  std::vector<std::string> shown;
  for (size_t i = 0; i < layers.size() && i < limit; ++i) {
    shown.push_back(absl::StrCat("\"", layers[i].name, "\""));
  }
  std::string out = absl::StrJoin(shown, ", ");
  if (layers.size() > shown.size()) {
    absl::StrAppend(&out, " (and ", layers.size() - shown.size(), " more)");
  }
  return out;
}

std::string ModelSpec::ToJson() const {
  if (layers.size() == 1 && layers[0].name.empty()) {
    return layers[0].config.ToJson();
  }
  Json root;
  root["name"] = name;
  root["dim"] = dim;
  root["layers"] = Json::array();
  for (const LayerSpec& layer : layers) {
    Json j = Json::parse(layer.config.ToJson());
    j["name"] = layer.name;
    root["layers"].push_back(std::move(j));
  }
  return root.dump();
}

absl::Status ValidateModelSpec(const ModelSpec& spec) {
  if (spec.layers.empty()) {
    return absl::InvalidArgumentError("model config: \"layers\" is empty");
  }
  const bool unnamed_single =
      spec.layers.size() == 1 && spec.layers[0].name.empty();
  std::set<std::string> names;
  for (const LayerSpec& layer : spec.layers) {
    if (!unnamed_single && !ValidLayerName(layer.name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model config: layer name \"", layer.name,
          "\" is not a tensor-name prefix (letters, digits, '_', '.', '/', "
          "'-'; not starting or ending with '.')"));
    }
    if (!names.insert(layer.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model config: layer \"", layer.name, "\" appears twice"));
    }
    absl::Status status = ValidateLayerConfig(layer.config);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer \"", layer.name, "\": ", status.message()));
    }
    if (layer.config.dim != spec.dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("model config: layer \"", layer.name, "\" has dim ",
                       layer.config.dim, " but the model dim is ", spec.dim,
                       " (every layer of a model shares it)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelSpec> ParseModelSpec(absl::string_view config_json,
                                         absl::string_view default_name) {
  Json root = Json::parse(config_json.begin(), config_json.end(), nullptr,
                          /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: config_json is not valid JSON: ",
                     WhyNotJson(config_json)));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        "model config: config_json is not a JSON object");
  }
  ModelSpec spec;
  spec.name = std::string(default_name);
  auto name_it = root.find("name");
  if (name_it != root.end()) {
    if (!name_it->is_string()) {
      return absl::InvalidArgumentError(
          "model config: \"name\" must be a string");
    }
    spec.name = name_it->get<std::string>();
  }
  auto layers_it = root.find("layers");
  if (layers_it == root.end()) {
    // One layer, the whole object.
    MOE_ASSIGN_OR_RETURN(LayerConfig config, ParseLayerConfig(config_json));
    spec.dim = config.dim;
    spec.layers.push_back({"", std::move(config)});
    return spec;
  }
  if (!layers_it->is_array()) {
    return absl::InvalidArgumentError(
        "model config: \"layers\" must be an array of layer objects");
  }
  auto dim_it = root.find("dim");
  if (dim_it == root.end() || !dim_it->is_number_integer()) {
    return absl::InvalidArgumentError(
        "model config: \"dim\" (an integer) is required with \"layers\"");
  }
  spec.dim = dim_it->get<int64_t>();
  for (size_t i = 0; i < layers_it->size(); ++i) {
    Json layer = (*layers_it)[i];
    if (!layer.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model config: layers[", i, "] is not an object"));
    }
    auto layer_name = layer.find("name");
    if (layer_name == layer.end() || !layer_name->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model config: layers[", i, "] has no \"name\" string"));
    }
    const std::string name = layer_name->get<std::string>();
    if (layer.find("dim") == layer.end()) layer["dim"] = spec.dim;
    absl::StatusOr<LayerConfig> config = ParseLayerConfig(layer.dump());
    if (!config.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer \"", name, "\": ", config.status().message()));
    }
    spec.layers.push_back({name, std::move(*config)});
  }
  MOE_RETURN_IF_ERROR(ValidateModelSpec(spec));
  return spec;
}

}  // namespace moe::common
