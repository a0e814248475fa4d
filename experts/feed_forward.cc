#include "experts/feed_forward.h"

#include <ATen/ATen.h>

#include "experts/geglu.h"
#include "experts/rms_norm.h"

namespace moe::experts {

at::Tensor FeedForward(const common::FeedForwardWeights& w,
                       const at::Tensor& x) {
  const int64_t d = x.size(-1);
  at::Tensor flat = RmsNorm(x, w.gamma).reshape({-1, d});
  return GegluForward(w.geglu, flat).view(x.sizes());
}

}  // namespace moe::experts
