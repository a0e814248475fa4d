#include "client/forward_io.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "common/torch_convert.h"

namespace moe::client {
namespace {

absl::Status AddTensor(common::SafetensorsWriter& writer,
                       const std::string& name, const at::Tensor& t) {
  MOE_ASSIGN_OR_RETURN(common::HostTensor host, common::FromTorch(t));
  return writer.Add(name, std::move(host));
}

absl::Status AddScalar(common::SafetensorsWriter& writer,
                       const std::string& name, double value) {
  return AddTensor(writer, name,
                   at::scalar_tensor(value, at::TensorOptions(at::kFloat)));
}

}  // namespace

absl::StatusOr<at::Tensor> ReadInputTensor(const std::string& path,
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
  MOE_ASSIGN_OR_RETURN(common::HostTensor host, reader->Read(chosen));
  return common::ToTorch(host);
}

absl::Status WriteForwardOutputs(const std::string& path,
                                 const ForwardOutputs& o) {
  common::SafetensorsWriter writer;
  for (const auto& [key, value] : o.metadata) writer.SetMetadata(key, value);
  MOE_RETURN_IF_ERROR(AddTensor(writer, "output.y", o.y));
  MOE_RETURN_IF_ERROR(AddScalar(writer, "output.balance_loss", o.balance_loss));
  MOE_RETURN_IF_ERROR(
      AddScalar(writer, "output.router_z_loss", o.router_z_loss));
  MOE_RETURN_IF_ERROR(AddScalar(writer, "output.weighted_balance_loss",
                                o.weighted_balance_loss));
  MOE_RETURN_IF_ERROR(AddScalar(writer, "output.weighted_router_z_loss",
                                o.weighted_router_z_loss));
  MOE_RETURN_IF_ERROR(
      AddScalar(writer, "output.total_aux_loss", o.total_aux_loss));
  for (const auto& [name, tensor] : o.extra) {
    MOE_RETURN_IF_ERROR(AddTensor(writer, name, tensor));
  }
  return writer.WriteFile(path);
}

}  // namespace moe::client
