#include "router/api/options_codec.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "proto/tensor_codec.h"

namespace moe::router {

absl::StatusOr<RoutingOptions> RoutingOptionsFromProto(
    const moe::v1::RoutingOptions& o, int64_t max_elements) {
  RoutingOptions out;
  switch (o.mode()) {
    case moe::v1::MODE_UNSPECIFIED:
    case moe::v1::EVAL:
      out.mode = Mode::kEval;
      break;
    case moe::v1::TRAIN:
      out.mode = Mode::kTrain;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("options.mode: unknown value ", o.mode()));
  }
  switch (o.policy()) {
    case moe::v1::POLICY_UNSPECIFIED:
    case moe::v1::RANDOM:
      out.policy = SecondExpertPolicy::kRandom;
      break;
    case moe::v1::ALL:
      out.policy = SecondExpertPolicy::kAll;
      break;
    case moe::v1::NONE:
      out.policy = SecondExpertPolicy::kNone;
      break;
    case moe::v1::THRESHOLD:
      out.policy = SecondExpertPolicy::kThreshold;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("options.policy: unknown value ", o.policy()));
  }
  if (o.has_threshold()) out.threshold = o.threshold();
  if (o.has_capacity_factor()) out.capacity_factor = o.capacity_factor();
  if (o.has_seed()) out.seed = o.seed();
  if (o.has_second_choice_uniforms()) {
    MOE_ASSIGN_OR_RETURN(
        out.second_choice_uniforms,
        proto::DecodeTensor(o.second_choice_uniforms(),
                            "options.second_choice_uniforms", max_elements));
  }
  return out;
}

moe::v1::RoutingOptions RoutingOptionsToProto(const RoutingOptions& o) {
  moe::v1::RoutingOptions p;
  p.set_mode(o.mode == Mode::kTrain ? moe::v1::TRAIN : moe::v1::EVAL);
  switch (o.policy) {
    case SecondExpertPolicy::kRandom:
      p.set_policy(moe::v1::RANDOM);
      break;
    case SecondExpertPolicy::kAll:
      p.set_policy(moe::v1::ALL);
      break;
    case SecondExpertPolicy::kNone:
      p.set_policy(moe::v1::NONE);
      break;
    case SecondExpertPolicy::kThreshold:
      p.set_policy(moe::v1::THRESHOLD);
      break;
  }
  if (o.threshold) p.set_threshold(*o.threshold);
  if (o.capacity_factor) p.set_capacity_factor(*o.capacity_factor);
  if (o.seed) p.set_seed(*o.seed);
  if (o.second_choice_uniforms) {
    // Uniforms in a dtype the wire cannot carry (float64) go as float32.
    common::HostTensor u = *o.second_choice_uniforms;
    if (!proto::ToWireDType(u.dtype).ok()) {
      int64_t n = 1;
      for (int64_t d : u.shape) n *= d;
      std::string data(static_cast<size_t>(n) * sizeof(float), '\0');
      common::ConvertToFloat32(u.dtype, u.data.data(), n,
                               reinterpret_cast<float*>(data.data()));
      u.dtype = common::DType::kFloat32;
      u.data = std::move(data);
    }
    proto::EncodeTensor(u, p.mutable_second_choice_uniforms()).IgnoreError();
  }
  return p;
}

}  // namespace moe::router
