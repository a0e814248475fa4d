// What the server main() files parse from their flags: the experts a worker
// hosts, the workers a router uses, a StatefulSet pod's ordinal, the wire
// dtype. Only main files use these; services take options structs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/model_spec.h"
#include "moe/v1/tensor.pb.h"

namespace moe::server {

// The experts a worker hosts, by layer index.
using ExpertSelection = std::vector<std::vector<int64_t>>;

// --experts: "all" (or empty): every expert of every layer; "0-3,8": those
// ids in every layer; "LAYER:RANGES;LAYER:RANGES": those layers only
// ("LAYER:all" for all of one layer); ranges as common::ParseIdRanges.
// InvalidArgument naming the layer for an unknown one or an id it does not
// have.
absl::StatusOr<ExpertSelection> ParseExpertSelection(
    absl::string_view text, const common::ModelSpec& spec);

// Shard `index` of `shards` hosts experts [E*i/n, E*(i+1)/n) of every layer
// (E the layer's expert count): the split moe-up and the Kubernetes
// StatefulSet use. InvalidArgument when index is out of range or a shard
// would be empty for some layer.
absl::StatusOr<ExpertSelection> ShardSelection(int64_t index, int64_t shards,
                                               const common::ModelSpec& spec);

// "layers.0.ff:[0-7] layers.1.ff:[0-7]" (ranges folded).
std::string DescribeSelection(const ExpertSelection& selection,
                              const common::ModelSpec& spec);

// The ordinal of a StatefulSet pod name: "moe-expert-3" -> 3.
absl::StatusOr<int64_t> OrdinalFromHostname(absl::string_view hostname);

// Expands "moe-expert-{i}.moe-expert:50052" for i = 0..n-1.
absl::StatusOr<std::vector<std::string>> ExpandTemplate(
    absl::string_view pattern, int64_t n);

// Splits "a,b,c" into its non-empty, trimmed parts.
std::vector<std::string> SplitList(absl::string_view text);

// "float32" / "bfloat16" / "float16".
absl::StatusOr<moe::v1::DType> ParseWireDType(absl::string_view name);

}  // namespace moe::server
