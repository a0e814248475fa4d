// The pre-normed feed-forward of a SparseMoEBlock (st-moe-pytorch
// `Expert(dim, hidden_mult=4, prenorm=True)`): RMSNorm, then GEGLU.
// x: [..., d]. May throw c10::Error.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/torch/model_weights.h"

namespace moe::experts {

at::Tensor FeedForward(const common::FeedForwardWeights& w,
                       const at::Tensor& x);

}  // namespace moe::experts
