// The router's checks of a Forward request before any LibTorch code runs:
// the bytes must parse as a moe.v1.ForwardRequest; x is checked by the
// tensor codec against a token limit; the routing options are decoded and
// validated against x's batch and tokens (router::ValidateRoutingOptions,
// the one set of bounds). Every outcome is OK or a clear InvalidArgument /
// ResourceExhausted; nothing crashes or overflows.
#include <cstdint>

#include "fuzz_input.h"
#include "moe/v1/router.pb.h"
#include "proto/tensor_codec.h"
#include "router/api/options_codec.h"
#include "router/routing_options.h"

namespace {

bool Clear(const absl::Status& s) {
  return s.ok() || absl::IsInvalidArgument(s) || absl::IsResourceExhausted(s);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  moe::fuzz::Input in(data, size);
  const int64_t max_tokens = 1 + in.Byte() * 64;
  const int64_t dim = 1 + in.Byte() % 64;
  moe::v1::ForwardRequest request;
  if (!request.ParseFromArray(in.data(), static_cast<int>(in.size()))) {
    return 0;
  }
  auto x = moe::proto::CheckTensor(request.x(), "x", max_tokens * dim);
  if (!Clear(x.status())) __builtin_trap();
  auto options =
      moe::router::RoutingOptionsFromProto(request.options(), 2 * max_tokens);
  if (!Clear(options.status())) __builtin_trap();
  if (!x.ok() || !options.ok() || x->shape.size() != 3) return 0;
  const absl::Status valid =
      moe::router::ValidateRoutingOptions(*options, x->shape[0], x->shape[1]);
  if (!Clear(valid)) __builtin_trap();
  if (valid.ok() && options->second_choice_uniforms.has_value()) {
    const std::vector<float> u = moe::router::FirstLevelUniforms(*options);
    if (static_cast<int64_t>(u.size()) != x->shape[0] * x->shape[1]) {
      __builtin_trap();
    }
    for (float v : u) {
      if (!(v >= 0 && v <= 1)) __builtin_trap();
    }
  }
  return 0;
}
