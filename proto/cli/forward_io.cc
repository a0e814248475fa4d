#include "proto/cli/forward_io.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "proto/tensor_codec.h"

namespace moe::cli {
namespace {

common::HostTensor Scalar(double value) {
  const float v = static_cast<float>(value);
  common::HostTensor t;
  t.dtype = common::DType::kFloat32;
  t.data.assign(reinterpret_cast<const char*>(&v), sizeof(v));
  return t;
}

}  // namespace

absl::StatusOr<common::HostTensor> ReadInputTensor(const std::string& path,
                                                   const std::string& name) {
  MOE_ASSIGN_OR_RETURN(auto reader, common::SafetensorsReader::Open(path));
  std::string chosen = name;
  if (reader->Find(chosen) == nullptr && name == "x" &&
      reader->Find("input.x") != nullptr) {
    chosen = "input.x";
  }
  if (reader->Find(chosen) == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path, ": no tensor named \"", name,
                     "\" (choose one with --input_tensor / --draws_tensor)"));
  }
  return reader->Read(chosen);
}

absl::Status WriteForwardOutputs(
    const std::string& path, const moe::v1::ForwardResponse& response,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  constexpr int64_t kNoLimit = std::numeric_limits<int64_t>::max();
  common::SafetensorsWriter writer;
  for (const auto& [key, value] : metadata) writer.SetMetadata(key, value);
  MOE_ASSIGN_OR_RETURN(common::HostTensor y,
                       proto::DecodeTensor(response.y(), "y", kNoLimit));
  MOE_RETURN_IF_ERROR(writer.Add("output.y", std::move(y)));
  const moe::v1::Losses& l = response.losses();
  const std::pair<const char*, double> losses[] = {
      {"output.balance_loss", l.balance_loss()},
      {"output.router_z_loss", l.router_z_loss()},
      {"output.weighted_balance_loss", l.weighted_balance_loss()},
      {"output.weighted_router_z_loss", l.weighted_router_z_loss()},
      {"output.total_aux_loss", l.total_aux_loss()}};
  for (const auto& [name, value] : losses) {
    MOE_RETURN_IF_ERROR(writer.Add(name, Scalar(value)));
  }
  for (const moe::v1::NamedTensor& t : response.trace()) {
    MOE_ASSIGN_OR_RETURN(common::HostTensor tensor,
                         proto::DecodeTensor(t.tensor(), t.name(), kNoLimit));
    MOE_RETURN_IF_ERROR(writer.Add(t.name(), std::move(tensor)));
  }
  return writer.WriteFile(path);
}

}  // namespace moe::cli
