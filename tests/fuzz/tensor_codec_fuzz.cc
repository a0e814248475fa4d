// The tensor codec: any bytes that parse as a moe.v1.Tensor are either
// refused (InvalidArgument, or ResourceExhausted over the element limit)
// or decode into a HostTensor that encodes back to the same tensor.
#include <cstdint>

#include "fuzz_input.h"
#include "moe/v1/tensor.pb.h"
#include "proto/tensor_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  moe::fuzz::Input in(data, size);
  const int64_t max_elements = int64_t{1} << (in.Byte() % 40);
  moe::v1::Tensor wire;
  if (!wire.ParseFromArray(in.data(), static_cast<int>(in.size()))) return 0;
  auto ref = moe::proto::CheckTensor(wire, "x", max_elements);
  auto host = moe::proto::DecodeTensor(wire, "x", max_elements);
  if (ref.ok() != host.ok()) __builtin_trap();
  if (!host.ok()) {
    if (!absl::IsInvalidArgument(host.status()) &&
        !absl::IsResourceExhausted(host.status())) {
      __builtin_trap();
    }
    return 0;
  }
  if (ref->numel > max_elements) __builtin_trap();
  moe::v1::Tensor again;
  if (!moe::proto::EncodeTensor(*host, &again).ok()) __builtin_trap();
  if (again.dtype() != wire.dtype() || again.data() != wire.data() ||
      again.shape_size() != wire.shape_size()) {
    __builtin_trap();
  }
  for (int i = 0; i < wire.shape_size(); ++i) {
    if (again.shape(i) != wire.shape(i)) __builtin_trap();
  }
  return 0;
}
