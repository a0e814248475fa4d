#include "common/expert_set.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/id_ranges.h"
#include "common/status_macros.h"

namespace moe::common {
namespace {

std::vector<int64_t> AllIds(int64_t n) {
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = i;
  return ids;
}

std::string LayerLabel(const LayerSpec& layer) {
  return layer.name.empty() ? std::string("the model")
                            : absl::StrCat("layer \"", layer.name, "\"");
}

void SortUnique(std::vector<int64_t>& ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
}

// Ranges for one layer, the error naming it.
absl::StatusOr<std::vector<int64_t>> LayerIds(absl::string_view ranges,
                                              const LayerSpec& layer) {
  const int64_t total = layer.config.total_experts();
  if (ranges == "all") return AllIds(total);
  absl::StatusOr<std::vector<int64_t>> ids = ParseIdRanges(ranges, total);
  if (!ids.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(LayerLabel(layer), ": ", ids.status().message()));
  }
  return ids;
}

}  // namespace

ExpertSet::ExpertSet(std::vector<std::vector<int64_t>> ids_by_layer)
    : ids_(std::move(ids_by_layer)) {
  for (std::vector<int64_t>& ids : ids_) SortUnique(ids);
}

ExpertSet ExpertSet::All(const ModelSpec& spec) {
  ExpertSet out(spec.layers.size());
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    out.ids_[l] = AllIds(spec.layers[l].config.total_experts());
  }
  return out;
}

ExpertSet ExpertSet::FromKeys(const std::vector<ExpertKey>& keys,
                              size_t layers) {
  ExpertSet out(layers);
  for (const ExpertKey& k : keys) out.ids_[k.layer].push_back(k.expert);
  for (std::vector<int64_t>& ids : out.ids_) SortUnique(ids);
  return out;
}

absl::StatusOr<ExpertSet> ExpertSet::Parse(absl::string_view text,
                                           const ModelSpec& spec) {
  text = absl::StripAsciiWhitespace(text);
  if (text.empty() || text == "all") return All(spec);
  ExpertSet out(spec.layers.size());
  if (text.find(':') == absl::string_view::npos) {
    // Ranges for every layer.
    for (size_t l = 0; l < spec.layers.size(); ++l) {
      MOE_ASSIGN_OR_RETURN(out.ids_[l], LayerIds(text, spec.layers[l]));
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
    MOE_ASSIGN_OR_RETURN(int layer, spec.FindLayer(item.substr(0, colon)));
    MOE_ASSIGN_OR_RETURN(out.ids_[layer],
                         LayerIds(item.substr(colon + 1), spec.layers[layer]));
  }
  return out;
}

absl::StatusOr<ExpertSet> ExpertSet::Shard(int64_t index, int64_t shards,
                                           const ModelSpec& spec) {
  if (shards < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the number of shards must be >= 1, got ", shards));
  }
  if (index < 0 || index >= shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard index ", index, " is outside [0, ", shards, ")"));
  }
  ExpertSet out(spec.layers.size());
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    const int64_t total = spec.layers[l].config.total_experts();
    if (shards > total) {
      return absl::InvalidArgumentError(absl::StrCat(
          shards, " shards but ", LayerLabel(spec.layers[l]), " has only ",
          total, " experts: some shard would host none of them"));
    }
    for (int64_t e = total * index / shards; e < total * (index + 1) / shards;
         ++e) {
      out.ids_[l].push_back(e);
    }
  }
  return out;
}

const std::vector<int64_t>& ExpertSet::ids(size_t layer) const {
  static const std::vector<int64_t> kNone;
  return layer < ids_.size() ? ids_[layer] : kNone;
}

bool ExpertSet::Contains(ExpertKey key) const {
  if (key.layer < 0) return false;
  const std::vector<int64_t>& layer = ids(static_cast<size_t>(key.layer));
  return std::binary_search(layer.begin(), layer.end(), key.expert);
}

bool ExpertSet::empty() const { return size() == 0; }

int64_t ExpertSet::size() const {
  int64_t n = 0;
  for (const std::vector<int64_t>& layer : ids_) {
    n += static_cast<int64_t>(layer.size());
  }
  return n;
}

std::vector<ExpertKey> ExpertSet::keys() const {
  std::vector<ExpertKey> out;
  for (size_t l = 0; l < ids_.size(); ++l) {
    for (int64_t e : ids_[l]) out.push_back({static_cast<int32_t>(l), e});
  }
  return out;
}

void ExpertSet::Add(ExpertKey key) {
  if (key.layer < 0) return;
  const size_t l = static_cast<size_t>(key.layer);
  if (l >= ids_.size()) ids_.resize(l + 1);
  std::vector<int64_t>& layer = ids_[l];
  auto at = std::lower_bound(layer.begin(), layer.end(), key.expert);
  if (at == layer.end() || *at != key.expert) layer.insert(at, key.expert);
}

void ExpertSet::Merge(const ExpertSet& other) {
  for (const ExpertKey& key : other.keys()) Add(key);
}

std::string ExpertSet::Describe(const ModelSpec& spec) const {
  std::vector<std::string> parts;
  for (size_t l = 0; l < ids_.size() && l < spec.layers.size(); ++l) {
    if (ids_[l].empty()) continue;
    const std::string& name = spec.layers[l].name;
    parts.push_back(absl::StrCat(name.empty() ? "" : name + ":", "[",
                                 FoldIdRanges(ids_[l]), "]"));
  }
  return parts.empty() ? "none" : absl::StrJoin(parts, " ");
}

std::string ExpertSet::DescribeMissing(const ModelSpec& spec) const {
  std::vector<std::string> parts;
  for (size_t l = 0; l < ids_.size() && l < spec.layers.size(); ++l) {
    if (ids_[l].empty()) continue;
    const std::string& name = spec.layers[l].name;
    parts.push_back(absl::StrCat(
        name.empty() ? std::string("experts")
                     : absl::StrCat("layer \"", name, "\" experts"),
        " [", FoldIdRanges(ids_[l]), "]"));
  }
  return absl::StrJoin(parts, "; ");
}

}  // namespace moe::common
