#include "server/main_helpers.h"

#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/id_ranges.h"
#include "common/status_macros.h"

namespace moe::server {
namespace {

std::vector<int64_t> AllIds(int64_t n) {
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = i;
  return ids;
}

std::string LayerLabel(const common::LayerSpec& layer) {
  return layer.name.empty() ? std::string("the model")
                            : absl::StrCat("layer \"", layer.name, "\"");
}

}  // namespace

absl::StatusOr<ExpertSelection> ParseExpertSelection(
    absl::string_view text, const common::ModelSpec& spec) {
  text = absl::StripAsciiWhitespace(text);
  ExpertSelection out(spec.layers.size());
  if (text.empty() || text == "all") {
    for (size_t l = 0; l < spec.layers.size(); ++l) {
      out[l] = AllIds(spec.layers[l].config.total_experts());
    }
    return out;
  }
  if (text.find(':') == absl::string_view::npos) {
    // Ranges for every layer.
    for (size_t l = 0; l < spec.layers.size(); ++l) {
      absl::StatusOr<std::vector<int64_t>> ids =
          common::ParseIdRanges(text, spec.layers[l].config.total_experts());
      if (!ids.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            LayerLabel(spec.layers[l]), ": ", ids.status().message()));
      }
      out[l] = std::move(*ids);
    }
    return out;
  }
  for (absl::string_view item : absl::StrSplit(text, ';', absl::SkipEmpty())) {
    item = absl::StripAsciiWhitespace(item);
    const size_t colon = item.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", item, "\" is not LAYER:RANGES (separate layers with ';')"));
    }
    const absl::string_view name = item.substr(0, colon);
    const absl::string_view ranges = item.substr(colon + 1);
    MOE_ASSIGN_OR_RETURN(int layer, spec.FindLayer(name));
    const int64_t total = spec.layers[layer].config.total_experts();
    if (ranges == "all") {
      out[layer] = AllIds(total);
      continue;
    }
    absl::StatusOr<std::vector<int64_t>> ids =
        common::ParseIdRanges(ranges, total);
    if (!ids.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          LayerLabel(spec.layers[layer]), ": ", ids.status().message()));
    }
    out[layer] = std::move(*ids);
  }
  return out;
}

absl::StatusOr<ExpertSelection> ShardSelection(int64_t index, int64_t shards,
                                               const common::ModelSpec& spec) {
  if (shards < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the number of shards must be >= 1, got ", shards));
  }
  if (index < 0 || index >= shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard index ", index, " is outside [0, ", shards, ")"));
  }
  ExpertSelection out(spec.layers.size());
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    const int64_t total = spec.layers[l].config.total_experts();
    if (shards > total) {
      return absl::InvalidArgumentError(absl::StrCat(
          shards, " shards but ", LayerLabel(spec.layers[l]), " has only ",
          total, " experts: some shard would host none of them"));
    }
    for (int64_t e = total * index / shards; e < total * (index + 1) / shards;
         ++e) {
      out[l].push_back(e);
    }
  }
  return out;
}

std::string DescribeSelection(const ExpertSelection& selection,
                              const common::ModelSpec& spec) {
  std::vector<std::string> parts;
  for (size_t l = 0; l < selection.size(); ++l) {
    if (selection[l].empty()) continue;
    parts.push_back(absl::StrCat(
        spec.layers[l].name.empty() ? "" : spec.layers[l].name + ":", "[",
        common::FoldIdRanges(selection[l]), "]"));
  }
  return parts.empty() ? "none" : absl::StrJoin(parts, " ");
}

absl::StatusOr<int64_t> OrdinalFromHostname(absl::string_view hostname) {
  // A pod's hostname is its name; the ordinal follows the last dash.
  const size_t dot = hostname.find('.');
  if (dot != absl::string_view::npos) hostname = hostname.substr(0, dot);
  const size_t dash = hostname.rfind('-');
  int64_t ordinal = -1;
  if (dash == absl::string_view::npos ||
      !absl::SimpleAtoi(hostname.substr(dash + 1), &ordinal) || ordinal < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("hostname \"", hostname,
                     "\" does not end in -<ordinal> (as StatefulSet pods do)"));
  }
  return ordinal;
}

absl::StatusOr<std::vector<std::string>> ExpandTemplate(
    absl::string_view pattern, int64_t n) {
  if (pattern.find("{i}") == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("template \"", pattern, "\" has no {i} placeholder"));
  }
  if (n < 1) return absl::InvalidArgumentError("the count must be >= 1");
  std::vector<std::string> out;
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(absl::StrReplaceAll(pattern, {{"{i}", absl::StrCat(i)}}));
  }
  return out;
}

std::vector<std::string> SplitList(absl::string_view text) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    part = absl::StripAsciiWhitespace(part);
    if (!part.empty()) out.emplace_back(part);
  }
  return out;
}

absl::StatusOr<moe::v1::DType> ParseWireDType(absl::string_view name) {
  if (name == "float32") return moe::v1::FLOAT32;
  if (name == "bfloat16") return moe::v1::BFLOAT16;
  if (name == "float16") return moe::v1::FLOAT16;
  return absl::InvalidArgumentError(
      absl::StrCat("\"", name, "\" is not float32, bfloat16 or float16"));
}

}  // namespace moe::server
