// ExpertSet: which experts of a model someone hosts or lacks, by layer
// (layer index in ModelSpec::layers order -> ascending expert ids). The one
// type for that idea: what a worker is told to load (--experts, --shard),
// what it reports in GetShardInfo, what the router's pool knows of each
// worker, and the experts no worker covers.
//
// Example:
//   MOE_ASSIGN_OR_RETURN(ExpertSet mine, ExpertSet::Parse("0-3", spec));
//   if (mine.Contains({0, 2})) ...
//   MOE_LOG(INFO) << mine.Describe(spec);  // "layers.0.ff:[0-3] ..."
//
// Thread-compatible (a value type).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/expert_segment.h"
#include "common/model_spec.h"

namespace moe::common {

class ExpertSet {
 public:
  ExpertSet() = default;
  // Empty, with `layers` layers.
  explicit ExpertSet(size_t layers) : ids_(layers) {}
  // From ids by layer (sorted and deduplicated here).
  explicit ExpertSet(std::vector<std::vector<int64_t>> ids_by_layer);

  // Every expert of every layer of `spec`.
  static ExpertSet All(const ModelSpec& spec);
  // The experts of `keys` in a model of `layers` layers.
  // REQUIRES: every key's layer is in [0, layers).
  static ExpertSet FromKeys(const std::vector<ExpertKey>& keys, size_t layers);

  // --experts: "all" (or empty): every expert of every layer; "0-3,8": those
  // ids in every layer; "LAYER:RANGES;LAYER:RANGES": those layers only
  // ("LAYER:all" for all of one layer); ranges as ParseIdRanges.
  // InvalidArgument naming the layer for an unknown one or an id it does
  // not have.
  static absl::StatusOr<ExpertSet> Parse(absl::string_view text,
                                         const ModelSpec& spec);
  // Shard `index` of `shards` hosts experts [E*i/n, E*(i+1)/n) of every
  // layer (E the layer's expert count): the split moe-up and the Kubernetes
  // StatefulSet use. InvalidArgument when index is out of range or a shard
  // would be empty for some layer.
  static absl::StatusOr<ExpertSet> Shard(int64_t index, int64_t shards,
                                         const ModelSpec& spec);

  size_t layers() const { return ids_.size(); }
  // Ascending ids of layer `layer`; empty for a layer outside the set.
  const std::vector<int64_t>& ids(size_t layer) const;
  bool Contains(ExpertKey key) const;
  bool empty() const;
  // Experts in all layers.
  int64_t size() const;
  // Every (layer, expert), ascending.
  std::vector<ExpertKey> keys() const;

  // Adds `key`, growing the layers as needed.
  void Add(ExpertKey key);
  // Adds every expert of `other`.
  void Merge(const ExpertSet& other);

  // "layers.0.ff:[0-7] layers.1.ff:[0-7]" ("[0-7]" for a layer named ""),
  // "none" when empty.
  std::string Describe(const ModelSpec& spec) const;
  // "layer \"a\" experts [0-1]; layer \"b\" experts [3]" ("experts [0-1]"
  // for a layer named ""): how errors name missing experts.
  std::string DescribeMissing(const ModelSpec& spec) const;

  friend bool operator==(const ExpertSet& a, const ExpertSet& b) {
    return a.ids_ == b.ids_;
  }
  friend bool operator!=(const ExpertSet& a, const ExpertSet& b) {
    return !(a == b);
  }

 private:
  std::vector<std::vector<int64_t>> ids_;  // by layer, ascending
};

}  // namespace moe::common
