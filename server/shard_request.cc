#include "server/shard_request.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace moe::server {

absl::StatusOr<DeviceChoice> ParseDevice(absl::string_view flag) {
  DeviceChoice choice;
  choice.automatic = false;
  int ordinal = 0;
  if (flag == "auto") {
    choice.automatic = true;
  } else if (flag == "cpu") {
    choice.device = experts::Device::Cpu();
  } else if (flag == "host") {
    choice.device = experts::Device::Host();
  } else if (flag == "cuda") {
    choice.device = experts::Device::Cuda(0);
  } else if (absl::StartsWith(flag, "cuda:") &&
             absl::SimpleAtoi(flag.substr(5), &ordinal) && ordinal >= 0) {
    choice.device = experts::Device::Cuda(ordinal);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--device: \"", flag, "\" is not auto, cpu, host, cuda or cuda:N"));
  }
  return choice;
}

}  // namespace moe::server
